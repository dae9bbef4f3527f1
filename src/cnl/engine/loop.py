"""One training epoch and one evaluation pass: plain PyTorch, nothing model-specific."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnl.engine.metrics import Accumulator, ImageRecord
from cnl.engine.randomness import seed_step
from cnl.errors import TrainingDiverged

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def wants_progress_bars(is_main: bool) -> bool:
    """Bars on the main process and only on a terminal: in a log file or a pipe their
    redraws would bury the per-epoch lines (and reading the running figures for them costs
    a device sync per step)."""
    return is_main and sys.stderr.isatty()


@dataclass
class StepSettings:
    """How a step runs: device, classes, mixed precision, memory format, progress bars; for
    training also accumulation, the global batch and what seeds each micro-batch."""

    device: torch.device
    num_classes: int
    amp: str = "none"
    channels_last: bool = False
    show_progress: bool = True
    accum_steps: int = 1
    global_batch: int = 0  # samples per optimizer step over every process
    world_size: int = 1
    rank: int = 0
    seed: int = 0
    label_smoothing: float = 0.0
    clip_grad: float | None = None  # max norm of all gradients together
    mix: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None  # MixUp / CutMix of a batch

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=memory_format)
        return images, labels.to(self.device, non_blocking=True)


@dataclass
class TrainParts:
    """What a training step updates."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None = None  # updated after every optimizer step
    frozen: list[nn.Module] = field(default_factory=list)  # in eval mode while the rest trains (--freeze)


@dataclass
class EpochStats:
    loss: float
    top1: float
    images_per_s: float
    time_s: float
    steps: int  # optimizer steps of the epoch done, counting those before ``first_step``
    stopped: bool  # ``should_stop`` ended the pass early


def check_finite(loss_sum: Tensor, images: int, epoch: int, step: int) -> None:
    """Stop before the update on a loss that is not finite: the weights and the last checkpoint stay good."""
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged(
            f"the training loss is {loss_sum.item() / images} at epoch {epoch + 1}, step {step + 1}; stopping, "
            "the last checkpoint is kept (try a lower --lr or --amp none)"
        )


def optimizer_step(parts: TrainParts, settings: StepSettings) -> None:
    """One update from the accumulated gradients (clipped when asked), then the schedule and the EMA."""
    optimizer = parts.optimizer
    if settings.clip_grad is not None:
        parts.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(parts.model.parameters(), settings.clip_grad)
    parts.scaler.step(optimizer)
    parts.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    parts.scheduler.step()
    if parts.ema is not None:
        parts.ema.update_parameters(parts.model)


def train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    """``model`` in training mode, but for its ``frozen`` part (``--freeze``), in eval mode."""
    model.train()
    for module in frozen:
        module.eval()


def training(parts: TrainParts) -> torch.optim.Optimizer:
    """The parts' model in training mode (``train_mode``); its optimizer."""
    train_mode(parts.model, parts.frozen)
    return parts.optimizer


def train_one_epoch(
    parts: TrainParts,
    loader: DataLoader,
    settings: StepSettings,
    epoch: int,
    first_step: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> EpochStats:
    """One pass over ``loader`` (0-based ``epoch``, from optimizer step ``first_step`` on);
    the scheduler steps, and the EMA is updated, once per optimizer step.

    Each micro-batch's loss is its sum over ``global_batch``, times the number of
    processes that DDP averages over: every optimizer step follows the mean over the
    whole global batch. ``should_stop`` is asked after every optimizer step.
    """
    model, optimizer = parts.model, training(parts)
    criterion = nn.CrossEntropyLoss(reduction="sum", label_smoothing=settings.label_smoothing)
    meter = Accumulator(settings.num_classes, settings.device)
    bar = tqdm(loader, desc=f"train {epoch + 1}", disable=not settings.show_progress, leave=False, dynamic_ncols=True)
    start, seen, correct, local, warm = time.perf_counter(), 0, 0, 0, None  # warm: (time, images) after step 1
    optimizer.zero_grad(set_to_none=True)
    steps, stopped = first_step, False
    no_sync = getattr(model, "no_sync", None)
    for micro, (images, labels) in enumerate(bar, start=first_step * settings.accum_steps):
        images, labels = settings.to_device(images, labels)
        updates = (micro + 1) % settings.accum_steps == 0
        seed_step(settings.seed, epoch, micro, settings.rank)
        targets = labels  # soft targets after MixUp / CutMix; accuracy counts the hard labels
        if settings.mix is not None:
            images, targets = settings.mix(images, labels)
        # Under DDP, gradients are averaged only on the micro-step that updates.
        with contextlib.nullcontext() if updates or no_sync is None else no_sync():
            with settings.autocast():
                logits = model(images)
                loss_sum = criterion(logits.float(), targets)
            check_finite(loss_sum, len(labels), epoch, micro // settings.accum_steps)
            parts.scaler.scale(loss_sum * settings.world_size / settings.global_batch).backward()
        if updates:
            optimizer_step(parts, settings)
            steps += 1
        meter.update(logits.detach().float(), labels, loss_sum.detach())
        seen += len(labels) * settings.world_size
        warm = (time.perf_counter(), seen) if updates and warm is None else warm
        if settings.show_progress:
            correct += (logits.detach().argmax(dim=1) == labels).sum().item()
            local += len(labels)
            bar.set_postfix(
                loss=f"{loss_sum.item() / len(labels):.3f}",
                top1=f"{100 * correct / local:.1f}",
                lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                img_s=f"{seen / (time.perf_counter() - start):.1f}",
            )
        if updates and should_stop is not None and should_stop():
            stopped = True
            break
    bar.close()
    end = time.perf_counter()
    results = meter.compute()
    return EpochStats(results["loss"], results["top1"], speed(start, end, seen, warm), end - start, steps, stopped)


def speed(start: float, end: float, seen: int, warm: tuple[float, int] | None) -> float:
    """Training images/s after the epoch's first optimizer step, which pays the one-time costs
    (the loader's start, kernel choice, first allocations: 3x the rate of the rest seen in an
    ablation's first run); the whole epoch when it had one step."""
    if warm is not None and seen > warm[1] and end > warm[0]:
        return (seen - warm[1]) / (end - warm[0])
    return seen / max(end - start, 1e-9)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    settings: StepSettings,
    desc: str = "eval",
    confusion: bool = False,
    per_image: bool = False,
) -> dict[str, Any]:
    """Loss, top-1, top-5 and per-class top-1 (percent) over every sample of every process's
    shard; with ``confusion`` also the confusion matrix (counts, [true][predicted]); with
    ``per_image`` also ``per_image``: each image's label, top-k and label probability, in
    dataset order (see ``ImageRecord``)."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    meter = Accumulator(settings.num_classes, settings.device, confusion)
    record = (
        ImageRecord(list(loader.sampler), len(loader.dataset), settings.num_classes, settings.device)  # type: ignore[arg-type]
        if per_image
        else None
    )
    for images, labels in tqdm(loader, desc=desc, disable=not settings.show_progress, leave=False, dynamic_ncols=True):
        images, labels = settings.to_device(images, labels)
        with settings.autocast():
            logits = model(images)
        meter.update(logits.float(), labels, criterion(logits.float(), labels))
        if record is not None:
            record.update(logits.float(), labels)
    results = meter.compute()
    if record is not None:
        results["per_image"] = record.compute()
    return results
