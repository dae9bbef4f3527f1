"""One training epoch and one evaluation pass: plain PyTorch, nothing model-specific."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cnl.engine.metrics import Accumulator

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepSettings:
    """How a step runs: device, mixed precision, memory format, accumulation, progress bars."""

    device: torch.device
    amp: str = "none"
    channels_last: bool = False
    accum_steps: int = 1
    show_progress: bool = True

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=memory_format)
        return images, labels.to(self.device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    settings: StepSettings,
    num_classes: int,
    epoch: int,
    world_size: int = 1,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """One pass over ``loader``; the scheduler steps once per optimizer step.

    ``should_stop`` is asked after every optimizer step; when it answers True the pass
    ends there, with ``stopped`` set and ``steps`` the batches done.
    """
    model.train()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    meter = Accumulator(num_classes, settings.device)
    bar = tqdm(loader, desc=f"train {epoch}", disable=not settings.show_progress, leave=False, dynamic_ncols=True)
    start, seen, correct, local = time.perf_counter(), 0, 0, 0
    optimizer.zero_grad(set_to_none=True)
    steps, stopped = 0, False
    for step, (images, labels) in enumerate(bar):
        images, labels = settings.to_device(images, labels)
        last_micro_step = (step + 1) % settings.accum_steps == 0 or step + 1 == len(loader)
        # Under DDP, gradients are averaged only on the micro-step that updates.
        no_sync = getattr(model, "no_sync", None)
        sync = contextlib.nullcontext() if last_micro_step or no_sync is None else no_sync()
        with sync:
            with settings.autocast():
                logits = model(images)
                loss_sum = criterion(logits.float(), labels)
            if not torch.isfinite(loss_sum):
                # Stop before the update: the weights and the last checkpoint stay good.
                raise FloatingPointError(
                    f"the training loss is {loss_sum.item() / len(labels)} at epoch {epoch}, step {step + 1}; "
                    "stopping, the last checkpoint is kept (try a lower --lr or --amp none)"
                )
            scaler.scale(loss_sum / (len(labels) * settings.accum_steps)).backward()
        if last_micro_step:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        meter.update(logits.detach().float(), labels, loss_sum.detach())
        seen += len(labels) * world_size
        if settings.show_progress:
            correct += (logits.detach().argmax(dim=1) == labels).sum().item()
            local += len(labels)
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(
                loss=f"{loss_sum.item() / len(labels):.3f}",
                top1=f"{100 * correct / local:.1f}",
                lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                img_s=f"{rate:.1f}",
            )
        steps = step + 1
        if last_micro_step and should_stop is not None and should_stop():
            stopped = True
            break
    bar.close()
    elapsed = time.perf_counter() - start
    results = meter.compute()
    return {
        "loss": results["loss"],
        "top1": results["top1"],
        "images_per_s": seen / max(elapsed, 1e-9),
        "time_s": elapsed,
        "steps": steps,
        "stopped": stopped,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, settings: StepSettings, num_classes: int, desc: str = "eval"
) -> dict[str, Any]:
    """Loss, top-1, top-5 and per-class top-1 (percent) over every sample of every process's shard."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    meter = Accumulator(num_classes, settings.device)
    for images, labels in tqdm(loader, desc=desc, disable=not settings.show_progress, leave=False, dynamic_ncols=True):
        images, labels = settings.to_device(images, labels)
        with settings.autocast():
            logits = model(images)
        meter.update(logits.float(), labels, criterion(logits.float(), labels))
    return meter.compute()
