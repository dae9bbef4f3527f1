"""The data loaders of training and evaluation, taken by the trainer and by inference alike."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from typing import Any

from torch.utils.data import DataLoader

from cnl.engine import distributed
from cnl.engine.parallel import STOPPING
from cnl.engine.randomness import EpochSampler, SeededDataset
from cnl.errors import InvalidValue, cut

_SAID: set[tuple[int, int]] = set()
# Workers hand batches back through a Unix socket that multiprocessing makes in the
# temporary folder, as TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX; a socket's path holds at most
# 107 bytes on Linux (103 elsewhere). A longer one fails inside a worker, and the loader then
# waits for the lost batch forever.
SOCKET_PATH_MAX = 107 if sys.platform.startswith("linux") else 103
SOCKET_NAME = len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def usable_workers(asked: int) -> int:
    """Loader workers for ``asked``: at most the cores this process may run on (more only
    wait for a core, and torch warns of it at every loader); said once, in one line. Any
    workers at all need a temporary folder short enough for their sockets."""
    if asked > 0:
        check_temporary_folder()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if asked <= cores:
        return asked
    if (asked, cores) not in _SAID:
        _SAID.add((asked, cores))
        print(f"cnl: {asked} loader workers asked for, {cores} cores here: using {cores}", file=sys.stderr, flush=True)
    return cores


def check_temporary_folder() -> None:
    folder = tempfile.gettempdir()
    length, longest = len(os.fsencode(folder)), SOCKET_PATH_MAX - SOCKET_NAME
    if sys.platform != "win32" and length > longest:
        raise InvalidValue(
            f"the temporary folder {cut(folder)} is a path of {length} bytes; loader workers pass "
            f"batches through sockets made in it, which allow at most {longest}: set TMPDIR to a shorter folder, "
            "or --workers 0"
        )


def eval_loader(dataset: Any, batch_size: int, workers: int, ctx: distributed.Context) -> DataLoader:
    """Every sample once over the processes, in dataset order within each shard."""
    return StopProofLoader(
        dataset,
        batch_size=batch_size,
        sampler=distributed.ShardSampler(len(dataset), ctx.rank, ctx.world_size),
        num_workers=usable_workers(workers),
        pin_memory=ctx.device.type == "cuda",
    )


class StopProofLoader(DataLoader):
    """A DataLoader whose worker processes leave SIGINT and SIGTERM to the process that reads
    them. A terminal's Ctrl-C and torchrun's stop (``killpg``) reach the whole process group;
    the training process stops cleanly, after the step and saving, and then ends its
    workers, so none may die first. Ignoring the signals in ``worker_init_fn`` alone leaves
    a window: torch gives a new worker a SIGTERM handler that kills it unless its parent sent
    the signal, before that function runs. So workers are started with both signals blocked,
    and unblock them once they ignore them (which drops any that came meanwhile). Workers
    still end by themselves when the reading process dies."""

    def __init__(self, dataset: Any, **options: Any) -> None:
        super().__init__(dataset, worker_init_fn=_leave_stops_to_parent, **options)

    def __iter__(self) -> Any:
        if self.num_workers == 0 or not hasattr(signal, "pthread_sigmask"):  # Windows: no masks, no killpg
            return super().__iter__()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)  # what forked workers start with
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # this process's own stop arrives now


def _leave_stops_to_parent(worker_id: int) -> None:
    for number in STOPPING:
        signal.signal(number, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPPING)


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
    return StopProofLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=usable_workers(workers),
        pin_memory=ctx.device.type == "cuda",
    )
