"""What describes a trained model, wherever it is read from: a training checkpoint, the JSON
card beside exported safetensors, or a Hub folder's config.json.

Every field is checked on reading, against its type, its range and the other fields (the
classes against ``num_classes``, the input size against the image size), so that a file
damaged or written by hand is one line naming the file and the field, never a traceback
from deep inside a model's construction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from cnl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cnl.engine.config import FIELD_INFO, coerce, out_of_range, stored_config
from cnl.errors import DataError, InvalidValue, excerpt
from cnl.models.names import MODEL_SETTINGS

DEFAULT_IMG_SIZE = 448  # a checkpoint whose config does not say: the paper's


class CardError(DataError):
    """A model description (config.json, a model card, a checkpoint's entries) that is damaged."""


@dataclass
class ModelInfo:
    """A trained model's description: what ``create_model`` needs to build it again, how to
    feed it, and the run's training config (empty when not known)."""

    model: str
    classes: list[str]
    img_size: int = DEFAULT_IMG_SIZE
    overrides: dict[str, Any] = field(default_factory=dict)
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def eval_sizes(self) -> tuple[int, int | None, str]:
        """The evaluation geometry the model was trained with: its run's crop, resize (None:
        the crop x 512/448) and interpolation (``TrainConfig.eval_sizes``), else its input size."""
        return stored_config(self.config).eval_sizes() if self.config else (self.img_size, None, "bilinear")

    @classmethod
    def checked(cls, raw: Any, where: str) -> ModelInfo:
        """A ModelInfo from a mapping of its fields, each checked; ``where`` names the file."""
        if not isinstance(raw, dict):
            raise CardError(f"{where}: expected a mapping of the model's fields, got {type(raw).__name__}")
        return cls(
            model=_name(raw.get("model"), where),
            classes=class_names(raw.get("classes"), where),
            img_size=image_size(raw.get("img_size", DEFAULT_IMG_SIZE), where),
            overrides=overrides(raw.get("overrides", {}), where),
            mean=_statistics(raw.get("mean", list(IMAGENET_MEAN)), "mean", where),
            std=_statistics(raw.get("std", list(IMAGENET_STD)), "std", where),
            config=_mapping(raw.get("config", {}), "config", where),
        )


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise CardError(f"{where}: model must be a model's name, got {excerpt(value)}")
    return value


def class_names(value: Any, where: str, key: str = "classes") -> list[str]:
    """The class names: a non-empty list of strings."""
    if not isinstance(value, list) or not value:
        raise CardError(f"{where}: {key} must be a non-empty list of class names, got {excerpt(value)}")
    wrong = next((name for name in value if not isinstance(name, str)), None)
    if wrong is not None:
        raise CardError(f"{where}: {key} must hold class names (strings), not {excerpt(wrong)}")
    return list(value)


def image_size(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or out_of_range(FIELD_INFO["img_size"], value):
        raise CardError(f"{where}: img_size must be an integer in [32, 4096], got {excerpt(value)}")
    return value


def overrides(value: Any, where: str) -> dict[str, Any]:
    """Placement overrides (``MODEL_SETTINGS``), each typed and in range as a setting."""
    value = _mapping(value, "overrides", where)
    unknown = [key for key in value if key not in MODEL_SETTINGS]
    if unknown:
        raise CardError(f"{where}: overrides may name {', '.join(MODEL_SETTINGS)}, not {excerpt(unknown[0])}")
    checked = {}
    for key, given in value.items():
        try:
            checked[key] = coerce(key, given, f"{where}: overrides")
        except InvalidValue as error:
            raise CardError(str(error)) from None
        problem = out_of_range(FIELD_INFO[key], checked[key])
        if problem:
            raise CardError(f"{where}: overrides: {problem}")
    return checked


def _statistics(value: Any, key: str, where: str) -> list[float]:
    """Per-channel mean or std: three finite numbers (a std above 0)."""
    numbers = value if isinstance(value, list | tuple) and len(value) == 3 else None
    if numbers is None or not all(_finite(x) and (key != "std" or x > 0) for x in numbers):
        wanted = "three numbers above 0" if key == "std" else "three finite numbers"
        raise CardError(f"{where}: {key} must be {wanted} (one per colour channel), got {excerpt(value)}")
    return [float(x) for x in numbers]


def _finite(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    except OverflowError:
        return False


def _mapping(value: Any, key: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CardError(f"{where}: {key} must be a mapping, got {excerpt(value)}")
    return value


def check_head(weights: dict[str, Any], head: str, classes: list[str], where: str) -> None:
    """The classifier's rows against the number of class names."""
    tensor = weights.get(f"{head}.weight")
    if tensor is not None and getattr(tensor, "ndim", 0) >= 1 and tensor.shape[0] != len(classes):
        raise CardError(
            f"{where}: the head {head} has {tensor.shape[0]} rows (classes), but {len(classes)} class names "
            "are given: the weights and the names are of different models"
        )
