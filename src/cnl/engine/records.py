"""A run's records as types: ``EpochRecord`` (one line of ``metrics.jsonl``) and ``Summary``
(``summary.json``), written by the trainer and read by report, ablation, demo and export.

Each field is named once, here; reading checks each one against its type, so that a file
damaged or written by hand is one line naming the file and the field. A field that a file
written by an earlier version lacks reads as None (``cnl.upgrades`` says which versions
wrote which), and writing leaves out the fields a run does not have (the validation figures of
a run without a validation split), so a record is written byte for byte as before.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cnl.errors import DataError, excerpt


@dataclass(frozen=True, kw_only=True)
class EpochRecord:
    """One finished epoch: its learning rate, training figures, and the test (and validation)
    split's figures at its end."""

    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    train_images_per_s: float
    train_time_s: float | None = None
    val_loss: float | None = None
    val_top1: float | None = None
    val_top5: float | None = None
    test_loss: float
    top1: float
    top5: float
    test_count: int | None = None
    per_class_top1: list[float | None] | None = None  # None for a class without test images

    def to_json(self) -> dict[str, Any]:
        return _present(self)

    @classmethod
    def checked(cls, raw: Any, where: str) -> EpochRecord:
        return _checked(cls, raw, where, "an epoch's record")


@dataclass(frozen=True, kw_only=True)
class Summary:
    """A run's results: its best epoch (best.pt), its last one, and how it was trained."""

    model: str
    dataset: str
    classes: int
    epochs: int
    # The epoch kept as best.pt: chosen on the validation set, else on the test set (optimistic).
    selection: str | None = None
    best_epoch: int | None = None
    best_top1: float | None = None
    best_top5: float | None = None
    final_top1: float | None = None
    final_top5: float | None = None
    best_val_top1: float | None = None
    best_val_top5: float | None = None
    final_val_top1: float | None = None
    final_val_top5: float | None = None
    params: int
    train_images_per_s: float | None = None
    world_size: int = 1
    batch_size: int | None = None
    accum_steps: int | None = None
    global_batch_size: int | None = None
    lr: float | None = None
    skipped_images: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    replicas_identical: bool | None = None  # distributed runs: every process's weights compared at the end

    def to_json(self) -> dict[str, Any]:
        return _present(self)

    @classmethod
    def checked(cls, raw: Any, where: str) -> Summary:
        return _checked(cls, raw, where, "a run's summary")


# Fields a run writes even when None: a summary says it has no best epoch yet.
ALWAYS = {"best_epoch", "best_top1", "best_top5", "final_top1", "final_top5", "train_images_per_s"}


def _present(record: EpochRecord | Summary) -> dict[str, Any]:
    """The record's fields in order, less the None of those a run may not have."""
    return {
        key: value
        for key, value in dataclasses.asdict(record).items()
        if value is not None or (isinstance(record, Summary) and key in ALWAYS)
    }


Record = TypeVar("Record", EpochRecord, Summary)


def _checked(cls: type[Record], raw: Any, where: str, what: str) -> Record:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: not {what}: {excerpt(raw)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for setting in dataclasses.fields(cls):
        required = setting.default is dataclasses.MISSING and setting.default_factory is dataclasses.MISSING
        if setting.name not in raw:
            if required:
                raise DataError(f"{where}: {what} without {setting.name}")
            continue
        value = raw[setting.name]
        if not _holds(hints[setting.name], value):
            raise DataError(f"{where}: {setting.name} must be {_said(hints[setting.name])}, got {excerpt(value)}")
        values[setting.name] = value
    return cls(**values)


def _holds(hint: Any, value: Any) -> bool:
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return any(_is(kind, value) for kind in kinds)


def _is(kind: Any, value: Any) -> bool:
    if kind is type(None):
        return value is None
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(_holds(typing.get_args(kind)[0], item) for item in value)
    if typing.get_origin(kind) is dict:
        return isinstance(value, dict)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _said(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "text", bool: "true or false", type(None): "null"}
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return " or ".join(names.get(kind, "a list" if typing.get_origin(kind) is list else "a mapping") for kind in kinds)
