"""Evaluating a trained checkpoint on its test split, as training measured it, or with
test-time augmentation (said in the result)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnl.data import build_dataset, eval_transform
from cnl.data.policies import TTA_MODES
from cnl.data.transforms import RESIZE_RATIO, eval_crops
from cnl.engine import distributed
from cnl.engine.config import make_config
from cnl.engine.loaders import eval_loader
from cnl.engine.loop import StepSettings, evaluate, wants_progress_bars
from cnl.engine.modelfile import load_model_with_info
from cnl.engine.predictions import image_names
from cnl.errors import DataError, InvalidValue


class ViewsAveraged(torch.nn.Module):
    """A model evaluated on several views of each image (test-time augmentation): the image
    and its mirror image, and with ``eval_crops``'s five crops, each crop and its mirror. The
    views' class probabilities are averaged and returned as log-probabilities, so that
    top-k, accuracy and the loss (the likelihood of the averaged prediction) read them as
    logits."""

    def __init__(self, model: torch.nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.model, self.channels_last = model, channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        views = images if images.ndim == 5 else images.unsqueeze(1)  # [B, views, C, H, W]
        batch, count = views.shape[:2]
        flat = views.flatten(0, 1)
        flat = torch.cat([flat, flat.flip(-1)])
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        probabilities = self.model(flat).float().softmax(dim=-1)
        averaged = probabilities.view(2, batch, count, -1).mean(dim=(0, 2))
        return averaged.clamp_min(torch.finfo(averaged.dtype).tiny).log()


def evaluate_checkpoint(
    path: str | Path, batch_size: int | None = None, details: bool = False, tta: str = "none", **overrides: Any
) -> dict[str, Any]:
    """Top-1/top-5 (percent) of a checkpoint on its test split, exactly as training measured it;
    with ``tta`` ("flip", "flip+crops": ``ViewsAveraged``), with test-time augmentation, which
    the result says (``tta``) so that it is never mixed with single-crop figures.

    ``batch_size``: per process (default: the run's). ``details``: also the confusion matrix
    (``confusion``), each image's answer (``per_image``, as ``evaluate`` gives it), the test
    images (``images``) and ``classes``: what ``cnl eval --report`` writes. ``overrides`` of
    the run's config: ``data_root``, ``workers``, ``device``, ``amp``. Under torchrun the test
    set is sharded and the sums reduced, so the result is the same.
    """
    if tta not in TTA_MODES:
        raise InvalidValue(f"unknown test-time augmentation {tta!r}; valid: {', '.join(TTA_MODES)}")
    model, classes, info = load_model_with_info(path)
    if not info.config:
        raise InvalidValue(f"{path} holds no training config: cnl eval needs a training checkpoint")
    config = make_config(info.config, overrides)
    if not config.data_root:
        raise InvalidValue(f"{path} was trained on datasets handed to fit, not on a folder: give --data-root")
    ctx = distributed.setup(config.device)
    try:
        model = model.to(ctx.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        views = eval_crops(*config.eval_sizes()) if tta == "flip+crops" else eval_transform(*config.eval_sizes())
        test = build_dataset(config.dataset, config.data_root, "test", views)
        if test.classes != classes:
            raise DataError(
                f"the test split of {config.data_root} does not name the checkpoint's {len(classes)} classes"
            )
        bars = wants_progress_bars(ctx.is_main)
        on_views = tta != "none"  # the views are laid out by ViewsAveraged, not by the transfer
        settings = StepSettings(ctx.device, len(classes), config.amp, config.channels_last and not on_views,
                                show_progress=bars)  # fmt: skip
        if on_views:
            model = ViewsAveraged(model, config.channels_last)
        batch_size = batch_size or config.batch_size or max(1, (config.global_batch_size or 1) // ctx.world_size)
        runnable: torch.nn.Module = torch.compile(model) if config.compile else model  # type: ignore[assignment]
        loader = eval_loader(test, batch_size, config.workers, ctx)
        metrics = evaluate(runnable, loader, settings, confusion=details, per_image=details)  # as training did
        if details:
            metrics.update(images=image_names(test), classes=classes)
        crop, resize, _ = config.eval_sizes()
        views_said = {"tta": tta, "eval_crop": crop, "eval_resize": resize or round(crop * RESIZE_RATIO)}
        return {"checkpoint": str(path), "model": config.model, **views_said, **metrics}
    finally:
        distributed.teardown(ctx)
