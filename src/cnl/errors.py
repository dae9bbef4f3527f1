"""Errors a user can mend, told apart from bugs.

Every error that cnl raises on purpose, because of a value, a file, data or a machine
that the user controls, derives from ``UserError``: a bad flag or setting, an unknown
model or layer, a missing or unreadable file, a dataset that does not fit its layout, a
damaged checkpoint, a full disk. ``cnl`` prints such an error as one line that names the
file or value, and exits 2. Any other exception is a bug in cnl: its traceback is shown
and the exit status is 1, so that it can be reported.

Each class also derives from the built-in exception that fits (``ValueError``,
``FileNotFoundError``, ...), so that ``except ValueError`` in a user's code still works.
"""

from __future__ import annotations

import sys
from pathlib import Path


class UserError(Exception):
    """Something the user gave or controls is wrong; the message says what and where."""


class InvalidValue(UserError, ValueError):
    """A flag, setting, name or argument that is not one of the valid ones."""


class InvalidArgument(UserError, TypeError):
    """A keyword argument a function does not take (``create_model(querry=...)``)."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder that is not where it was said to be."""


class MissingDependency(UserError, ImportError):
    """An optional package that a feature needs is not installed."""


class DataError(UserError, ValueError):
    """A dataset whose files or metadata do not fit what they should be."""


class FileList(DataError):
    """A ``DataError`` whose message lists files, one a line, after its first: the only message
    ``report`` prints on more than one line. Each entry is made ``printable`` here, so that a
    name cannot add a line of its own."""

    def __init__(self, heading: str, entries: list[str], most: int = 10) -> None:
        shown = [printable(entry) for entry in entries[:most]] + (["..."] if len(entries) > most else [])
        super().__init__("\n  ".join([heading, *shown]))


class OutOfMemory(UserError, MemoryError):
    """The machine has not the memory that the sizes asked for need."""


def as_user_error(error: BaseException) -> BaseException | None:
    """What ``report`` prints ``error`` as: itself when it is the user's (a ``UserError``, a
    file the OS refused, a signal), an ``OutOfMemory`` when torch refused an allocation, or
    None when it is a bug in cnl, which goes on with its traceback."""
    if isinstance(error, (KeyboardInterrupt, UserError, OSError)):
        return error
    return out_of_memory(error) if isinstance(error, RuntimeError) else None


def out_of_memory(error: BaseException) -> OutOfMemory | None:
    """``error`` as an ``OutOfMemory`` when it is torch's refusal of an allocation (a GPU's
    ``torch.OutOfMemoryError``, or the CPU allocator's ``RuntimeError``); None otherwise.
    Without importing torch: the command's help and its other errors do not load it."""
    text = str(error)
    cpu = text.find("DefaultCPUAllocator: can't allocate")
    if type(error).__name__ != "OutOfMemoryError" and cpu < 0:
        return None
    return OutOfMemory(f"out of memory ({cut(text[max(cpu, 0) :], 160)}): try a smaller --batch-size or --img-size")


class TrainingDiverged(UserError, FloatingPointError):
    """The loss is not finite: training stopped before the update (``cnl`` exits 3)."""


def report(command: str, error: BaseException) -> int:
    """Print ``error`` as the one line ``command`` (``cnl train``, ...) ends with, on stderr, and
    return its exit status: 128 + N after signal N (a bare Ctrl-C: 130), 3 for a loss that is not
    finite, 2 for the user's errors and the files the OS refused (``UserError``, ``OSError``)."""
    if isinstance(error, KeyboardInterrupt):  # a RunInterrupted says which signal and what was saved
        print(f"{command}: {error or 'interrupted'}", file=sys.stderr)
        return int(getattr(error, "exit_code", 130))
    keep = "\n" if isinstance(error, FileList) else ""  # any other line break came with a name or a value
    print(printable(f"{command}: error: {error}", keep=keep), file=sys.stderr)
    return 3 if isinstance(error, TrainingDiverged) else 2


def printable(text: str, keep: str = "") -> str:
    """``text`` with each character that is not printable (control characters, line and
    paragraph separators, format characters such as a right-to-left override), but those in
    ``keep``, written as its escape (``\\n``, ``\\x1b``, ``\\u202e``): a file's name or bytes
    quoted in a line can then neither break the line, return over it, reorder it, nor send
    the terminal a command. ``FileList``, which lists files one a line, keeps ``"\\n"``."""
    return "".join(char if char.isprintable() or char in keep else repr(char)[1:-1] for char in text)


EXCERPT = 60  # characters of a value an error message quotes


def excerpt(value: object, limit: int = EXCERPT) -> str:
    """``repr(value)``, cut to about ``limit`` characters: what an error may quote of a value
    that came from a file or a flag, so that a message stays one short line whatever it holds.
    ``reprlib`` bounds the work too: a long list is not rendered before it is cut."""
    import reprlib

    shorter = reprlib.Repr()
    shorter.maxstring = shorter.maxother = limit
    shorter.maxlist = shorter.maxtuple = shorter.maxdict = shorter.maxset = 6
    shorter.maxlevel = 3
    text = " ".join(shorter.repr(value).split())  # no line breaks: one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cut(text: str, limit: int = EXCERPT) -> str:
    """``text`` as it is (no quotes), on one line, with what is not printable escaped, cut to
    about ``limit`` characters (counted after the escapes, so that the line stays short)."""
    text = printable(" ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expect_file(path: str | Path, flag: str, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` checked as the file a command is about to write, before any work is done: not
    a folder, and its name ending in one of ``suffixes`` (case aside) when they are given."""
    path = Path(path)
    wanted = " or ".join(suffixes)
    if path.is_dir():
        raise InvalidValue(f"{flag} {path} is a folder: expected the name of a {wanted or 'new'} file")
    if suffixes and path.suffix.lower() not in suffixes:
        raise InvalidValue(f"{flag} {path}: expected a {wanted} file")
    return path


def reason(error: BaseException, limit: int = EXCERPT) -> str:
    """The first line of ``error``'s message (its class name when it has none), cut to about
    ``limit`` characters: what a one-line error says of a library's exception."""
    text = str(error)
    return cut(text.splitlines()[0] if text.strip() else type(error).__name__, limit)
