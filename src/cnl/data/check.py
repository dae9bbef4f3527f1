"""``cnl data check``: per-split counts and every missing or unreadable file."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cnl.data.datasets import FineGrainedDataset, build_dataset
from cnl.data.images import ImageError
from cnl.errors import DataError


@dataclass
class SplitReport:
    """Counts, classes and bad files of one split."""

    split: str
    images: int
    classes: list[str]
    per_class: Counter
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unreadable


def missing_samples(dataset: FineGrainedDataset) -> list[int]:
    """Indices of the samples whose image file does not exist."""
    return [index for index, (path, _) in enumerate(dataset.samples) if not Path(path).is_file()]


def inspect_split(dataset: FineGrainedDataset, split: str) -> SplitReport:
    """``cnl data check``: every missing file, and every image that does not decode."""
    report = SplitReport(split, len(dataset), dataset.classes, Counter(dataset.targets))
    missing = set(missing_samples(dataset))
    report.missing = [str(dataset.samples[index][0]) for index in sorted(missing)]
    for index, (path, _) in enumerate(dataset.samples):
        if index in missing:
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
    missing = [f"{origins[k]}: {dataset.samples[k][0]}" for k in missing_samples(dataset)]
    if missing:
        shown = "\n  ".join(missing[:10]) + ("\n  ..." if len(missing) > 10 else "")
        raise DataError(
            f"{len(missing)} {split} images of {root} named by its metadata do not exist "
            f"(expected an image file at each path):\n  {shown}"
        )
    if split == "train":
        counts = Counter(dataset.targets)
        empty = [name for k, name in enumerate(dataset.classes) if counts[k] == 0]
        if empty:
            raise DataError(f"classes without training images in {root}: {', '.join(empty[:10])}")


def check_dataset(
    name: str, root: str | Path, splits: tuple[str, ...] = ("train", "test"), **options
) -> list[SplitReport]:
    return [inspect_split(build_dataset(name, root, split, **options), split) for split in splits]


def format_reports(reports: list[SplitReport]) -> str:
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
    return "\n".join(lines)
