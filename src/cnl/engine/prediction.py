"""Predicting the classes of images with a trained model: files, folders, globs and lists
in, one answer per image out (unreadable images said, not fatal), as JSONL or CSV."""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from cnl.data.datasets import IMAGE_SUFFIXES
from cnl.data.images import ImageError, load_tensor
from cnl.data.transforms import eval_geometry, normalise
from cnl.engine import distributed
from cnl.engine.loaders import usable_workers
from cnl.engine.modelfile import load_model_with_info
from cnl.engine.parallel import thread_count
from cnl.errors import InvalidValue, MissingFile, cut, expect_file
from cnl.tables import csv_row

LIST_SUFFIXES = (".txt", ".lst")


def expand_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files as given; folders searched recursively for images; glob patterns
    (``photos/**/*.jpg``); list files (``.txt``/``.lst``: one image path per line, relative to
    the list's folder). Sorted within each folder, glob and list, in the order given."""
    paths: list[Path] = []
    for text in map(str, inputs):
        item = Path(text)
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file() and item.suffix.lower() in LIST_SUFFIXES:
            paths += listed_images(item)
        elif item.exists():
            paths.append(item)
        elif glob.has_magic(text):
            matched = sorted(Path(p) for p in glob.glob(text, recursive=True))
            if not matched:
                raise MissingFile(f"no file matches {text}")
            paths += [p for p in matched if p.suffix.lower() in IMAGE_SUFFIXES]
        else:
            raise MissingFile(f"no image, folder, list or glob match at {item}")
    if not paths:
        given = cut(", ".join(map(str, inputs)), 160)
        raise MissingFile(f"no image files in {given} (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return paths


def listed_images(path: Path) -> list[Path]:
    """The images a list file names, one path a line, relative to its folder; # comments."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as error:
        raise InvalidValue(f"{path} is not a list of image paths in UTF-8 (byte {error.start} is not text)") from None
    return [path.parent / line for line in lines if line and not line.startswith("#")]


class ImagesToPredict(Dataset):
    """``(position, image tensor or None, error or None)`` of each path: an unreadable file is
    reported, not raised, so that one bad file stops nothing."""

    def __init__(self, paths: list[Path], transform: Any) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.transform(load_tensor(self.paths[index])), None
        except (ImageError, OSError) as error:
            return index, None, str(error)


def stack_readable(batch: list) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
    """Positions in order, the readable images as one tensor (one shared-memory block per
    batch from a worker, not one per image), and the errors by position."""
    readable = [image for _, image, _ in batch if image is not None]
    errors = {index: error for index, _, error in batch if error is not None}
    return [index for index, _, _ in batch], torch.stack(readable) if readable else None, errors


@torch.no_grad()
def predict_batches(
    path: str | Path,
    images: Iterable[str | Path],
    topk: int = 5,
    device: str = "auto",
    batch_size: int = 32,
    workers: int = 0,
) -> Iterator[dict[str, Any]]:
    """Per image, in input order: ``{"image", "predictions": [{"class", "index", "probability"}]}``
    with the ``topk`` classes, or ``{"image", "error"}`` for a file that cannot be read.
    Images are decoded in ``workers`` processes and run through the model ``batch_size`` at a time."""
    target = distributed.pick_device(device)
    model, classes, info = load_model_with_info(path, target)
    crop, resize, interpolation = info.eval_sizes()
    paths = expand_images(images)
    yield from predict_with(model, classes, crop, paths, topk, batch_size, workers, resize, interpolation)


@torch.no_grad()
def predict_with(
    model: torch.nn.Module,
    classes: list[str],
    img_size: int,
    paths: list[Path],
    topk: int = 5,
    batch_size: int = 32,
    workers: int = 0,
    resize: int | None = None,
    interpolation: str = "bilinear",
) -> Iterator[dict[str, Any]]:
    """``predict_batches`` with a model in hand (eval mode, on its device); images are resized
    to ``resize`` (default: ``img_size`` x 512/448) and centre-cropped to ``img_size``.

    On the CPU the decoding workers and the model share the cores: the model runs on the
    cores the workers leave (at least one), since intra-op threads that wait by spinning
    would otherwise take the cores from the decoders (1.5x slower on 2 cores, batch 32).
    """
    target = next(model.parameters()).device
    workers = usable_workers(workers)
    shared = target.type == "cpu" and workers
    with thread_count(max(1, len(os.sched_getaffinity(0)) - workers) if shared else None):
        geometry = eval_geometry(img_size, resize, interpolation)
        yield from _predict_loop(model, classes, geometry, paths, min(topk, len(classes)), batch_size, workers)


def _predict_loop(
    model: torch.nn.Module,
    classes: list[str],
    geometry: Any,
    paths: list[Path],
    k: int,
    batch_size: int,
    workers: int,
) -> Iterator[dict[str, Any]]:
    target = next(model.parameters()).device
    to_float = normalise()
    loader = DataLoader(
        ImagesToPredict(paths, geometry),  # uint8 through the workers: a quarter of the bytes
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=stack_readable,
        pin_memory=target.type == "cuda",
    )
    for positions, images, errors in loader:
        top = model(to_float(images).to(target)).float().softmax(dim=1).topk(k) if images is not None else None
        row = 0
        for index in positions:
            if index in errors or top is None:
                yield {"image": str(paths[index]), "error": errors.get(index)}
                continue
            yield {
                "image": str(paths[index]),
                "predictions": [
                    {"class": classes[i], "index": i, "probability": p}
                    for p, i in zip(top.values[row].tolist(), top.indices[row].tolist())
                ],
            }
            row += 1


def predict(path: str | Path, images: Iterable[str | Path], topk: int = 5, device: str = "auto", **options: Any):
    """``predict_batches`` as a list (``options``: ``batch_size``, ``workers``)."""
    return list(predict_batches(path, images, topk, device, **options))


def write_predictions(results: Iterable[dict[str, Any]], out: str | Path, topk: int) -> int:
    """One row per image to ``out``: ``.csv`` (image, class_1, probability_1, ..., error) or
    ``.jsonl`` (one object per line). Returns the number of rows."""
    out = expect_file(out, "--out", (".csv", ".jsonl"))
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(out, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file) if out.suffix.lower() == ".csv" else None
        if writer is not None:
            ranks = [f"{name}_{r}" for r in range(1, topk + 1) for name in ("class", "probability")]
            writer.writerow(["image", *ranks, "error"])
        for result in results:
            rows += 1
            if writer is None:
                file.write(json.dumps(result) + "\n")
                continue
            cells = [value for p in result.get("predictions", []) for value in (p["class"], f"{p['probability']:.6f}")]
            cells += [""] * (2 * topk - len(cells))
            writer.writerow(csv_row([result["image"], *cells, result.get("error", "")]))
    return rows
