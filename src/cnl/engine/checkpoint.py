"""Checkpoints: written atomically, read without unpickling code."""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from cnl.engine.config import MODEL_SETTINGS
from cnl.engine.modelinfo import CardError, ModelInfo, check_head
from cnl.engine.runfolder import read_json
from cnl.errors import MissingFile, UserError, excerpt
from cnl.models import create_model
from cnl.models.weights import current_keys


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, damaged, or for another model."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (a full disk, a file size limit): the previous
    file is intact."""


def content_digest(state: Any) -> str:
    """SHA-256 of every tensor's bytes, dtype and shape and every other value, by key path:
    stored in each checkpoint beside the tensors, so a flipped bit is found on reading."""
    digest = hashlib.sha256()

    def visit(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key in sorted(value, key=str):
                visit(value[key], f"{where}/{key}")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                visit(item, f"{where}[{index}]")
        elif isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{where}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{where}={value!r}".encode())

    visit(state, "")
    return digest.hexdigest()


def previous_path(path: Path) -> Path:
    """``last.pt`` -> ``last-prev.pt``: the checkpoint before the current one."""
    return path.with_name(f"{path.stem}-prev{path.suffix}")


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable: sync the folder's own entry list."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> Path:
    """Write ``state`` and its checksum to a temporary file beside ``path``, fsync it, rename it
    over ``path``, then fsync the folder.

    A process killed at any moment leaves either the old complete file or the new one. With
    ``keep_previous`` the old file first becomes ``<name>-prev<suffix>`` (a hard link renamed
    into place, so ``path`` itself exists at every moment). The file gets the permissions the
    umask gives a new file (0644 under 022), not ``mkstemp``'s private 0600. A failed write
    (full disk, file size limit) removes the temporary file and raises CheckpointWriteError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contents = {**state, "checksum": content_digest(state)}
    temporaries = []
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        temporaries.append(temporary)
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), 0o666 & ~current_umask())
            torch.save(contents, file)
            file.flush()
            os.fsync(file.fileno())
        if keep_previous and path.exists():
            link = f"{temporary}.prev"
            temporaries.append(link)
            os.link(path, link)
            os.replace(link, previous_path(path))
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # RuntimeError: torch's zip writer, after the OS refused a write
        raise CheckpointWriteError(
            f"cannot write checkpoint {path}: {os_reason(error)}; the previous {path.name} is intact"
        ) from None
    finally:
        for leftover in temporaries:
            Path(leftover).unlink(missing_ok=True)
    fsync_folder(path.parent)
    return path


def os_reason(error: BaseException) -> str:
    """The operating system's words for a failed write: the OSError's own, or those of the
    OSError that torch's zip writer met before it raised its RuntimeError."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    return str(error).splitlines()[0]


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete what ``save_checkpoint`` calls of a process killed mid-write (SIGKILL runs no
    cleanup) left in ``folder``. Only safe while holding the folder's run lock."""
    leftovers = [*Path(folder).glob(".*.tmp"), *Path(folder).glob(".*.tmp.prev")]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded with ``weights_only=True``: tensors and plain data only."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refusing {path}: it holds objects other than tensors and plain data, and loading them could run "
            f"code ({str(error).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated or not a checkpoint ({error})") from None
    if not isinstance(state, dict) or "model" not in state or "model_name" not in state:
        raise CheckpointError(f"{path} is not a cnl training checkpoint (no 'model' and 'model_name' entries)")
    stored = state.pop("checksum", None)  # absent in checkpoints written before checksums
    if stored is not None and stored != content_digest(state):
        raise CheckpointError(f"{path} is damaged: its contents do not match the checksum stored in it")
    for weights in ("model", "model_ema"):
        if weights in state:
            state[weights] = current_keys(state[weights])
    return state


def read_for_resume(path: str | Path) -> tuple[dict[str, Any], Path, str | None]:
    """The state to resume from: ``path`` (last.pt), or, when it is damaged, the previous
    checkpoint ``last-prev.pt``. Returns ``(state, the file read, why path was not used)``.
    Both damaged: a CheckpointError naming both; nothing is changed on disk."""
    path = Path(path)
    try:
        return read_checkpoint(path), path, None
    except CheckpointError as damage:
        previous = previous_path(path)
        if not previous.exists():
            raise CheckpointError(f"{damage}; and there is no {previous.name} to fall back to") from None
        try:
            return read_checkpoint(previous), previous, str(damage)
        except CheckpointError as also:
            raise CheckpointError(
                f"cannot resume: both checkpoints are damaged: {damage}; {also}. Nothing was overwritten"
            ) from None


def model_overrides(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in MODEL_SETTINGS if config.get(k) is not None}


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
        reason = excerpt(str(error).splitlines()[0] if str(error) else type(error).__name__, 80).strip("'")
        raise CheckpointError(f"{path} is not a readable safetensors file ({reason})") from None


def read_model_file(path: str | Path) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    """``(description, weights)`` of a training checkpoint (its EMA weights when trained with
    one), exported ``.safetensors`` with their card, or a Hub model; every field checked."""
    from cnl.engine.hub import is_hub, read_hub

    if is_hub(path):
        info, weights = read_hub(path)
        return info, current_keys(weights)
    if Path(path).suffix == ".safetensors":
        card = card_path(path)
        if not card.is_file():
            raise MissingFile(f"{path} has no model card {card} beside it (written by cnl export)")
        info = ModelInfo.checked(read_json(card), str(card))
        return info, current_keys(read_safetensors(Path(path)))
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
