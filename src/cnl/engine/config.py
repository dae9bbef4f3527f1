"""The training configuration: defaults are the paper's recipe; a YAML file, then flags, override them.

Each setting is declared once (``setting``): its default, its help, and the numbers it
accepts (``Range``), which ``TrainConfig.validate`` checks before any work starts.

Settings files and values typed on the command line are read by ``SettingsLoader``: YAML
with YAML 1.2's numbers (``1e-3`` is the number 0.001, as in JSON and Python; PyYAML's YAML
1.1 wants ``1.0e-3`` and reads ``1e-3`` as text), and without anchors and aliases, which no
settings file needs and which let a few hundred bytes expand to gigabytes.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnl import upgrades
from cnl.data.catalog import CATALOG
from cnl.data.policies import AUTO_AUGMENTS, INTERPOLATION_NAMES
from cnl.errors import InvalidValue, MissingFile, cut, excerpt
from cnl.models.names import MODEL_SETTINGS, NO_WEIGHTS

AMP_CHOICES = ("none", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
FREEZE_CHOICES = ("none", "backbone")
RESUME_CHOICES = ("no", "yes", "auto")
DEVICES = ("auto", "cpu", "cuda")
SETTINGS_FILE_LIMIT = 1 << 20  # bytes: a preset is a few hundred
SETTINGS_DEPTH_LIMIT = 8  # nesting of a settings document: a mapping of values and lists needs 2
# Two ways to give the batch; a layer that sets one unsets the other from the layers below.
BATCH_FIELDS = ("global_batch_size", "batch_size")
# How and where this invocation runs, not the recipe: left out of a run's config.yaml.
INVOCATION_FIELDS = ("output", "resume")
# How and where a run is carried out, not what it trains: a run may be continued or reused with
# other values (the data may have moved; only where they are is compared, never what they hold).
HOW_FIELDS = ("workers", "device", "compile", "channels_last", "deterministic", "data_root")


def model_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``config`` (a run's stored recipe) that ``create_model`` takes: where
    the modules go, their size, the backbone's width and regularization."""
    return {k: config[k] for k in MODEL_SETTINGS if config.get(k) is not None}


def _number(value: float) -> str:
    """``0.5``, ``1``, ``2**63``: a bound as a reader writes it."""
    if isinstance(value, int) and value >= 10**6 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    return f"{value:g}"


