"""The training configuration: defaults are the paper's recipe; a YAML file, then flags, override them."""

from __future__ import annotations

import dataclasses
import types
import typing
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


def setting(default: Any, help: str, **flag: Any) -> Any:
    """A field of TrainConfig with its command-line help and flag options (``choices``,
    ``metavar``, ``type``): the one place a setting is described; ``cnl train`` reads it."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **flag})
    return field(default=default, metadata={"help": help, **flag})


@dataclass
class TrainConfig:
    """Every setting of a run. Defaults: the paper (448 px, 110 epochs, 10 of warmup,
    global batch 64, SGD lr 0.01, x0.1 at epochs 50, 70 and 90), with the authors' code's
    momentum 0.9 and weight decay 1e-4.

    The batch is either ``global_batch_size`` (the recipe's, on any number of processes:
    each takes ``global / (processes x accum_steps)``) or ``batch_size`` per process.
    ``resume``: "no", "yes" (OUTPUT/checkpoints/last.pt must exist), "auto" (when it
    exists) or a checkpoint's path; None is "no", except in a group that torchrun
    restarted, where it is "auto".
    """

    data_root: str = setting("", "the dataset's folder (required)")
    dataset: str = setting(
        "auto", "cub, dogs, cars, aircraft, flowers102, folder, list or auto (from the folder's layout)"
    )
    model: str = setting("resnet50_cnl5", "a model name (cnl list-models), or tv:NAME / timm:NAME [_nl5|_cnl5]")
    weights: str | None = setting(
        None, "torchvision weights name (IMAGENET1K_V1) or a local .pth/.safetensors (default: the model's)"
    )
    # Placement overrides for create_model (torchvision layer names); None keeps the model's.
    query: str | None = setting(None, "CNL query layer, e.g. layer4.2 (default: the model's)")
    responses: list[str] | None = setting(None, "CNL response layers (default: the model's)", metavar="LAYER")
    nl_layers: list[str] | None = setting(None, "NL block layers (default: the model's)", metavar="LAYER")
    inner_channels: int | None = setting(None, "width c of the NL/CNL embeddings (default: the model's)")
    width: int | None = setting(None, "channels of a ResNet's first stage (default 64; others train from scratch)")
    # A validation set: a fraction of each class of the training split (seeded), "official"
    # (the dataset's own, FGVC-Aircraft) or None (the paper: best.pt is the best test epoch).
    val_split: float | str | None = setting(
        None, "FRACTION of each training class, or 'official', to choose best.pt on (default: none, the paper)",
        metavar="FRACTION|official",
    )  # fmt: skip
    img_size: int = setting(448, "train and test crop, pixels")
    epochs: int = setting(110, "epochs to train")
    warmup_epochs: float = setting(10, "linear warmup from lr/1000, epochs")
    global_batch_size: int | None = setting(64, "batch over all processes and accumulation steps")
    batch_size: int | None = setting(None, "batch per process, instead of --global-batch-size")
    lr: float = setting(0.01, "base learning rate")
    lr_steps: list[int] = setting([50, 70, 90], "epochs at which lr is multiplied by --lr-decay", metavar="EPOCH")
    lr_decay: float = setting(0.1, "lr factor at each of --lr-steps")
    schedule: str = setting("step", "after warmup: step decay (the paper) or cosine", choices=SCHEDULES)
    optimizer: str = setting("sgd", "sgd (the paper) or adamw", choices=OPTIMIZERS)
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(1e-4, "weight decay")
    crop_scale: list[float] = setting([0.08, 1.25], "RandomResizedCrop area range", nargs=2, metavar=("LOW", "HIGH"))
    # Fine-tuning options since the paper, all off by default (the paper's recipe).
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing; 0 is off")
    clip_grad: float | None = setting(None, "clip the norm of all gradients to this (default: off)")
    ema: float | None = setting(
        None, "keep an EMA of the weights with this decay, e.g. 0.9998; it is evaluated and used (default: off)"
    )
    mixup: float = setting(0.0, "MixUp alpha; 0 is off")
    cutmix: float = setting(0.0, "CutMix alpha; 0 is off; with --mixup, one of the two per batch")
    wd_norm_bias: bool = setting(True, "weight decay on norms and biases too (--no-wd-norm-bias: on weights only)")
    head_lr_mult: float = setting(1.0, "lr multiplier of the NL/CNL modules and the head")
    workers: int = setting(4, "data loading processes per training process")
    amp: str = setting("none", "mixed precision", choices=AMP_CHOICES)
    channels_last: bool = setting(False, "channels-last memory format")
    compile: bool = setting(False, "torch.compile the model")
    accum_steps: int = setting(1, "micro-batches per optimizer step")
    seed: int = setting(0, "the seed every random draw derives from")
    output: str = setting("runs/train", "run folder")
    resume: str | None = setting(
        None, "continue from OUTPUT/checkpoints/last.pt (no value, or yes); auto: when it exists (the default after "
        "torchrun restarts); no; or a checkpoint's path", metavar="auto|no|PATH",
    )  # fmt: skip
    deterministic: bool = setting(False, "deterministic kernels only")
    sync_bn: bool = setting(False, "SyncBatchNorm across processes (CUDA)")
    device: str = setting("auto", "auto, cpu or cuda")

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
        if self.resume == "":
            problems.append(f"resume must be one of {', '.join(RESUME_CHOICES)} or a checkpoint's path, got ''")
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
HINTS = typing.get_type_hints(TrainConfig)  # the annotations as types: what each setting accepts
# Settings renamed since runs were written: old name -> (new name, how the value maps).
RENAMED = {"no_wd_norm_bias": ("wd_norm_bias", lambda value: not value)}
_WRONG = object()


class Explicit(dict):
    """A layer of settings in which None is a value (``--set ema=null``), not 'not set'."""


def upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """Settings as written by any earlier version, under today's names."""
    values = dict(values)
    for old, (new, convert) in RENAMED.items():
        if old in values:
            old_value = values.pop(old)
            if new not in values and old_value is not None:
                values[new] = convert(old_value)
    if isinstance(values.get("resume"), bool):  # checkpoints written before resume took modes
        values["resume"] = None
    return values


