"""Pretrained weights: torchvision's named ImageNet weights or a local file."""

from __future__ import annotations

import logging
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import get_model_weights

from cnl.errors import InvalidValue, MissingFile

logger = logging.getLogger(__name__)

NEW_MODULE_PREFIXES = ("plug.",)
HEAD_PREFIX = "fc."
# Before the paper's ResNets were plugged like every backbone, their modules had keys of their own.
LEGACY_PREFIXES = {"nl.": "plug.nl.", "cnl.": "plug.cnl."}


def current_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with the keys of checkpoints and weights written before ``plug.`` (``nl.*``,
    ``cnl.*``) renamed to today's: the one place that knows the old names."""
    renamed = {}
    for key, value in state.items():
        old = next((prefix for prefix in LEGACY_PREFIXES if key.startswith(prefix)), None)
        renamed[LEGACY_PREFIXES[old] + key[len(old) :] if old else key] = value
    return renamed


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a ``.pth``/``.pt`` (never unpickling code) or ``.safetensors`` file.

    A training checkpoint holding the state dict under ``"model"`` or ``"state_dict"``
    is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return current_keys(load_file(str(path)))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise InvalidValue(f"cannot read weights from {path}: {error}") from error
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InvalidValue(f"{path} does not hold a state dict of tensors")
    return current_keys(state)


NO_WEIGHTS = "none"  # random initial weights: what --weights none and a preset's `weights: none` ask for
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


def load_pretrained(model: nn.Module, arch: str, weights: str | Path, head: str = HEAD_PREFIX) -> None:
    """Load ``weights`` into ``model``.

    The new NL/CNL modules may be missing (they stay at their identity init); the linear
    head (keys starting with ``head``) is kept new when its shape differs (a different
    number of classes), as the paper re-initialises it. Any other missing or unexpected
    key is an error.
    """
    state = resolve_state_dict(arch, weights)
    own = model.state_dict()
    mismatched_head = [k for k in state if k.startswith(head) and k in own and state[k].shape != own[k].shape]
    if mismatched_head:
        logger.info("new head: not loading %s from %s", mismatched_head, weights)
        state = {k: v for k, v in state.items() if k not in mismatched_head}
    reshaped = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if reshaped:
        shapes = ", ".join(f"{k} {tuple(state[k].shape)} (model: {tuple(own[k].shape)})" for k in reshaped[:3])
        raise InvalidValue(f"weights {weights} do not fit {arch} (another width?): {shapes}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(NEW_MODULE_PREFIXES) and k not in mismatched_head]
    if missing or unexpected:
        raise InvalidValue(
            f"weights {weights} do not fit {arch}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}"
        )