@dataclass(frozen=True)
class Range:
    """The numbers a setting accepts: finite, from ``low`` to ``high`` (None: unbounded; each
    bound closed unless ``low_open``/``high_open``). For a list setting every item, and
    ``order``: "increasing" (strictly) or "non-decreasing"; ``length``: how many items."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    order: str = ""
    length: int | None = None

    def bounds(self) -> str:
        """``> 0``, ``>= 1``, ``in [0, 1)``, ``<= 1``."""
        low, high = ("" if x is None else _number(x) for x in (self.low, self.high))
        if low and high:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if low:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"{'<' if self.high_open else '<='} {high}" if high else ""

    def holds(self, number: Any) -> bool:
        try:
            if not math.isfinite(number):
                return False
        except (OverflowError, TypeError):  # an integer too large for a float, or not a number
            return False
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        return self.high is None or (number < self.high if self.high_open else number <= self.high)

    def holds_list(self, values: list[Any]) -> bool:
        if self.length is not None and len(values) != self.length:
            return False
        if not all(self.holds(value) for value in values):
            return False
        pairs = list(zip(values, values[1:]))
        if self.order == "increasing":
            return all(a < b for a, b in pairs)
        return all(a <= b for a, b in pairs) if self.order == "non-decreasing" else True


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)  # [0, 1)


def setting(default: Any, help: str, range: Range | None = None, **flag: Any) -> Any:
    """A field of TrainConfig with its command-line help, the numbers it accepts (``range``)
    and flag options (``choices``, ``metavar``, ``nargs``): the one place a setting is
    described; ``cnl train`` and ``validate`` read it."""
    metadata = {"help": help, **({"range": range} if range is not None else {}), **flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


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
    dataset: str = setting("auto", f"{', '.join(CATALOG)} or auto (from the folder's layout)")
    model: str = setting("resnet50_cnl5", "a model name (cnl list-models), or tv:NAME / timm:NAME [_nl5|_cnl5]")
    weights: str = setting(
        NO_WEIGHTS,
        "starting weights: a torchvision name (IMAGENET1K_V1: the paper's, as every preset says), pretrained (a "
        "timm: backbone's own), a local .pth/.safetensors, or none: random, as timm's and torchvision's training "
        "scripts start",
    )
    # Placement overrides for create_model (torchvision layer names); None keeps the model's.
    query: str | None = setting(None, "CNL query layer, e.g. layer4.2 (default: the model's)")
    responses: list[str] | None = setting(None, "CNL response layers (default: the model's)", metavar="LAYER")
    nl_layers: list[str] | None = setting(None, "NL block layers (default: the model's)", metavar="LAYER")
    inner_channels: int | None = setting(None, "width c of the NL/CNL embeddings (default: the model's)", AT_LEAST_ONE)
    width: int | None = setting(
        None, "channels of a ResNet's first stage (default 64; others train from scratch)", Range(1, 1024)
    )
    # A validation set: a fraction of each class of the training split (seeded), "official"
    # (the dataset's own, FGVC-Aircraft) or None (the paper: best.pt is the best test epoch).
    val_split: float | str | None = setting(
        None, "FRACTION of each training class, or 'official', to choose best.pt on (default: none, the paper)",
        metavar="FRACTION|official",
    )  # fmt: skip
    img_size: int = setting(448, "train and test crop, pixels (a ResNet needs at least 32)", Range(32, 4096))
    epochs: int = setting(110, "epochs to train", AT_LEAST_ONE)
    warmup_epochs: float = setting(10, "linear warmup from lr/1000, epochs", NON_NEGATIVE)
    global_batch_size: int | None = setting(64, "batch over all processes and accumulation steps", AT_LEAST_ONE)
    batch_size: int | None = setting(None, "batch per process, instead of --global-batch-size", AT_LEAST_ONE)
    lr: float = setting(0.01, "base learning rate", POSITIVE)
    lr_steps: list[int] = setting(
        [50, 70, 90], "epochs at which lr is multiplied by --lr-decay", Range(1, order="increasing"), metavar="EPOCH"
    )
    lr_decay: float = setting(0.1, "lr factor at each of --lr-steps", Range(0, 1, low_open=True))
    schedule: str = setting("step", "after warmup: step decay (the paper) or cosine", choices=SCHEDULES)
    optimizer: str = setting("sgd", "sgd (the paper) or adamw", choices=OPTIMIZERS)
    momentum: float = setting(0.9, "SGD momentum", FRACTION)
    weight_decay: float = setting(1e-4, "weight decay", NON_NEGATIVE)
    crop_scale: list[float] = setting(
        [0.08, 1.25], "RandomResizedCrop area range", Range(0, low_open=True, order="non-decreasing", length=2),
        nargs=2, metavar=("LOW", "HIGH"),
    )  # fmt: skip
    # Fine-tuning options since the paper, all off by default (the paper's recipe).
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing; 0 is off", FRACTION)
    clip_grad: float | None = setting(None, "clip the norm of all gradients to this (default: off)", POSITIVE)
    ema: float | None = setting(
        None,
        "keep an EMA of the weights with this decay, e.g. 0.9998; it is evaluated and used (default: off)",
        Range(0, 1, low_open=True, high_open=True),
    )
    mixup: float = setting(0.0, "MixUp alpha; 0 is off", NON_NEGATIVE)
    cutmix: float = setting(0.0, "CutMix alpha; 0 is off; with --mixup, one of the two per batch", NON_NEGATIVE)
    wd_norm_bias: bool = setting(True, "weight decay on norms and biases too (--no-wd-norm-bias: on weights only)")
    head_lr_mult: float = setting(1.0, "lr multiplier of the NL/CNL modules and the head", POSITIVE)
    # The settings of timm's train.py and torchvision's references, off by default (docs/training.md).
    augment: str = setting(
        "none",
        "an augmentation policy after the crop (torchvision's): randaugment, trivialaugment, autoaugment",
        choices=AUTO_AUGMENTS,
    )
    color_jitter: float = setting(
        0.0, "jitter of brightness, contrast and saturation (timm's --color-jitter, e.g. 0.4); 0 is off", Range(0, 1)
    )
    random_erase: float = setting(
        0.0, "probability of erasing a random rectangle (timm's --reprob, e.g. 0.25); 0 is off", Range(0, 1)
    )
    interpolation: str = setting("bilinear", "resampling of the training crop", choices=INTERPOLATION_NAMES)
    eval_resize: int | None = setting(
        None,
        "evaluation: the shorter side resized to this, then --eval-crop (default: crop x 512/448, the paper's)",
        Range(16, 8192),
    )
    eval_crop: int | None = setting(None, "evaluation: the central square (default: --img-size)", Range(16, 8192))
    eval_interpolation: str = setting("bilinear", "resampling of evaluation images", choices=INTERPOLATION_NAMES)
    drop_rate: float | None = setting(
        None, "dropout before the classifier (default: the model's: 0.5 for our ResNets, as the paper)", FRACTION
    )
    drop_path: float | None = setting(
        None,
        "stochastic depth: the rate of the last block, rising from 0 at the first (e.g. 0.1; default: off)",
        FRACTION,
    )
    nesterov: bool = setting(False, "Nesterov momentum (SGD)")
    layer_decay: float | None = setting(
        None,
        "layer-wise lr decay: each block's lr is the next one's times this (e.g. 0.75; default: off)",
        Range(0, 1, low_open=True),
    )
    freeze: str = setting(
        "none",
        "backbone: train only the NL/CNL modules and the head; the rest runs in eval mode, without gradients",
        choices=FREEZE_CHOICES,
    )
    cache_features: bool = setting(
        False,
        "with --freeze backbone: compute the frozen part once per image and keep it in OUTPUT/features "
        "(training images then read as evaluation reads them, without augmentation)",
    )
    keep_best: int = setting(1, "keep the N best checkpoints by the selection metric (best-eNNN.pt)", AT_LEAST_ONE)
    workers: int = setting(4, "data loading processes per training process", NON_NEGATIVE)
    amp: str = setting("none", "mixed precision", choices=AMP_CHOICES)
    channels_last: bool = setting(False, "channels-last memory format")
    compile: bool = setting(False, "torch.compile the model")
    accum_steps: int = setting(1, "micro-batches per optimizer step", AT_LEAST_ONE)
    seed: int = setting(0, "the seed every random draw derives from", Range(0, 2**63, high_open=True))
    output: str = setting("runs/train", "run folder")
    resume: str | None = setting(
        None, "continue from OUTPUT/checkpoints/last.pt (no value, or yes); auto: when it exists (the default after "
        "torchrun restarts); no; or a checkpoint's path", metavar="auto|no|PATH",
    )  # fmt: skip
    deterministic: bool = setting(False, "deterministic kernels only")
    sync_bn: bool = setting(False, "SyncBatchNorm across processes (CUDA)")
    device: str = setting("auto", "auto, cpu or cuda", choices=DEVICES)

    def validate(self, data_root: bool = True) -> None:
        """Reject impossible values before any work starts: each setting against its type and
        ``Range``, then the settings that must agree with each other. ``data_root``: whether
        the data are read from ``data_root`` (not when ``fit`` is handed datasets)."""
        problems = [problem for f in dataclasses.fields(self) if (problem := out_of_range(f, getattr(self, f.name)))]
        if data_root and not self.data_root:
            problems.append("data_root is required (--data-root)")
        for setting in dataclasses.fields(self):  # a setting of choices: one of them, from any layer
            choices = setting.metadata.get("choices")
            if choices and getattr(self, setting.name) not in choices:
                value = excerpt(getattr(self, setting.name))
                problems.append(f"{setting.name} must be one of {', '.join(choices)}, got {value}")
        if self.val_split is not None and self.val_split != "official":
            if isinstance(self.val_split, bool) or not FRACTION.holds(self.val_split) or self.val_split == 0:
                problems.append(f"val_split must be a fraction in (0, 1) or 'official', got {excerpt(self.val_split)}")
        if (self.batch_size is None) == (self.global_batch_size is None):
            problems.append("give exactly one of global_batch_size and batch_size (per process)")
        problems += self._disagreements()
        if self.resume == "":
            problems.append(f"resume must be one of {', '.join(RESUME_CHOICES)} or a checkpoint's path, got ''")
        if not self.weights:
            problems.append(f"weights must name weights, a file, or {NO_WEIGHTS} (random), got ''")
        if not self.output:  # what an unset shell variable gives: the run would be written into the current folder
            problems.append("output must name the run's folder, got ''")
        for name in ("data_root", "dataset", "model", "weights", "output", "resume", "query"):
            if "\0" in (getattr(self, name) or ""):
                problems.append(
                    f"{name} holds a NUL character, which no path or name can: {excerpt(getattr(self, name))}"
                )
        if problems:
            raise InvalidValue("invalid configuration: " + "; ".join(problems))

    def _disagreements(self) -> list[str]:
        """Settings valid alone that cannot go together."""
        problems = []
        if self.nesterov and (self.optimizer != "sgd" or not self.momentum):
            problems.append("nesterov is SGD's, with momentum: give --optimizer sgd and a --momentum above 0")
        if self.color_jitter and self.augment != "none":
            problems.append(f"color_jitter and augment {self.augment} are alternatives (as in timm): give one")
        if self.cache_features:
            problems += self._uncacheable()
        crop = self.eval_crop or self.img_size
        if self.eval_resize is not None and self.eval_resize < crop:
            problems.append(f"eval_resize {self.eval_resize} is smaller than the eval crop {crop}")
        return problems

    def _uncacheable(self) -> list[str]:
        """What --cache-features cannot go with: features computed once cannot be augmented."""
        problems = [] if self.freeze == "backbone" else ["cache_features needs --freeze backbone"]
        augmenting = {
            "mixup": self.mixup, "cutmix": self.cutmix, "color_jitter": self.color_jitter,
            "random_erase": self.random_erase, "augment": self.augment != "none", "compile": self.compile,
        }  # fmt: skip
        given = [name for name, value in augmenting.items() if value]
        if given:
            problems.append(f"cache_features cannot go with {', '.join(given)}: cached features are computed once")
        return problems

    def eval_sizes(self) -> tuple[int, int | None, str]:
        """Evaluation's crop, resize (None: the crop x 512/448) and interpolation."""
        return self.eval_crop or self.img_size, self.eval_resize, self.eval_interpolation

    def cautions(self) -> list[str]:
        """Settings that are valid but cannot do what they seem to ask, each with its fix (a
        run prints them as warnings when it starts)."""
        notes = []
        if self.warmup_epochs >= self.epochs:
            notes.append(
                f"the warm-up ({self.warmup_epochs:g} epochs) is as long as the run ({self.epochs}): the learning "
                f"rate never reaches {self.lr:g}; give --warmup-epochs below {self.epochs}, e.g. "
                f"{self.epochs / 10:g} (a tenth of the run)"
            )
        past = [step for step in self.lr_steps if step >= self.epochs]
        if self.schedule == "step" and past:
            notes.append(
                f"lr_steps {', '.join(map(str, past))} are not before the last epoch ({self.epochs}): the rate is "
                "never multiplied by lr_decay there; give --lr-steps within the run, or --set lr_steps=[] for none"
            )
        return notes

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


