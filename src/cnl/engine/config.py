"""The training configuration: defaults are the paper's recipe; a YAML file, then flags, override them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

AMP_CHOICES = ("none", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    """Every setting of a run. Defaults: the paper (448 px, 110 epochs, 10 of warmup,
    batch 64, SGD lr 0.01, x0.1 at epochs 50, 70 and 90), with the authors' code's
    momentum 0.9 and weight decay 1e-4."""

    data_root: str = ""
    dataset: str = "auto"
    model: str = "resnet50_cnl5"
    weights: str | None = None
    # Placement overrides for create_model (torchvision layer names); None keeps the model's.
    query: str | None = None
    responses: list[str] | None = None
    nl_layers: list[str] | None = None
    inner_channels: int | None = None
    img_size: int = 448
    epochs: int = 110
    warmup_epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    lr_steps: list[int] = field(default_factory=lambda: [50, 70, 90])
    lr_decay: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.25])
    workers: int = 4
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    accum_steps: int = 1
    seed: int = 0
    output: str = "runs/train"
    resume: bool = False
    deterministic: bool = False
    device: str = "auto"

    def validate(self) -> None:
        """Reject impossible values before any work starts."""
        problems = []
        if not self.data_root:
            problems.append("data_root is required (--data-root)")
        for name in ("img_size", "epochs", "batch_size", "accum_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.img_size < 32:
            problems.append(f"img_size {self.img_size} is too small: a ResNet needs at least 32 pixels")
        for name in ("lr", "lr_decay"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_epochs", "weight_decay", "momentum", "workers"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative, got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.amp not in AMP_CHOICES:
            problems.append(f"amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1]:
            problems.append(f"crop_scale must be two increasing positive numbers, got {self.crop_scale}")
        if problems:
            raise ValueError("invalid configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's settings, keys as in TrainConfig (``lr-steps`` and ``lr_steps`` both work)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of settings, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; valid settings: {', '.join(sorted(FIELDS))}")
    return values


def make_config(*layers: dict[str, Any]) -> TrainConfig:
    """Defaults, then each layer in turn (a file, then flags); None in a layer means 'not set'."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if v is not None})
    config = TrainConfig(**values)
    config.validate()
    return config
