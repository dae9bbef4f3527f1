"""The data loaders of training and evaluation, taken by the trainer and by inference alike."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from torch.utils.data import DataLoader

from cnl.engine import distributed
from cnl.engine.randomness import EpochSampler, SeededDataset

_SAID: set[tuple[int, int]] = set()


def usable_workers(asked: int) -> int:
    """Loader workers for ``asked``: at most the cores this process may run on (more only
    wait for a core, and torch warns of it at every loader); said once, in one line."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if asked <= cores:
        return asked
    if (asked, cores) not in _SAID:
        _SAID.add((asked, cores))
        print(f"cnl: {asked} loader workers asked for, {cores} cores here: using {cores}", file=sys.stderr, flush=True)
    return cores


def eval_loader(dataset: Any, batch_size: int, workers: int, ctx: distributed.Context) -> DataLoader:
    """Every sample once over the processes, in dataset order within each shard."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=distributed.ShardSampler(len(dataset), ctx.rank, ctx.world_size),
        num_workers=usable_workers(workers),
        pin_memory=ctx.device.type == "cuda",
    )


def ignore_interrupts(worker_id: int) -> None:
    """Loader workers leave SIGINT and SIGTERM, which a terminal or torchrun sends to the whole
    process group, to the training process: it stops cleanly and then ends them. (They
    still exit by themselves when that process dies.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_loader(
    dataset: Any,
    seed: int,
    epoch: int,
    first_step: int,
    global_batch: int,
    batch_size: int,
    workers: int,
    ctx: distributed.Context,
) -> DataLoader:
    """This process's batches of ``epoch`` from optimizer step ``first_step`` on: the order and
    each sample's augmentation follow from (seed, epoch, position) (``engine/randomness.py``)."""
    sampler = EpochSampler(
        len(dataset),
        seed,
        epoch,
        global_batch,
        ctx.rank,
        ctx.world_size,
        start=first_step * global_batch,
    )
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=usable_workers(workers),
        pin_memory=ctx.device.type == "cuda",
        worker_init_fn=ignore_interrupts,
    )
