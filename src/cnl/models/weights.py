"""Pretrained weights: torchvision's named ImageNet weights or a local file."""

from __future__ import annotations

import logging
import urllib.error
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import get_model_weights

from cnl import upgrades
from cnl.errors import InvalidValue, MissingFile, excerpt, reason
from cnl.models.names import NO_WEIGHTS

logger = logging.getLogger(__name__)

NEW_MODULE_PREFIXES = ("plug.",)
HEAD_PREFIX = "fc."


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a ``.pth``/``.pt`` (never unpickling code) or ``.safetensors`` file.

    A training checkpoint holding the state dict under ``"model"`` or ``"state_dict"``
    is accepted too.
    """
    return _read(path)[0]


DATA_PARALLEL = "module."  # the prefix of every key of a model wrapped by (Distributed)DataParallel


def _read(path: str | Path) -> tuple[dict[str, Tensor], Any]:
    """``read_state_dict``'s state dict, and the whole object the file held (a training
    checkpoint's other entries; None for safetensors), from one read of the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"weights file {path} does not exist")
    held: Any = None  # what the file held: a training checkpoint's other entries
    state: Any = None
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            held = state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...; safetensors its own
        raise InvalidValue(f"cannot read weights from {path}: {reason(error, 120)}") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise InvalidValue(f"{path} does not hold a state dict (names of tensors)")
    if state and all(key.startswith(DATA_PARALLEL) for key in state):  # saved from a DistributedDataParallel
        state = {key[len(DATA_PARALLEL) :]: value for key, value in state.items()}
    return upgrades.state_keys(state), held


WEIGHTS_FILE_SUFFIXES = (".pth", ".pt", ".safetensors")


def wants_weights(weights: str | Path | None) -> bool:
    """Whether ``weights`` names weights to load (None and "none" ask for random ones)."""
    return weights is not None and str(weights) != NO_WEIGHTS


def is_weights_file(weights: str | Path) -> bool:
    text = str(weights)
    return isinstance(weights, Path) or Path(text).suffix in WEIGHTS_FILE_SUFFIXES or Path(text).exists()


def torchvision_weights(arch: str, name: str) -> Any:
    """torchvision's weights enum member ``name`` of ``arch``; an unknown name is one line
    listing each valid name once."""
    enum = get_model_weights(arch)
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        valid = ", ".join(dict.fromkeys(["DEFAULT", *enum.__members__]))
        raise InvalidValue(
            f"unknown weights {name!r} for {arch}; valid names: {valid}, {NO_WEIGHTS} (random), or a local file"
        ) from None


def check_weights(arch: str, weights: str | Path) -> None:
    """Before any data is read: a weights file that does not exist, or a name torchvision
    does not know for ``arch``, in one line."""
    if is_weights_file(weights):
        if not Path(weights).is_file():
            raise MissingFile(f"weights file {weights} does not exist")
        return
    torchvision_weights(arch, str(weights))


def torchvision_state_dict(arch: str, name: str) -> dict[str, Tensor]:
    """torchvision's weights ``name`` (e.g. "IMAGENET1K_V1", "DEFAULT") for ``arch``.

    Downloads into torch.hub's cache ($TORCH_HOME/hub/checkpoints) unless the file is
    already there; a machine that cannot fetch it gets one line naming the file to put there."""
    weights = torchvision_weights(arch, name)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError) as error:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(weights.url).path).name
        reason = getattr(error, "reason", None) or error
        raise MissingFile(
            f"cannot download the {name} weights of {arch} ({reason}): put {weights.url} at {cached} by hand, "
            f"or train from random weights with --weights {NO_WEIGHTS}"
        ) from None


def resolve_state_dict(arch: str, weights: str | Path) -> dict[str, Tensor]:
    if is_weights_file(weights):
        return read_state_dict(str(weights))
    return torchvision_state_dict(arch, str(weights))


