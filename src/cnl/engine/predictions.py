"""``predictions.csv``: what a model said of each image of the evaluation that chose (or
reported) a checkpoint, one row per image and split.

People read it for error analysis; ``cnl ablate`` pairs two runs' rows image by image.
Columns: ``split``, ``index`` (in the split), ``image`` (its path, or the index for a dataset
without paths), ``label`` and ``predicted`` (class indices) with their names, ``correct``
(0/1, top-1), ``top5`` (class indices, best first, separated by spaces) and ``p_label`` (the
softmax probability of the true class).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cnl.errors import InvalidValue, MissingFile

PREDICTIONS = "predictions.csv"
COLUMNS = (
    "split", "index", "image", "label", "label_name", "predicted", "predicted_name", "correct", "top5", "p_label",
)  # fmt: skip


def image_names(dataset: Any) -> list[str]:
    """Each image's path where the dataset has ``samples`` (ours do), else its index."""
    samples = getattr(dataset, "samples", None)
    if samples is not None and len(samples) == len(dataset):
        return [str(sample[0]) for sample in samples]
    return [str(index) for index in range(len(dataset))]


def write_image_predictions(
    path: str | Path, splits: Mapping[str, tuple[list[str], dict[str, np.ndarray]]], classes: list[str]
) -> Path:
    """Write ``path`` from ``{split: (image names, per_image)}`` (``per_image`` as ``evaluate``
    returns it), through a temporary file renamed into place: a reader sees the whole old
    file or the whole new one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for split, (names, record) in splits.items():
            labels, ranked, p_label = record["label"], record["topk"], record["p_label"]
            for index, (image, label, top, p) in enumerate(zip(names, labels, ranked, p_label)):
                label, predicted = int(label), int(top[0])
                writer.writerow(
                    [split, index, image, label, classes[label], predicted, classes[predicted],
                     int(label == predicted), " ".join(map(str, top.tolist())), f"{p:.6f}"]
                )  # fmt: skip
    os.replace(temporary, path)
    return path


def read_correct(path: str | Path, split: str = "test") -> tuple[list[str], np.ndarray]:
    """The images of ``split`` in ``path`` and whether each was right at top-1 (bool array)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path} does not exist: the per-image predictions of a run (cnl train writes them)")
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = set(COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise InvalidValue(f"{path} is not a predictions file: no column {', '.join(sorted(missing))}")
        rows = [row for row in reader if row["split"] == split]
    if not rows:
        raise InvalidValue(f"{path} has no {split} rows")
    return [row["image"] for row in rows], np.array([row["correct"] == "1" for row in rows])