def _kinds(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _as(kind: Any, value: Any) -> Any:
    """``value`` as ``kind`` (int, float, str, bool, None, list[...]), or _WRONG."""
    if typing.get_origin(kind) is list:
        if not isinstance(value, list | tuple):
            return _WRONG
        items = [_as(typing.get_args(kind)[0], item) for item in value]
        return _WRONG if any(item is _WRONG for item in items) else items
    if kind is type(None):
        return None if value is None else _WRONG
    if isinstance(value, bool):
        return value if kind is bool else _WRONG
    accepted = {int: int, float: int | float, str: str, bool: bool}[kind]
    return value if isinstance(value, accepted) else _WRONG


def takes_list(name: str) -> bool:
    """Whether setting ``name`` holds a list (a flag of several values)."""
    return any(typing.get_origin(kind) is list for kind in _kinds(HINTS[name]))


def flag_of(name: str) -> str:
    """The command-line flag of setting ``name``: ``lr_steps`` -> ``--lr-steps``."""
    return "--" + name.replace("_", "-")


def describe(name: str) -> str:
    """What setting ``name`` accepts, in words: 'an integer', 'a list of numbers or null', ..."""
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}

    def one(kind: Any) -> str:
        if typing.get_origin(kind) is list:
            return "a list of " + {int: "integers", float: "numbers", str: "strings"}[typing.get_args(kind)[0]]
        return words[kind]

    return " or ".join(one(kind) for kind in _kinds(HINTS[name]))


def coerce(name: str, value: Any, where: str) -> Any:
    """``value`` checked against the type of setting ``name``; an error naming ``where`` if it does not fit."""
    for kind in _kinds(HINTS[name]):
        converted = _as(kind, value)
        if converted is not _WRONG:
            return converted
    raise InvalidValue(f"{where}: {name} must be {describe(name)}, got {value!r}")


def parse_text(name: str, text: str | list[str], where: str) -> Any:
    """A setting typed on the command line (``--lr 0.02``, ``--set lr_steps=30,60``): read as
    YAML, lists also from commas; where YAML's value does not fit, a setting that takes a
    string takes the text as it is (``--set resume=no`` is "no", not YAML's false)."""
    if isinstance(text, list):  # nargs: each word, and commas within words
        text = ",".join(text)
    kinds = _kinds(HINTS[name])
    if takes_list(name) and not text.strip().startswith("["):
        text = "[" + ",".join(part.strip() for part in text.split(",") if part.strip()) + "]"
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if str in kinds and not any(_as(kind, value) is not _WRONG for kind in kinds):
        value = text
    return coerce(name, value, where)


def parse_assignments(assignments: list[str]) -> Explicit:
    """``--set KEY=VALUE`` items: each key a setting (dashes or underscores), each value typed."""
    values = Explicit()
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        name = key.strip().replace("-", "_")
        if not equals:
            raise InvalidValue(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set lr=0.02")
        if name not in FIELDS:
            raise InvalidValue(
                f"--set {assignment!r}: unknown setting {key!r}; valid settings: {', '.join(sorted(FIELDS))}"
            )
        values[name] = parse_text(name, text, f"--set {assignment}")
    return values


def read_yaml(path: str | Path, _within: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's settings, keys as in TrainConfig (``lr-steps`` and ``lr_steps`` both work).
    ``base: OTHER.yaml`` (beside this file) starts from OTHER's settings; this file states what differs."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"config file {path} does not exist" + (f" (the base of {_within[-1]})" if _within else ""))
    if path.resolve() in _within:
        raise InvalidValue(f"{path}: its bases form a loop: {' -> '.join(str(p) for p in (*_within, path))}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise InvalidValue(f"{path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise InvalidValue(f"{path} must hold a mapping of settings, got {type(values).__name__}")
    values = upgrade({str(k).replace("-", "_"): v for k, v in values.items()})
    base = values.pop("base", None)
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise InvalidValue(f"{path}: unknown settings {unknown}; valid settings: base, {', '.join(sorted(FIELDS))}")
    values = {name: coerce(name, value, str(path)) for name, value in values.items()}
    if base is None:
        return values
    inherited = read_yaml(path.parent / str(base), (*_within, path.resolve()))
    if any(values.get(name) is not None for name in BATCH_FIELDS):  # one way of giving the batch replaces the other
        inherited = {k: v for k, v in inherited.items() if k not in BATCH_FIELDS}
    return {**inherited, **values}


def make_config(*layers: dict[str, Any]) -> TrainConfig:
    """Defaults, then each layer in turn (a file, then flags); None in a layer means 'not set'
    (except in an ``Explicit`` layer).

    A layer that sets ``batch_size`` or ``global_batch_size`` replaces the other; one
    layer setting both is an error.
    """
    values: dict[str, Any] = {}
    for layer in layers:
        given = upgrade(layer if isinstance(layer, Explicit) else {k: v for k, v in layer.items() if v is not None})
        batch = [k for k in BATCH_FIELDS if given.get(k) is not None]
        if len(batch) == 2:
            raise InvalidValue(
                f"give either --batch-size (per process, {given['batch_size']}) or --global-batch-size "
                f"({given['global_batch_size']}), not both"
            )
        if batch:
            values.update(dict.fromkeys(BATCH_FIELDS))
        values.update(given)
    config = TrainConfig(**values)
    config.validate()
    return config
