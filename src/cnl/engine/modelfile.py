"""A trained model from any file it is kept in: a training checkpoint, exported safetensors
with their JSON model card, or a Hub model; each described by one ``ModelInfo``, every field
checked, and built again by its name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnl import upgrades
from cnl.engine.checkpoint import CheckpointError, read_checkpoint
from cnl.engine.config import model_overrides
from cnl.engine.modelinfo import CardError, ModelInfo, check_head
from cnl.engine.runfolder import read_json
from cnl.errors import MissingFile, reason
from cnl.models import create_model


def card_path(weights: str | Path) -> Path:
    """The JSON model card beside exported weights: ``model.safetensors`` -> ``model.json``."""
    return Path(weights).with_suffix(".json")


def _describe(state: dict[str, Any], path: Path) -> ModelInfo:
    config = state.get("config", {})
    if not isinstance(config, dict):
        raise CardError(f"{path}: config must be a mapping, got {type(config).__name__}")
    raw = {"model": state["model_name"], "classes": state.get("classes"), "config": config}
    raw.update({"img_size": config["img_size"]} if "img_size" in config else {})
    return ModelInfo.checked({**raw, "overrides": model_overrides(config)}, str(path))


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a file that is not one is a CheckpointError naming it."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise MissingFile(f"{path} does not exist")
    try:
        return load_file(str(path))
    except Exception as error:  # the Rust reader's SafetensorError, and whatever else a damaged file raises
        raise CheckpointError(f"{path} is not a readable safetensors file ({reason(error, 80)})") from None


def read_model_file(path: str | Path) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    """``(description, weights)`` of a training checkpoint (its EMA weights when trained with
    one), exported ``.safetensors`` with their card, or a Hub model; every field checked."""
    from cnl.engine.hub import is_hub, read_hub

    if is_hub(path):
        info, weights = read_hub(path)
        return info, upgrades.state_keys(weights)
    if Path(path).suffix == ".safetensors":
        card = card_path(path)
        if not card.is_file():
            raise MissingFile(f"{path} has no model card {card} beside it (written by cnl export)")
        info = ModelInfo.checked(read_json(card), str(card))
        return info, upgrades.state_keys(read_safetensors(Path(path)))
    state = read_checkpoint(path)
    return _describe(state, Path(path)), state.get("model_ema", state["model"])


def load_model_with_info(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, list[str], ModelInfo]:
    """``load_model`` plus what describes the model (``ModelInfo``: name, classes, image size,
    placement overrides, mean/std, and for training checkpoints the run's ``config``). The
    file is read once. ``path``: a training checkpoint, exported ``.safetensors`` with their
    card, or a Hub model (a folder written by ``cnl export --format hf``, or ``hf-hub:ORG/NAME``)."""
    from cnl.models.backbones import head_name

    info, weights = read_model_file(path)
    model = create_model(info.model, num_classes=len(info.classes), img_size=info.img_size, **info.overrides)
    check_head(weights, head_name(model), info.classes, str(path))
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not fit {info.model}: {str(error).splitlines()[0]}") from None
    return model.to(device).eval(), list(info.classes), info


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, list[str]]:
    """The trained model of a checkpoint (or of exported ``.safetensors`` weights with their
    model card), in eval mode, and its class names."""
    model, classes, _ = load_model_with_info(path, device)
    return model, classes
