"""``cnl data check``: per-split counts against the published ones, and every missing or unreadable file."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cnl.data.catalog import CATALOG
from cnl.data.datasets import FineGrainedDataset, build_dataset, detect_layout
from cnl.data.images import ImageError
from cnl.errors import DataError, FileList, printable

# The published splits: images per split (our split names) and classes (cnl.data.catalog).
OFFICIAL: dict[str, tuple[dict[str, int], int]] = {
    r.name: (dict(r.splits), r.classes) for r in CATALOG.values() if r.splits is not None and r.classes is not None
}


def published_splits(name: str) -> tuple[str, ...]:
    """The splits the publisher gives, in our names (Aircraft's: its train alone, val and
    test; our "train" is their trainval)."""
    return CATALOG[name].published


@dataclass
class SplitReport:
    """Counts, classes and bad files of one split."""

    split: str
    images: int
    classes: list[str]
    per_class: Counter
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    missing_per_class: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unreadable


def inspect_split(dataset: FineGrainedDataset, split: str, decode: bool = True) -> SplitReport:
    """``cnl data check``: every missing file, and (``decode``) every image that does not decode."""
    report = SplitReport(split, len(dataset), dataset.classes, Counter(dataset.targets))
    missing = dataset.missing()
    report.missing = [str(dataset.samples[index][0]) for index in missing]
    report.missing_per_class = Counter(dataset.classes[dataset.samples[index][1]] for index in missing)
    if decode:
        absent = set(missing)
        for index, (path, _) in enumerate(dataset.samples):
            if index in absent:
                continue
            try:
                dataset.load(index)
            except ImageError as error:
                report.unreadable.append((str(path), str(error)))
    return report


def preflight(dataset: FineGrainedDataset, split: str, root: str) -> None:
    """Before training: stop on metadata that names missing files or leaves a class without
    training images (decoding every image is ``cnl data check``'s job, not each run's)."""
    origins = dataset.origins or [str(path) for path, _ in dataset.samples]
    missing = [f"{origins[k]}: {dataset.samples[k][0]}" for k in dataset.missing()]
    if missing:
        heading = f"{len(missing)} {split} images of {printable(root)} named by its metadata do not exist"
        raise FileList(f"{heading} (expected an image file at each path):", missing)
    if split == "train":
        counts = Counter(dataset.targets)
        empty = [name for k, name in enumerate(dataset.classes) if counts[k] == 0]
        if empty:
            raise DataError(f"classes without training images in {root}: {', '.join(empty[:10])}")


def check_dataset(
    name: str, root: str | Path, splits: tuple[str, ...] = ("train", "test"), decode: bool = True, **options
) -> tuple[str, list[SplitReport]]:
    """The dataset's layout name and a report per split; ``decode=False`` counts and looks
    for missing files only (``cnl data get``), without decoding every image."""
    name = detect_layout(Path(root)) if name == "auto" else name
    return name, [inspect_split(build_dataset(name, root, split, **options), split, decode) for split in splits]


def compare_official(name: str, reports: list[SplitReport], root: str | Path | None = None) -> list[str]:
    """A line saying the splits match the published sizes, or lines saying what differs;
    nothing for a dataset of the user's own, or for the synthetic benchmark (``synth.json``
    in ``root``), which only borrows CUB's layout."""
    if name not in OFFICIAL or (root is not None and (Path(root) / "synth.json").exists()):
        return []
    sizes, classes = OFFICIAL[name]
    compared = [report for report in reports if report.split in sizes]
    differences = []
    for report in compared:
        official = sizes[report.split]
        present = report.images - len(report.missing)
        if present != official:
            gap = official - present
            words = f"{abs(gap):,} {'fewer' if gap > 0 else 'more'}"
            line = f"{report.split}: {present:,} images, {words} than the official {official:,}"
            if report.missing_per_class:
                worst = ", ".join(f"{c} {n}" for c, n in report.missing_per_class.most_common(5))
                line += f" (missing per class: {worst}{', ...' if len(report.missing_per_class) > 5 else ''})"
            differences.append(line)
        if len(report.classes) != classes:
            differences.append(f"{report.split}: {len(report.classes)} classes, the official {name} has {classes}")
    if differences:
        return ["differs from the official splits:", *(f"  {line}" for line in differences)]
    splits = ", ".join(f"{report.split} {sizes[report.split]:,}" for report in compared)
    return [f"matches the official splits ({splits} images; {classes} classes)"]


def format_reports(reports: list[SplitReport], name: str = "", root: str | Path | None = None) -> str:
    lines = []
    for report in reports:
        empty = [c for k, c in enumerate(report.classes) if report.per_class[k] == 0]
        lines.append(
            f"{report.split}: {report.images} images, {len(report.classes)} classes "
            f"({min(report.per_class.values(), default=0)}-{max(report.per_class.values(), default=0)} per class)"
        )
        if empty:
            lines.append(f"  classes without images: {', '.join(empty)}")
        lines += [f"  missing: {path}" for path in report.missing]
        lines += [f"  unreadable: {why}" for _, why in report.unreadable]
        lines.append(f"  {len(report.missing)} missing, {len(report.unreadable)} unreadable")
    first = reports[0]
    shown = ", ".join(first.classes[:10]) + (", ..." if len(first.classes) > 10 else "")
    lines.append(f"classes: {shown}")
    return "\n".join(lines + compare_official(name, reports, root))
