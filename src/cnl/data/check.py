"""``cnl data check``: per-split counts and every missing or unreadable file."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cnl.data.datasets import FineGrainedDataset, build_dataset
from cnl.data.images import ImageError


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


def inspect_split(dataset: FineGrainedDataset, split: str) -> SplitReport:
    report = SplitReport(split, len(dataset), dataset.classes, Counter(dataset.targets))
    for index, (path, _) in enumerate(dataset.samples):
        if not Path(path).is_file():
            report.missing.append(str(path))
            continue
        try:
            dataset.load(index)
        except ImageError as error:
            report.unreadable.append((str(path), str(error)))
    return report


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
