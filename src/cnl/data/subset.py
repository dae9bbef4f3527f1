"""A small, balanced subset of any dataset, written once in the folder layout at a small size.

``cnl demo --dataset NAME`` compares models from scratch on real photos on a CPU, where a
whole fine-grained dataset at its own resolution would take hours: it takes the first
``classes`` classes (in the dataset's order) that hold at least ``train + test`` images
over the dataset's splits pooled, draws ``train`` and ``test`` images of each by a seeded
shuffle, and writes them, the shorter side resized to ``short_side`` pixels, as
``OUT/train/<class>/*.jpg`` and ``OUT/test/<class>/*.jpg``. Pooling the splits is what lets
Flowers-102 (10 training images a class) give a few dozen a class; it also means the
subset's accuracy is a comparison between models, never a result on the official benchmark.

``OUT/subset.json`` records what was drawn from where; a second call with the same
settings finds it and writes nothing. An image that cannot be decoded is passed over for
the next of its class.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from cnl.data.catalog import CATALOG
from cnl.data.datasets import FineGrainedDataset, build_dataset, detect_layout
from cnl.data.images import ImageError, load_image
from cnl.errors import DataError

RECORD = "subset.json"


@dataclass(frozen=True)
class SubsetSpec:
    """What to draw: the dataset (a ``build_dataset`` name and folder), how many classes,
    images of each class for training and for testing, the shuffle's seed, and the shorter
    side of the written images (pixels)."""

    dataset: str
    root: str
    classes: int = 12
    train: int = 60
    test: int = 20
    seed: int = 0
    short_side: int = 146


def pooled_images(dataset: str, root: str) -> tuple[list[str], dict[str, list[Path]]]:
    """The dataset's class names and, per class, its image paths over every split (sorted)."""
    per_class: dict[str, set[Path]] = {}
    names: list[str] = []
    dataset = detect_layout(root) if dataset == "auto" else dataset
    known = CATALOG.get(dataset)  # an unknown name: build_dataset says which are known
    for split in known.disjoint if known else ("train", "test"):
        part: FineGrainedDataset = build_dataset(dataset, root, split)
        names = names or part.classes
        for path, label in part.samples:
            per_class.setdefault(part.classes[label], set()).add(Path(path))
    return names, {name: sorted(paths) for name, paths in per_class.items()}


def folder_name(name: str, taken: set[str]) -> str:
    """A class name as one path component (``F-16A/B`` -> ``F-16A_B``), unique among ``taken``."""
    safe = name.replace("/", "_").replace("\\", "_").replace("\0", "_").strip() or "class"
    safe = "_" + safe if safe in (".", "..") else safe
    unique, k = safe, 2
    while unique in taken:
        unique, k = f"{safe} {k}", k + 1
    taken.add(unique)
    return unique


def resized(path: Path, short_side: int) -> Image.Image:
    image = load_image(path)
    scale = short_side / min(image.size)
    if scale < 1:
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BICUBIC
        )
    return image


def recorded_spec(record: Path) -> dict | None:
    """The settings a finished subset was drawn with; None when there is none or its record
    is damaged (the subset is then drawn again)."""
    try:
        spec = json.loads(record.read_text(encoding="utf-8")).get("spec")
    except (OSError, ValueError, AttributeError):
        return None
    return spec if isinstance(spec, dict) else None


def write_subset(spec: SubsetSpec, out: str | Path) -> Path:
    """Write the subset into ``out`` (unless ``out/subset.json`` records the same ``spec``); returns ``out``."""
    out = Path(out)
    if recorded_spec(out / RECORD) == asdict(spec):
        return out
    names, per_class = pooled_images(spec.dataset, spec.root)
    needed = spec.train + spec.test
    chosen = [name for name in names if len(per_class.get(name, [])) >= needed][: spec.classes]
    if len(chosen) < 2:
        raise DataError(
            f"{spec.root} ({spec.dataset}) has {len(chosen)} classes with at least {needed} images over its splits; "
            f"a comparison needs 2: ask for fewer images a class (--train-per-class, --test-per-class)"
        )
    staging = out.with_name(out.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    taken: set[str] = set()
    drawn: dict[str, dict[str, list[str]]] = {}
    for name in chosen:
        folder = folder_name(name, taken)
        drawn[name] = write_class(per_class[name], folder, spec, staging)
    staging.joinpath(RECORD).write_text(json.dumps({"spec": asdict(spec), "classes": drawn}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return out


def write_class(paths: list[Path], folder: str, spec: SubsetSpec, out: Path) -> dict[str, list[str]]:
    """Draw and write one class's images; returns the source paths of each split."""
    order = list(paths)
    random.Random(f"{spec.seed}/{folder}").shuffle(order)
    drawn: dict[str, list[str]] = {"train": [], "test": []}
    wanted = [("train", spec.train), ("test", spec.test)]
    for path in order:
        split = next((s for s, count in wanted if len(drawn[s]) < count), None)
        if split is None:
            break
        try:
            image = resized(path, spec.short_side)
        except ImageError:
            continue
        target = out / split / folder / f"{len(drawn[split]):04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=95)
        drawn[split].append(str(path))
    if len(drawn["test"]) < spec.test:
        raise DataError(f"class {folder!r} of {spec.root} has fewer than {spec.train + spec.test} readable images")
    return drawn