def stored_config(values: dict[str, Any]) -> TrainConfig:
    """A config as a run or an ablation recorded it, by any version: old names upgraded,
    settings since removed dropped, not validated (a record is read as it was written)."""
    return TrainConfig(**{k: v for k, v in upgrades.settings(values).items() if k in FIELDS})


def recipe_differences(stored: dict[str, Any], wanted: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The settings in which a run's recipe (``TrainConfig.recipe``, as its checkpoint stores
    it, by any version: a setting added since has its default) differs from ``wanted``, each
    as ``"key: STORED there, WANTED here"``; ``HOW_FIELDS`` and ``ignore`` are not compared."""
    known = {**TrainConfig().recipe(0), **{k: v for k, v in upgrades.settings(stored).items() if k in FIELDS}}
    skipped = (*HOW_FIELDS, *INVOCATION_FIELDS, *ignore)
    return [
        f"{key}: {excerpt(known.get(key), 24)} there, {excerpt(value, 24)} here"
        for key, value in wanted.items()
        if key not in skipped and known.get(key) != value
    ]


def resume_differences(stored: dict[str, Any], wanted: TrainConfig, done: int) -> list[str]:
    """What a resume of a run (its stored recipe, ``done`` epochs finished) may not change
    to become ``wanted``. A resumed run keeps its recipe, so that its config.yaml trains it
    again: only ``HOW_FIELDS`` may change, and ``epochs`` may grow under the step schedule
    (whose rate at an epoch does not depend on how many follow; the cosine one's does).
    The batch is compared by the trainer, which knows the processes."""
    problems = recipe_differences(stored, wanted.recipe(0), ignore=(*BATCH_FIELDS, "epochs"))
    before = upgrades.settings(stored).get("epochs", wanted.epochs)
    if wanted.epochs != before and wanted.schedule != "step":
        problems.append(f"epochs: {before} there, {wanted.epochs} here (the {wanted.schedule} schedule spans them)")
    elif wanted.epochs < done:
        problems.append(f"epochs: {wanted.epochs} here, but {done} are done")
    return problems


FIELD_INFO = {f.name: f for f in dataclasses.fields(TrainConfig)}
FIELDS = set(FIELD_INFO)
HINTS = typing.get_type_hints(TrainConfig)  # the annotations as types: what each setting accepts
_WRONG = object()


class Explicit(dict):
    """A layer of settings in which None is a value (``--set ema=null``), not 'not set'."""


def rule_text(name: str) -> str:
    """What setting ``name`` accepts, with its range: 'a finite number > 0', 'an integer >= 1',
    'a list of integers >= 1, increasing'."""
    rule: Range = FIELD_INFO[name].metadata.get("range") or Range()
    kind = next(kind for kind in _kinds(HINTS[name]) if kind is not type(None))
    listed = typing.get_origin(kind) is list
    item = typing.get_args(kind)[0] if listed else kind
    noun = "integer" if item is int else "finite number"
    if not listed:
        return " ".join(filter(None, (("an " if item is int else "a ") + noun, rule.bounds())))
    count = f"{rule.length} " if rule.length else ""
    order = {"increasing": ", increasing", "non-decreasing": ", none smaller than the one before"}.get(rule.order, "")
    return " ".join(filter(None, (f"a list of {count}{noun}s", rule.bounds()))) + order


def out_of_range(setting: dataclasses.Field, value: Any) -> str | None:
    """Why ``value`` is outside ``setting``'s declared range, or None when it is inside (or
    the setting declares none)."""
    rule: Range | None = setting.metadata.get("range")
    if rule is None or value is None:
        return None
    inside = rule.holds_list(value) if isinstance(value, list) else (not isinstance(value, bool) and rule.holds(value))
    return None if inside else f"{setting.name} must be {rule_text(setting.name)}, got {excerpt(value)}"


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
    if kind is float and isinstance(value, int):
        # As a float: ``mixup: 1`` in a preset is 1.0, not an integer that torch's Beta
        # distribution refuses at the first step.
        try:
            return float(value)
        except OverflowError:
            return value  # beyond any float: its range check names it
    accepted = {int: int, float: float, str: str, bool: bool}[kind]
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
    raise InvalidValue(f"{where}: {name} must be {describe(name)}, got {excerpt(value)}")


class SettingsError(InvalidValue, yaml.YAMLError):
    """A settings document that is YAML but not one we read (anchors, aliases, deep nesting)."""


class SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats and without anchors, aliases or deep nesting."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise SettingsError(f"anchors and aliases (&, *) are not accepted in settings, {where_in(event)}")
        if self.depth >= SETTINGS_DEPTH_LIMIT:
            raise SettingsError(f"nested more than {SETTINGS_DEPTH_LIMIT} levels deep, {where_in(event)}")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


# YAML 1.2's float (the JSON schema's, with YAML 1.1's .inf and .nan): 1e-3, 5E-4, -1e-2, 1.5, .5
SettingsLoader.yaml_implicit_resolvers = {
    first: [(tag, rule) for tag, rule in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def where_in(event: Any) -> str:
    mark = getattr(event, "start_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"


def yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong with a YAML document, and where, without PyYAML's excerpt of the text
    (which would quote whatever file was named)."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{excerpt(error.problem or error.context, 80).strip(chr(39))}{place}"
    return excerpt(str(error), 120).strip("'")


def load_settings_text(text: str) -> Any:
    """A YAML document as settings are read (``SettingsLoader``)."""
    return yaml.load(text, Loader=SettingsLoader)  # noqa: S506 - a SafeLoader


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
        value = load_settings_text(text)
    except (yaml.YAMLError, RecursionError):
        value = text
    if str in kinds and not any(_as(kind, value) is not _WRONG for kind in kinds):
        value = text
    return coerce(name, value, where)


# Other tools' names for our settings (timm's train.py, torchvision's references).
OTHER_NAMES = {
    "learning_rate": "lr", "wd": "weight_decay", "opt": "optimizer", "sched": "schedule",
    "smoothing": "label_smoothing", "model_ema_decay": "ema", "clip_grad_norm": "clip_grad",
    "num_workers": "workers", "j": "workers",
    "input_size": "img_size", "image_size": "img_size", "warmup": "warmup_epochs", "batch": "batch_size",
}  # fmt: skip


def _nearest(name: str) -> list[str]:
    key = name.replace("-", "_").lower()
    return [OTHER_NAMES[key]] if key in OTHER_NAMES else difflib.get_close_matches(key, sorted(FIELDS), 2, 0.7)


def unknown_names(names: list[Any], where: str) -> str:
    """The error for settings that do not exist: a few of the names, cut short, with the
    nearest real names (never a list of every setting, nor more than a line)."""
    shown = [excerpt(str(name), 30) for name in names[:3]]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    near = sorted({m for n in names[:3] for m in _nearest(str(n)[:40])})
    hint = f"; did you mean {', '.join(near)}?" if near else "; cnl train --help lists them"
    word = "setting" if len(names) == 1 else "settings"
    return f"{where}: unknown {word} {', '.join(shown)}{more}{hint}"


def parse_assignments(assignments: list[str]) -> Explicit:
    """``--set KEY=VALUE`` items: each key a setting (dashes or underscores), each value typed."""
    values = Explicit()
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        name = key.strip().replace("-", "_")
        if not equals:
            raise InvalidValue(f"--set {excerpt(assignment)}: expected KEY=VALUE, e.g. --set lr=0.02")
        if name not in FIELDS:
            raise InvalidValue(unknown_names([key], f"--set {cut(assignment)}"))
        values[name] = parse_text(name, text, f"--set {cut(assignment)}")
    return values


def read_settings_file(path: Path, note: str = "") -> dict[str, Any]:
    """The mapping in settings file ``path`` (keys with dashes or underscores, old names
    upgraded). A file that is too large, not UTF-8, not YAML we read, or not a mapping is
    one line that names it and quotes none of its content."""
    if not path.exists():
        raise MissingFile(f"config file {path} does not exist{note}")
    if not path.is_file():
        raise InvalidValue(f"config file {path} is not a regular file{note}")
    size = path.stat().st_size
    if size > SETTINGS_FILE_LIMIT:
        raise InvalidValue(f"{path} is not a settings file: {size:,} bytes, and a settings file is at most 1 MiB")
    try:
        values = load_settings_text(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise InvalidValue(f"{path} is not a settings file: not UTF-8 text (byte {error.start})") from None
    except yaml.YAMLError as error:
        raise InvalidValue(f"{path} is not valid settings YAML: {yaml_problem(error)}") from None
    if not isinstance(values, dict):
        raise InvalidValue(
            f"{path} is not a settings file: it holds {type(values).__name__}, not a mapping of settings"
        )
    return upgrades.settings({str(k).replace("-", "_"): v for k, v in values.items()})


BASE_SUFFIXES = (".yaml", ".yml")


def base_path(path: Path, base: Any) -> Path:
    """The file that ``base:`` in ``path`` names: a relative path to a .yaml/.yml file, read
    from ``path``'s folder (``..`` may climb, so a preset in configs/modern builds on
    configs/). An absolute path is refused: a preset must mean the same on every machine."""
    if not isinstance(base, str) or not base.strip():
        raise InvalidValue(f"{path}: base must be the relative path of another settings file, got {excerpt(base)}")
    if "\0" in base or Path(base).is_absolute() or base.startswith("~"):
        raise InvalidValue(
            f"{path}: base {excerpt(base)} is not a relative path; base names a settings file relative to {path.name}"
        )
    if Path(base).suffix not in BASE_SUFFIXES:
        raise InvalidValue(f"{path}: base {excerpt(base)} is not a .yaml or .yml file")
    return path.parent / base


def read_yaml(path: str | Path, _within: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's settings, keys as in TrainConfig (``lr-steps`` and ``lr_steps`` both work).
    ``base: OTHER.yaml`` (a path relative to this file) starts from OTHER's settings; this
    file states what differs."""
    path = Path(path)
    if path.resolve() in _within:
        raise InvalidValue(f"{path}: its bases form a loop: {' -> '.join(str(p) for p in (*_within, path))}")
    values = read_settings_file(path, f" (the base of {_within[-1]})" if _within else "")
    base = values.pop("base", None)
    unknown = [name for name in values if name not in FIELDS]
    if unknown and len(unknown) == len(values) and base is None and not any(_nearest(str(n)[:40]) for n in unknown):
        raise InvalidValue(
            f"{path} is not a settings file: none of its {len(values)} keys is a setting (cnl train --help lists them)"
        )
    if unknown:
        raise InvalidValue(unknown_names(unknown, str(path)))
    values = {name: coerce(name, value, str(path)) for name, value in values.items()}
    if base is None:
        return values
    inherited = read_yaml(base_path(path, base), (*_within, path.resolve()))
    if any(values.get(name) is not None for name in BATCH_FIELDS):  # one way of giving the batch replaces the other
        inherited = {k: v for k, v in inherited.items() if k not in BATCH_FIELDS}
    return {**inherited, **values}


def typed(name: str, value: Any, where: str) -> Any:
    """A setting's value from Python or a stored config, as its type: text where the setting
    takes numbers is read as typed on the command line (``"1e-3"`` from a stored config)."""
    if isinstance(value, str) and str not in _kinds(HINTS[name]):
        return parse_text(name, value, where)
    return coerce(name, value, where)


def make_config(*layers: dict[str, Any], data_root: bool = False) -> TrainConfig:
    """Defaults, then each layer in turn (a file, then flags); None in a layer means 'not set'
    (except in an ``Explicit`` layer). Each value is checked against its setting's type and
    range (``validate``; ``data_root`` as there: ``fit`` asks for it when it is not handed
    datasets, which replace it).

    A layer that sets ``batch_size`` or ``global_batch_size`` replaces the other; one
    layer setting both is an error.
    """
    values: dict[str, Any] = {}
    for layer in layers:
        given = upgrades.settings(
            layer if isinstance(layer, Explicit) else {k: v for k, v in layer.items() if v is not None}
        )
        unknown = [name for name in given if name not in FIELDS]
        if unknown:
            raise InvalidValue(unknown_names(unknown, "settings"))
        given = {name: typed(name, value, "settings") for name, value in given.items()}
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
    config.validate(data_root)
    return config
