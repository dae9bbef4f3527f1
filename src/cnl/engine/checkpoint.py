"""Checkpoints: written atomically, read without unpickling code."""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cnl import upgrades
from cnl.errors import MissingFile, UserError, excerpt, reason


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, damaged, or for another model."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (a full disk, a file size limit): the previous
    file is intact."""


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _mapping(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(key, str) for key in value)


def _tensors(value: Any) -> bool:
    return _mapping(value) and all(isinstance(tensor, torch.Tensor) for tensor in value.values())


def _numbers(value: Any) -> bool:
    return _mapping(value) and all(_number(number) for number in value.values())


def _metrics(value: Any) -> bool:
    return _mapping(value) and all(number is None or _number(number) for number in value.values())


def _pairs(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(pair, list | tuple) and len(pair) == 2 and _number(pair[0]) and _count(pair[1]) for pair in value
    )


# What each entry of a training checkpoint holds, as the trainer writes it: a file from
# elsewhere (a colleague's, a damaged copy, a crafted one) is held to this before any entry
# is used, so that what does not fit is one line naming the entry, never a traceback.
ENTRIES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model_name": (lambda value: isinstance(value, str) and value != "", "a model name"),
    "model": (_tensors, "a state dict (parameter names to tensors)"),
    "model_ema": (_tensors, "a state dict (parameter names to tensors)"),
    "config": (_mapping, "a mapping of settings"),
    "classes": (lambda value: isinstance(value, list) and all(isinstance(name, str) for name in value), "class names"),
    "epoch": (_count, "a whole number, 0 or more"),
    "step": (_count, "a whole number, 0 or more"),
    "best": (lambda value: _numbers(value) and _count(value.get("epoch")), "metrics with their epoch"),
    "final": (_metrics, "metric names with numbers"),
    "metrics": (_mapping, "a mapping of metrics"),
    "rates": (lambda value: isinstance(value, list) and all(_number(rate) for rate in value), "a list of numbers"),
    "kept": (_pairs, "(top-1, epoch) pairs"),
    "optimizer": (_mapping, "an optimizer's state"),
    "scheduler": (_mapping, "a scheduler's state"),
    "scaler": (_mapping, "a loss scaler's state"),
    "provenance": (_mapping, "a mapping"),
}
# What a resume reads besides the weights: every checkpoint cnl has written holds these.
RESUMED = ("config", "classes", "epoch", "best", "optimizer", "scheduler", "scaler")


def check_entries(state: dict[str, Any], path: Path, needed: tuple[str, ...] = ("model", "model_name")) -> None:
    """Each entry of ``state`` that cnl reads holds what it should, and ``needed`` are there."""
    missing = [entry for entry in needed if entry not in state]
    if missing:
        names = " and ".join(map(repr, missing))
        raise CheckpointError(
            f"{path} is not a cnl training checkpoint (no {names} entr{'y' if len(missing) == 1 else 'ies'})"
        )
    for entry, (fits, what) in ENTRIES.items():
        if entry in state and not fits(state[entry]):
            raise CheckpointError(f"{path} is damaged: its {entry!r} entry is not {what} ({excerpt(state[entry], 60)})")


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


# The paragraphs of advice torch's weights-only unpickler wraps its reason in.
UNPICKLER_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def unpickler_reason(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused (``Trying to load unsupported GLOBAL
    posix.system whose module posix is blocked.``), without its paragraphs of advice."""
    paragraphs = [paragraph.strip() for paragraph in str(error).split("\n\n")]
    said = [paragraph for paragraph in paragraphs if paragraph and not paragraph.startswith(UNPICKLER_ADVICE)]
    return reason(RuntimeError(" ".join(said)), 100) if said else reason(error)


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
        with warnings.catch_warnings():  # torch warns of a pickle protocol it may not read: the error below says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refusing {path}: it holds objects other than tensors and plain data, and loading them "
            f"could run code ({unpickler_reason(error)})"
        ) from None
    except Exception as error:  # a file that is no zip archive goes to the unpickler, which raises anything
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is truncated or not a checkpoint "
            f"({type(error).__name__ + ': ' if isinstance(error, LookupError) else ''}{reason(error)})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise CheckpointError(f"{path} is not a cnl training checkpoint (not a mapping of named entries)")
    stored = state.pop("checksum", None)
    if stored is not None and stored != content_digest(state):
        raise CheckpointError(f"{path} is damaged: its contents do not match the checksum stored in it")
    check_entries(state, path)
    state = upgrades.checkpoint(state)
    for weights in ("model", "model_ema"):
        if weights in state:
            state[weights] = upgrades.state_keys(state[weights])
    return state


def resumable(path: Path) -> dict[str, Any]:
    """A checkpoint that holds every entry a resume reads."""
    state = read_checkpoint(path)
    check_entries(state, path, RESUMED)
    return state


def read_for_resume(path: str | Path) -> tuple[dict[str, Any], Path, str | None]:
    """The state to resume from: ``path`` (last.pt), or, when it is damaged, the previous
    checkpoint ``last-prev.pt``. Returns ``(state, the file read, why path was not used)``.
    Both damaged: a CheckpointError naming both; nothing is changed on disk."""
    path = Path(path)
    try:
        return resumable(path), path, None
    except CheckpointError as damage:
        previous = previous_path(path)
        if not previous.exists():
            raise CheckpointError(f"{damage}; and there is no {previous.name} to fall back to") from None
        try:
            return resumable(previous), previous, str(damage)
        except CheckpointError as also:
            raise CheckpointError(
                f"cannot resume: both checkpoints are damaged: {damage}; {also}. Nothing was overwritten"
            ) from None
