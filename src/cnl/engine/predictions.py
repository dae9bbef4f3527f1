"""``predictions.csv``: what a model said of each image of the evaluation that chose (or
reported) a checkpoint, one row per image and split.

People read it for error analysis; ``cnl ablate`` pairs two runs' rows image by image.
Columns: ``split``, ``index`` (in the split), ``image`` (its path, or the index for a dataset
without paths), ``label`` and ``predicted`` (class indices) with their names, ``correct``
(0/1, top-1), ``top5`` (class indices, best first, separated by spaces) and ``p_label`` (the
softmax probability of the true class). Names that a spreadsheet would run as formulas are
written as text (``cnl.tables.csv_cell``).

Read back (``read_correct``), every row is checked: a file that was edited, cut, merged or
re-encoded is named with the row where it stops being one we wrote, never paired as it is.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cnl.errors import DataError, MissingFile, excerpt
from cnl.tables import csv_row

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
                writer.writerow(csv_row(
                    [split, index, image, label, classes[label], predicted, classes[predicted],
                     int(label == predicted), " ".join(map(str, top.tolist())), f"{p:.6f}"]
                ))  # fmt: skip
    os.replace(temporary, path)
    return path


Answers = dict[tuple[int, str], bool]  # (index in the split, image) -> right at top-1


def read_correct(path: str | Path, split: str = "test") -> Answers:
    """Whether each image of ``split`` in ``path`` was right at top-1, by ``(index, image)``.

    Each row must be one this module wrote: an ``index`` and class indices that are whole
    numbers, ``correct`` 0 or 1 and equal to ``label == predicted``, each image once. Anything
    else (and a file that is not UTF-8 CSV) is a DataError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path} does not exist: the per-image predictions of a run (cnl train writes them)")
    answers: Answers = {}
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            missing = set(COLUMNS) - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path} is not a predictions file: no column {', '.join(sorted(missing))}")
            for row in reader:
                if row["split"] == split:
                    key, correct = _answer(row, path, reader.line_num)
                    if key in answers:
                        raise DataError(f"{path}, line {reader.line_num}: image {excerpt(key[1])} ({key[0]}) again")
                    answers[key] = correct
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is damaged: not UTF-8 text (byte {error.start})") from None
    except csv.Error as error:
        raise DataError(f"{path} is damaged: not CSV ({error})") from None
    if not answers:
        raise DataError(f"{path} has no {split} rows")
    return answers


def _answer(row: dict[str, Any], path: Path, line: int) -> tuple[tuple[int, str], bool]:
    """``((index, image), correct)`` of one row, every field checked against the others."""
    numbers = {}
    for column in ("index", "label", "predicted"):
        text = row[column]
        if text is None or not text.isdecimal() or len(text) > 18:
            raise DataError(f"{path}, line {line}: {column} must be a whole number, got {excerpt(text)}")
        numbers[column] = int(text)
    if row["correct"] not in ("0", "1"):
        raise DataError(f"{path}, line {line}: correct must be 0 or 1, got {excerpt(row['correct'])}")
    correct = row["correct"] == "1"
    if correct != (numbers["label"] == numbers["predicted"]):
        raise DataError(
            f"{path}, line {line}: correct is {row['correct']} but label {numbers['label']} and predicted "
            f"{numbers['predicted']} say otherwise: the file was changed after cnl wrote it"
        )
    if not row["image"]:
        raise DataError(f"{path}, line {line}: no image")
    return (numbers["index"], row["image"]), correct
