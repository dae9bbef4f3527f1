"""Using a trained checkpoint: evaluate it on a test split, predict classes of images."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from cnl.data import build_dataset, eval_transform, load_image
from cnl.data.datasets import IMAGE_SUFFIXES
from cnl.data.images import ImageError
from cnl.engine import distributed
from cnl.engine.checkpoint import load_model_with_info
from cnl.engine.config import make_config
from cnl.engine.loop import StepSettings, evaluate
from cnl.engine.trainer import eval_loader


def evaluate_checkpoint(path: str | Path, batch_size: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Top-1/top-5 (percent) of a checkpoint on its test split, exactly as training measured it.

    ``batch_size``: per process (default: the run's). ``overrides`` of the run's config:
    ``data_root``, ``workers``, ``device``, ``amp``. Under torchrun the test set is
    sharded and the sums reduced, so the result is the same.
    """
    model, classes, info = load_model_with_info(path)
    if "config" not in info:
        raise ValueError(f"{path} holds no training config: cnl eval needs a training checkpoint")
    config = make_config(info["config"], overrides)
    ctx = distributed.setup(config.device)
    try:
        model = model.to(ctx.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        test = build_dataset(config.dataset, config.data_root, "test", eval_transform(config.img_size))
        if test.classes != classes:
            raise ValueError(
                f"the test split of {config.data_root} does not name the checkpoint's {len(classes)} classes"
            )
        settings = StepSettings(ctx.device, len(classes), config.amp, config.channels_last, show_progress=ctx.is_main)
        batch_size = batch_size or config.batch_size or max(1, (config.global_batch_size or 1) // ctx.world_size)
        runnable: torch.nn.Module = torch.compile(model) if config.compile else model  # type: ignore[assignment]
        metrics = evaluate(runnable, eval_loader(test, batch_size, config.workers, ctx), settings)  # as training did
        return {"checkpoint": str(path), "model": config.model, **metrics, "is_main": ctx.is_main}
    finally:
        distributed.teardown()


def expand_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for images, sorted."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.exists():
            paths.append(item)
        else:
            raise FileNotFoundError(f"no image or folder at {item}")
    return paths


@torch.no_grad()
def predict(path: str | Path, images: Iterable[str | Path], topk: int = 5, device: str = "cpu") -> list[dict[str, Any]]:
    """Per image, the ``topk`` classes with their probabilities; unreadable images get an ``error``."""
    model, classes, info = load_model_with_info(path, device)
    transform = eval_transform(info["img_size"])
    k = min(topk, len(classes))
    results: list[dict[str, Any]] = []
    for image_path in expand_images(images):
        try:
            image = transform(load_image(image_path))
        except ImageError as error:
            results.append({"image": str(image_path), "error": str(error)})
            continue
        probabilities = model(image.unsqueeze(0).to(device)).float().softmax(dim=1)[0]
        top = probabilities.topk(k)
        results.append(
            {
                "image": str(image_path),
                "predictions": [
                    {"class": classes[i], "index": i, "probability": p}
                    for p, i in zip(top.values.tolist(), top.indices.tolist())
                ],
            }
        )
    return results
