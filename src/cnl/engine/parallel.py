"""Several training runs at once on one machine, each worker a process of its own.

On a small CPU a small model gains little from a second thread (most of an epoch is
per-image work that one thread does), while two runs side by side, one thread each, use
both cores: ``cnl demo`` took 13.7 minutes one run at a time on two threads, 6.2 two at a
time on one thread each, on the same 2 cores (docs/training.md). So ``fit_each`` spreads
runs over ``jobs`` worker processes, run ``k`` to worker ``k % jobs``, each worker training
its runs one after the other with ``threads`` threads.

A run's numbers depend on its thread count (sums are split differently), never on how
many runs share the machine or in which worker a run trains: runs of the same settings and
threads give the same weights in one process or in several.

Signals: the workers sit in process groups of their own, so that a Ctrl-C at the terminal
reaches them once, through the parent, which passes every SIGINT and SIGTERM on (a first
one saves and stops each running run, as for ``cnl train``). On Linux a worker whose parent
dies is sent SIGTERM, so a killed parent leaves no training behind.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

from cnl.engine.config import TrainConfig
from cnl.errors import TrainingDiverged, UserError, as_user_error, report

STOPPING = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent ends


class RunFailed(UserError, RuntimeError):
    """A worker's run ended with an error, which the worker printed (its run named on each line)."""


def fit_each(
    configs: Sequence[TrainConfig],
    jobs: int,
    threads: int,
    label: Callable[[TrainConfig], str],
) -> None:
    """Train every config (each writes its own run folder and summary.json), ``jobs`` at a
    time with ``threads`` threads each; every line a run prints starts with ``[label(config)]``.

    Raises ``RunInterrupted`` after a signal (once every worker has saved and stopped),
    ``TrainingDiverged`` or ``RunFailed`` when a run failed; the runs that finished keep their
    folders either way."""
    from cnl.engine.trainer import RunInterrupted

    context = multiprocessing.get_context("spawn")  # a fork would copy torch's threads mid-use
    shares = [[(config, label(config)) for config in configs[k::jobs]] for k in range(jobs)]
    workers = [context.Process(target=_work, args=(share, threads, os.getpid())) for share in shares if share]
    received: list[int] = []
    with _forwarding(workers, received):
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    codes = [worker.exitcode for worker in workers]
    if received:
        raise RunInterrupted(received[0], "received: each running run saved and stopped")
    if 3 in codes:
        raise TrainingDiverged("a run's loss is not finite (the lines above name it)")
    if any(codes):
        raise RunFailed(f"a run failed (exit status {max(c or 0 for c in codes)}); the lines above name it")


@contextlib.contextmanager
def _forwarding(workers: list, received: list[int]) -> Iterator[None]:
    """While the workers run, SIGINT and SIGTERM are recorded here and passed on to them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(number: int, frame: object) -> None:
        received.append(number)
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, number)

    previous = {number: signal.signal(number, forward) for number in STOPPING}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _work(share: list[tuple[TrainConfig, str]], threads: int, parent: int) -> None:
    """A worker: its runs in order; the exit status of ``cnl train`` for the first that does not finish."""
    os.setpgrp()  # the terminal's signals reach the parent only, which passes them on once
    stopped: list[int] = []
    for number in STOPPING:  # between runs (a run installs its own handlers): no new run starts
        signal.signal(number, lambda number, frame: stopped.append(number))
    _die_with(parent)
    import torch

    from cnl.engine.trainer import fit

    torch.set_num_threads(threads)
    for config, name in share:
        orphaned = os.getppid() != parent
        code = 128 + (stopped or [signal.SIGTERM])[0] if stopped or orphaned else _run(fit, config, name)
        if code:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _run(fit: Callable[[TrainConfig], object], config: TrainConfig, name: str) -> int:
    """``fit(config)`` with its output prefixed by ``[name]``; 0, or the exit status ``cnl train`` would give."""
    out, err = Prefixed(sys.__stdout__, name), Prefixed(sys.__stderr__, name)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            fit(config)
            return 0
        except (KeyboardInterrupt, Exception) as error:
            users = as_user_error(error)
            if users is None:  # a bug in cnl: its traceback, as cnl train would show it
                raise
            return report("cnl train", users)
        finally:
            out.flush()
            err.flush()


@contextlib.contextmanager
def thread_count(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` (None: left as they are), then restored."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _die_with(parent: int) -> None:
    """On Linux, SIGTERM to this process when ``parent`` ends (a run then saves and stops)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Prefixed(io.TextIOBase):
    """A text stream that writes each whole line to ``stream`` as ``[name] line``."""

    def __init__(self, stream: TextIO | None, name: str) -> None:
        self.stream, self.prefix, self.pending = stream, f"[{name}] ", ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # no progress bars: two runs would draw over each other

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).replace("\r", "\n").split("\n")
        if self.stream is not None and lines:
            self.stream.write("".join(f"{self.prefix}{line}\n" for line in lines if line))
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.write("\n")
