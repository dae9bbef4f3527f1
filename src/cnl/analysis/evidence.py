"""Per-class evidence of an evaluation: accuracy of every class, the most confused classes,
each image's answer (``cnl eval --report``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from cnl.engine.predictions import PREDICTIONS, write_image_predictions
from cnl.engine.runfolder import EVALUATION
from cnl.tables import csv_row, figure_text

PER_CLASS = "per_class.csv"
CONFUSION = "confusion.png"


def most_confused(confusion: np.ndarray, count: int) -> list[tuple[int, int, int]]:
    """The ``count`` largest off-diagonal cells as ``(true, predicted, images)``, largest first."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:count]
    cells = [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape))]
    return [cell for cell in cells if cell[2] > 0]


def write_per_class(confusion: np.ndarray, classes: list[str], path: Path) -> Path:
    """One row per class: index, name, test images, correct, top-1 (%), most frequent wrong answer."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["index", "class", "images", "correct", "top1", "most_confused_with", "times"])
        for k, name in enumerate(classes):
            images, correct = int(confusion[k].sum()), int(confusion[k, k])
            wrong = int(off[k].argmax())
            top1 = f"{100 * correct / images:.2f}" if images else ""
            writer.writerow(
                csv_row([k, name, images, correct, top1, classes[wrong] if off[k, wrong] else "", int(off[k, wrong])])
            )
    return path


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path, pairs: int = 10) -> Path:
    """The confusion matrix restricted to the classes of the ``pairs`` most confused pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = most_confused(confusion, pairs)
    involved = sorted({c for cell in cells for c in cell[:2]}) or list(range(min(len(classes), 10)))
    sub = confusion[np.ix_(involved, involved)]
    size = 2.5 + 0.45 * len(involved)
    figure, axis = plt.subplots(figsize=(size + 1.5, size))
    shown = axis.imshow(sub, cmap="Blues")
    names = [figure_text(classes[k]) for k in involved]
    axis.set_xticks(range(len(involved)), names, rotation=60, ha="right", fontsize=7)
    axis.set_yticks(range(len(involved)), names, fontsize=7)
    for i in range(len(involved)):
        for j in range(len(involved)):
            if sub[i, j]:
                colour = "white" if sub[i, j] > sub.max() / 2 else "black"
                axis.text(j, i, str(int(sub[i, j])), ha="center", va="center", fontsize=7, color=colour)
    axis.set(xlabel="predicted", ylabel="true", title=f"most confused classes ({len(cells)} pairs)")
    figure.colorbar(shown, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_evidence(confusion: list[list[int]], classes: list[str], out: str | Path) -> list[Path]:
    """``out/per_class.csv`` and ``out/confusion.png`` of a confusion matrix ([true][predicted])."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    matrix = np.asarray(confusion, dtype=np.int64)
    return [write_per_class(matrix, classes, out / PER_CLASS), plot_confusion(matrix, classes, out / CONFUSION)]


SAID = ("checkpoint", "model", "tta", "eval_crop", "eval_resize", "top1", "top5", "loss", "count")


def write_report(result: dict[str, Any], out: str | Path) -> list[Path]:
    """``cnl eval --report``: ``write_evidence`` of an ``evaluate_checkpoint(details=True)``
    result, ``out/predictions.csv`` of its test images, and ``out/evaluation.json``: the
    figures and how they were taken (test-time augmentation, crop and resize), which the
    model card of ``cnl export`` shows beside the training's own."""
    written = write_evidence(result["confusion"], result["classes"], out)
    splits = {"test": (result["images"], result["per_image"])}
    summary = Path(out) / EVALUATION
    summary.write_text(json.dumps({key: result[key] for key in SAID if key in result}, indent=2) + "\n")
    return [*written, write_image_predictions(Path(out) / PREDICTIONS, splits, result["classes"]), summary]
