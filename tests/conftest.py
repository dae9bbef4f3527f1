"""A signal sent to the test run ends the test run, saying so.

Many tests call ``main(["train", ...])`` in this process, and a training run takes SIGINT
and SIGTERM for its own, as ``cnl train`` must: it saves, and ``main`` returns 130 or 143.
Without this, a SIGTERM sent to the whole test run (``timeout``, a job manager ending the
suite, a terminal closing) would be taken by whichever run was in progress: one test would
fail with "143 == 0" and pytest would go on as if nothing had been asked of it.

Python writes the number of every signal it handles to the wakeup fd, whichever handler
takes it; after each test this reads it, and a SIGINT or SIGTERM that reached this process
ends the session with the signal's exit code and the test it arrived in. Side by side
(``-n auto``) each worker process does so for its own tests; the controlling process runs
none, ends at a SIGTERM, and its workers end when they lose it.
"""

import os
import signal
import sys

import pytest
from hypothesis import HealthCheck, settings

# One thread for torch's kernels, here and in every process a test starts: the tests' tiny
# models and images spend more on sharing a kernel between threads than they gain (the
# suite ran faster on one thread than on two), and the suite runs tests side by side
# instead (`-n auto`, pytest-xdist), one process a core. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # a plugin imported it first: it read the variable already
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The property-based tests (tests/test_boundaries.py and others): in CI derandomized, so a
# run is repeatable and its time bounded; HYPOTHESIS_PROFILE=long draws many more inputs,
# at random (docs/reliability.md).
settings.register_profile(
    "ci", derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

STOPPING = (signal.SIGINT, signal.SIGTERM)
_received, _sent = os.pipe()
os.set_blocking(_received, False)
os.set_blocking(_sent, False)


def pytest_runtest_setup(item: pytest.Item) -> None:
    signal.set_wakeup_fd(_sent)  # again before each test: a library may have replaced it


def pytest_runtest_logfinish(nodeid: str, location: tuple) -> None:
    try:
        numbers = os.read(_received, 4096)
    except BlockingIOError:
        return
    stopped = [signal.Signals(number) for number in numbers if number in STOPPING]
    if stopped:
        pytest.exit(
            f"{stopped[0].name} reached the test run during {nodeid}: the run was asked to end",
            returncode=128 + stopped[0],
        )


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """``synth(config)``: the synthetic dataset of a ``SynthConfig``, written once per session
    (tests read it and never change it; one that changes data writes its own)."""
    from cnl.data.synth import generate

    made = {}

    def make(config):
        if config not in made:
            made[config] = generate(tmp_path_factory.mktemp("synth"), config)
        return made[config]

    return make


@pytest.fixture
def server():
    """A real HTTP server on 127.0.0.1 (``archives.Server``), shut down after the test."""
    from archives import Server

    running = Server()
    running.thread.start()
    yield running
    running.httpd.shutdown()
    running.httpd.server_close()
