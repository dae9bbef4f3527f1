"""Checkpoints: written atomically, read without unpickling code."""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from cnl import upgrades
from cnl.errors import MissingFile, UserError


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
    stored = state.pop("checksum", None)
    if stored is not None and stored != content_digest(state):
        raise CheckpointError(f"{path} is damaged: its contents do not match the checksum stored in it")
    state = upgrades.checkpoint(state)
    for weights in ("model", "model_ema"):
        if weights in state:
            state[weights] = upgrades.state_keys(state[weights])
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
