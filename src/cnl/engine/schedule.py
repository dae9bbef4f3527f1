"""The paper's learning-rate schedule: linear warmup, then x decay at each step epoch; or cosine."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cnl.errors import InvalidValue

WARMUP_START = 1e-3  # the authors' code warms up from lr * 0.1^3


def lr_factor(
    epoch: float,
    warmup_epochs: float,
    steps: Sequence[int],
    decay: float = 0.1,
    schedule: str = "step",
    epochs: float | None = None,
) -> float:
    """Multiplier of the base lr at (fractional) ``epoch``.

    During warmup it rises linearly from ``WARMUP_START`` to 1. After, ``"step"`` (the
    paper's) gives ``decay ** (number of steps <= epoch)``; ``"cosine"`` falls from 1 at
    the end of warmup to 0 at ``epochs`` along half a cosine.
    """
    if epoch < warmup_epochs:
        return WARMUP_START + (1 - WARMUP_START) * epoch / warmup_epochs
    if schedule == "cosine":
        if epochs is None:
            raise InvalidValue("the cosine schedule needs the number of epochs")
        progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return decay ** bisect_right(sorted(steps), epoch)


def build_scheduler(
    optimizer: Optimizer,
    iters_per_epoch: int,
    warmup_epochs: float,
    steps: Sequence[int],
    decay: float,
    schedule: str = "step",
    epochs: float | None = None,
) -> LambdaLR:
    """A scheduler stepped once per optimizer step, so warmup is gradual within epochs; it
    scales every parameter group's own base lr."""
    return LambdaLR(
        optimizer, lambda it: lr_factor(it / iters_per_epoch, warmup_epochs, steps, decay, schedule, epochs)
    )
