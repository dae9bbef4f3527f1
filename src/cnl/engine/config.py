"""The training configuration: defaults are the paper's recipe; a YAML file, then flags, override them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnl.errors import InvalidValue, MissingFile

AMP_CHOICES = ("none", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
RESUME_CHOICES = ("no", "yes", "auto")
# Two ways to give the batch; a layer that sets one unsets the other from the layers below.
BATCH_FIELDS = ("global_batch_size", "batch_size")
# How and where this invocation runs, not the recipe: left out of a run's config.yaml.
INVOCATION_FIELDS = ("output", "resume")


@dataclass
class TrainConfig:
    """Every setting of a run. Defaults: the paper (448 px, 110 epochs, 10 of warmup,
    global batch 64, SGD lr 0.01, x0.1 at epochs 50, 70 and 90), with the authors' code's
    momentum 0.9 and weight decay 1e-4.

    The batch is either ``global_batch_size`` (the recipe's, on any number of processes:
    each takes ``global / (processes x accum_steps)``) or ``batch_size`` per process.
    ``resume``: "no", "yes" (OUTPUT/checkpoints/last.pt must exist) or "auto" (when it
    exists); None is "no", except in a group that torchrun restarted, where it is "auto".
    """

    data_root: str = ""
    dataset: str = "auto"
    model: str = "resnet50_cnl5"
    weights: str | None = None
    # Placement overrides for create_model (torchvision layer names); None keeps the model's.
    query: str | None = None
    responses: list[str] | None = None
    nl_layers: list[str] | None = None
    inner_channels: int | None = None
    width: int | None = None  # channels of a ResNet's first stage; None keeps 64
    # A validation set: a fraction of each class of the training split (seeded), "official"
    # (the dataset's own, FGVC-Aircraft) or None (the paper: best.pt is the best test epoch).
    val_split: float | str | None = None
    img_size: int = 448
    epochs: int = 110
    warmup_epochs: int = 10
    global_batch_size: int | None = 64
    batch_size: int | None = None
    lr: float = 0.01
    lr_steps: list[int] = field(default_factory=lambda: [50, 70, 90])
    lr_decay: float = 0.1
    schedule: str = "step"
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.25])
    # Fine-tuning options since the paper, all off by default (the paper's recipe).
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    ema: float | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    no_wd_norm_bias: bool = False
    head_lr_mult: float = 1.0
    workers: int = 4
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    accum_steps: int = 1
    seed: int = 0
    output: str = "runs/train"
    resume: str | None = None
    deterministic: bool = False
    sync_bn: bool = False
    device: str = "auto"

    def validate(self) -> None:
        """Reject impossible values before any work starts."""
        problems = []
        if not self.data_root:
            problems.append("data_root is required (--data-root)")
        for name in ("img_size", "epochs", *BATCH_FIELDS, "accum_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.img_size < 32:
            problems.append(f"img_size {self.img_size} is too small: a ResNet needs at least 32 pixels")
        for name in ("lr", "lr_decay"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_epochs", "weight_decay", "momentum", "workers"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.ema is not None and not 0 < self.ema < 1:
            problems.append(f"ema must be a decay in (0, 1), e.g. 0.9998, got {self.ema}")
        for name in ("clip_grad", "head_lr_mult"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative (0 is off), got {getattr(self, name)}")
        if self.val_split is not None and self.val_split != "official":
            if not isinstance(self.val_split, float | int) or not 0 < self.val_split < 1:
                problems.append(f"val_split must be a fraction in (0, 1) or 'official', got {self.val_split!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.amp not in AMP_CHOICES:
            problems.append(f"amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if (self.batch_size is None) == (self.global_batch_size is None):
            problems.append("give exactly one of global_batch_size and batch_size (per process)")
        if self.resume not in (None, *RESUME_CHOICES):
            problems.append(f"resume must be one of {', '.join(RESUME_CHOICES)}, got {self.resume!r}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1]:
            problems.append(f"crop_scale must be two increasing positive numbers, got {self.crop_scale}")
        if problems:
            raise InvalidValue("invalid configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def batch_plan(self, processes: int) -> tuple[int, int]:
        """``(per-process batch, global batch)`` on ``processes`` processes."""
        if self.batch_size is not None:
            return self.batch_size, self.batch_size * processes * self.accum_steps
        assert self.global_batch_size is not None
        per_process, left = divmod(self.global_batch_size, processes * self.accum_steps)
        if left or not per_process:
            raise InvalidValue(
                f"the global batch {self.global_batch_size} does not divide into {processes} processes x "
                f"{self.accum_steps} accumulation steps; choose a global batch that is a multiple of "
                f"{processes * self.accum_steps}, or give --batch-size per process"
            )
        return per_process, self.global_batch_size

    def batch_description(self) -> str:
        if self.batch_size is not None:
            return f"batch {self.batch_size} per process"
        return f"global batch {self.global_batch_size}"

    def recipe(self, global_batch_size: int) -> dict[str, Any]:
        """The settings that make this run again anywhere: the batch as a global batch, no output folder."""
        values = {k: v for k, v in self.to_dict().items() if k not in INVOCATION_FIELDS}
        return {**values, "global_batch_size": global_batch_size, "batch_size": None}


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's settings, keys as in TrainConfig (``lr-steps`` and ``lr_steps`` both work)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise InvalidValue(f"{path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise InvalidValue(f"{path} must hold a mapping of settings, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise InvalidValue(f"{path}: unknown settings {unknown}; valid settings: {', '.join(sorted(FIELDS))}")
    return values


def make_config(*layers: dict[str, Any]) -> TrainConfig:
    """Defaults, then each layer in turn (a file, then flags); None in a layer means 'not set'.

    A layer that sets ``batch_size`` or ``global_batch_size`` replaces the other; one
    layer setting both is an error.
    """
    values: dict[str, Any] = {}
    for layer in layers:
        given = {k: v for k, v in layer.items() if v is not None}
        batch = [k for k in BATCH_FIELDS if k in given]
        if len(batch) == 2:
            raise InvalidValue(
                f"give either --batch-size (per process, {given['batch_size']}) or --global-batch-size "
                f"({given['global_batch_size']}), not both"
            )
        if batch:
            values.update(dict.fromkeys(BATCH_FIELDS))
        values.update(given)
    if isinstance(values.get("resume"), bool):  # checkpoints written before resume took modes
        values["resume"] = None
    config = TrainConfig(**values)
    config.validate()
    return config
