"""One run per folder: ``OUTPUT/.lock``, held with ``flock`` by the process that trains there."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cnl.engine.runfolder import RunFolder
from cnl.errors import UserError


class RunLocked(UserError, ValueError):
    """Another live process trains into the same folder."""


class RunLock:
    """An exclusive ``flock`` on ``folder/.lock``, which names the holder's pid.

    The kernel releases it when the holder ends, however it ends (SIGKILL too), so the lock
    of a killed run is stale by construction and the next run takes it over.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = RunFolder(folder).lock
        self.handle: int | None = None

    def acquire(self) -> int | None:
        """Take the lock; returns the pid of an ended run whose lock this takes over, if any.
        Raises RunLocked, naming the other process, when a live one holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        previous = os.read(handle, 64).decode(errors="replace").strip()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise RunLocked(
                f"{self.path.parent} is in use by another cnl train (pid {previous or 'unknown'}); "
                "wait for it to end, or train into another --output"
            ) from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        self.handle = handle
        return int(previous) if previous.isdigit() and int(previous) != os.getpid() else None

    def release(self) -> None:
        """Clear the pid (a run that ended cleanly leaves nothing to take over) and unlock."""
        if self.handle is not None:
            os.ftruncate(self.handle, 0)
            os.close(self.handle)  # closing the descriptor releases the flock
            self.handle = None