@dataclass
class LoadReport:
    """What loading weights did, as timm's ``load_checkpoint(strict=False)`` reports it."""

    source: str
    loaded: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why (a head of other classes)
    new: list[str] = field(default_factory=list)  # the model's keys the weights lack: the NL/CNL modules
    unexpected: list[str] = field(default_factory=list)  # the weights' keys the model lacks
    reordered: bool = False  # the head's rows were mapped from another class order

    def __str__(self) -> str:
        parts = [f"weights {self.source}: {self.loaded} tensors loaded"]
        if self.skipped:
            reasons = sorted(set(self.skipped.values()))
            parts.append(f"skipped {', '.join(self.skipped)} ({'; '.join(reasons)})")
        if self.reordered:
            parts.append("the head's rows mapped by class name from the weights' class order")
        if self.new:
            parts.append(f"{len(self.new)} new tensors ({_prefixes(self.new)}) at their identity start")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} tensors not in the model ({_prefixes(self.unexpected)}), not used")
        return "; ".join(parts)


def _prefixes(keys: list[str]) -> str:
    """``plug.cnl.*, fc.*``: the modules of a list of keys, briefly."""
    return ", ".join(dict.fromkeys(".".join(key.split(".")[:2]) + ".*" for key in keys))


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], list[str] | None]:
    """A weights file's state dict, and its class names when it is a cnl training checkpoint."""
    state, held = _read(path)
    named = held.get("classes") if isinstance(held, dict) else None
    return state, [str(c) for c in named] if isinstance(named, list | tuple) else None


def load_pretrained(
    model: nn.Module, arch: str, weights: str | Path, head: str = HEAD_PREFIX, classes: list[str] | None = None
) -> LoadReport:
    """Load ``weights`` into ``model``; returns what was loaded, skipped and left new.

    The new NL/CNL modules may be missing (they stay at their identity init). The linear
    head (keys starting with ``head``) is kept new when its shape differs (another number of
    classes), as the paper re-initialises it, or when the weights name other ``classes``;
    when they name the same classes in another order, its rows are mapped by name. Keys the
    model lacks are reported, not used, when they are NL/CNL modules' (a CNL run's weights
    into a plain ResNet). A backbone key the weights lack or the model lacks, or a tensor of
    another shape, is an error: other weights."""
    if is_weights_file(weights):
        state, named = read_weights(weights)
    else:
        state, named = resolve_state_dict(arch, weights), None
    own = model.state_dict()
    report = LoadReport(str(weights))
    for key in [k for k in state if k.startswith(head) and k in own]:
        if state[key].shape != own[key].shape:
            report.skipped[key] = "the head of another number of classes"
        elif classes is not None and named is not None and named != classes:
            if sorted(named) != sorted(classes):
                report.skipped[key] = "the head of other classes"
            else:
                state[key] = state[key][[named.index(name) for name in classes]]
                report.reordered = True
    state = {k: v for k, v in state.items() if k not in report.skipped}
    reshaped = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if reshaped:
        shapes = ", ".join(f"{k} {tuple(state[k].shape)} (model: {tuple(own[k].shape)})" for k in reshaped[:3])
        raise InvalidValue(f"weights {weights} do not fit {arch} (another width?): {shapes}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    lacking = [k for k in missing if not k.startswith(NEW_MODULE_PREFIXES) and k not in report.skipped]
    foreign = [k for k in unexpected if not k.startswith(NEW_MODULE_PREFIXES)]  # another backbone's
    if lacking or foreign:
        lack = f"they lack {len(lacking)} of its tensors: {excerpt(lacking, 90)}" if lacking else ""
        extra = f"unexpected keys {excerpt(foreign, 90)}" if foreign else ""
        raise InvalidValue(f"weights {weights} do not fit {arch}: {'; '.join(filter(None, [lack, extra]))}")
    report.loaded = len(state) - len(unexpected)
    report.new = [k for k in missing if k.startswith(NEW_MODULE_PREFIXES)]
    report.unexpected = list(unexpected)
    return report
