"""The test suite itself: a SIGTERM sent to it ends it, even while a training run in
this process holds the signal handlers (see conftest.py)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

TAKES_THE_SIGNAL = """
import os, signal

def test_a_run_takes_the_signal_for_its_own():
    previous = signal.signal(signal.SIGTERM, lambda number, frame: None)  # as an in-process run does
    os.kill(os.getpid(), signal.SIGTERM)
    signal.signal(signal.SIGTERM, previous)

def test_never_reached():
    pass
"""


def test_a_sigterm_taken_by_an_in_process_run_ends_the_suite(tmp_path):
    (tmp_path / "test_child.py").write_text(TAKES_THE_SIGNAL)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", "--rootdir", str(tmp_path),
         str(tmp_path / "test_child.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 128 + signal.SIGTERM, done.stdout + done.stderr
    assert "SIGTERM reached the test run during test_child.py::test_a_run_takes_the_signal_for_its_own" in done.stdout
    assert "1 passed" in done.stdout and "test_never_reached" not in done.stdout
