"""Every random draw of a training run, decided in one place.

A draw is a function of what it is for, never of which process or loader worker makes
it, nor of whether the run was interrupted:

- the model's initial weights: ``(seed)``;
- the order of an epoch: ``(seed, epoch)``;
- a sample's augmentation: ``(seed, epoch, position)``, its position in that order;
- the model's own draws in a step (dropout): ``(seed, epoch, micro-step, rank)``;
- a validation set carved from the training split: ``(seed)``.

So no generator state is saved in checkpoints: a resumed run, or one with other numbers
of processes or workers, recomputes the same seeds. (torchdata's ``StatefulDataLoader``
would instead save every worker's state on every rank, and could not restore it for
another number of workers or processes.)
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cnl.errors import DataError

# One stream per purpose, so that e.g. epoch 3's order never reuses a sample's crop seed.
INIT, ORDER, AUGMENT, STEP, VALIDATION = range(5)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([k % 2**63 for k in keys]).generate_state(1, np.uint64)[0] >> 1)


def seed_host(seed: int) -> None:
    """Seed the CPU generators: torch's, numpy's and Python's."""
    torch.random.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def seed_all(seed: int) -> None:
    """Seed the CPU generators and every CUDA device's."""
    seed_host(seed)
    torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the CPU generators seeded, restoring their states after it.

    Only the CPU's: data transforms draw there, and seeding CUDA (which ``torch.manual_seed``
    also does) records a traceback per call in a CUDA build, a millisecond a sample.
    """
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_host(seed)
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def seed_model_init(seed: int) -> None:
    seed_all(derive_seed(seed, INIT))


def seed_step(seed: int, epoch: int, micro_step: int, rank: int) -> None:
    """Before each micro-batch: its dropout masks depend on where it is in the run alone."""
    seed_all(derive_seed(seed, STEP, epoch, micro_step, rank))


def epoch_order(seed: int, epoch: int, length: int) -> list[int]:
    generator = torch.Generator().manual_seed(derive_seed(seed, ORDER, epoch))
    return torch.randperm(length, generator=generator).tolist()


def validation_indices(targets: list[int], fraction: float, seed: int) -> list[int]:
    """A stratified sample of ``fraction`` of each class (at least one image of every class
    with two or more), sorted; the rest stays for training."""
    generator = torch.Generator().manual_seed(derive_seed(seed, VALIDATION))
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(targets):
        by_class.setdefault(label, []).append(index)
    chosen = []
    for label in sorted(by_class):
        members = by_class[label]
        count = min(max(round(fraction * len(members)), 1), len(members) - 1)
        order = torch.randperm(len(members), generator=generator)[:count].tolist()
        chosen += [members[k] for k in order]
    return sorted(chosen)


class EpochSampler(Sampler[tuple[int, int]]):
    """One process's share of one epoch, as ``(sample index, augmentation seed)`` pairs.

    The epoch's order is cut to whole optimizer steps of ``global_batch`` samples (the
    partial step is dropped, as ``drop_last``); rank ``r`` of ``world_size`` takes
    positions ``r, r + W, r + 2W, ...`` from position ``start`` on. So every optimizer step
    consumes one contiguous run of the order whatever the number of processes, and a
    run resumed after ``k`` steps starts at ``start = k * global_batch``.
    """

    def __init__(
        self, length: int, seed: int, epoch: int, global_batch: int, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> None:
        steps = length // global_batch
        if steps == 0:
            raise DataError(f"the global batch {global_batch} is larger than the {length} training images")
        self.order = epoch_order(seed, epoch, length)[: steps * global_batch]
        self.seed, self.epoch = seed, epoch
        self.positions = range(start + rank, len(self.order), world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position in self.positions:
            yield self.order[position], derive_seed(self.seed, AUGMENT, self.epoch, position)

    def __len__(self) -> int:
        return len(self.positions)


class SeededDataset(Dataset):
    """``dataset[index]`` drawn under the seed its sampler chose, in any process or worker."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with seeded(seed):
            return self.dataset[index]
