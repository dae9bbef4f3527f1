"""The paper's learning-rate schedule: linear warmup, then x decay at each step epoch."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

WARMUP_START = 1e-3  # the authors' code warms up from lr * 0.1^3


def lr_factor(epoch: float, warmup_epochs: float, steps: Sequence[int], decay: float = 0.1) -> float:
    """Multiplier of the base lr at (fractional) ``epoch``.

    During warmup it rises linearly from ``WARMUP_START`` to 1; after, it is
    ``decay ** (number of steps <= epoch)``.
    """
    if epoch < warmup_epochs:
        return WARMUP_START + (1 - WARMUP_START) * epoch / warmup_epochs
    return decay ** bisect_right(sorted(steps), epoch)


def build_scheduler(
    optimizer: Optimizer, iters_per_epoch: int, warmup_epochs: float, steps: Sequence[int], decay: float
) -> LambdaLR:
    """A scheduler stepped once per optimizer step, so warmup is gradual within epochs."""
    return LambdaLR(optimizer, lambda it: lr_factor(it / iters_per_epoch, warmup_epochs, steps, decay))
