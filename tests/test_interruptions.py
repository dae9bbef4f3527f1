"""A run stopped any way continues exactly: SIGINT and SIGTERM save at a step, kill -9 loses
at most the epoch in progress (loader workers too), Ctrl-C during set-up and a second Ctrl-C
end at once, one run trains in a folder, and random stops (chaos) lose nothing."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data._utils import signal_handling

from cnl.cli import main
from cnl.engine import read_checkpoint
from cnl.engine.distributed import Context
from cnl.engine.loaders import eval_loader, train_loader
from runs import (
    ODD,
    assert_same_weights,
    deterministic_run_args,
    epochs_done,
    epochs_logged,
    lock_free,
    wait_for,
    wait_until,
    weights,
)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the same threads as this process: the same sums


@pytest.fixture(scope="module")
def data(synth):
    return synth(ODD)


def train_args(data, output, *extra, epochs=6, workers=0):
    return deterministic_run_args(data, output, *extra, epochs=epochs, workers=workers)


def start(command, env=ENV):
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def cnl_process(*args):
    return start([sys.executable, "-m", "cnl", *args])


def wait_for_line(lines: queue.Queue, text: str, process, timeout=60) -> str:
    """What ``lines`` held up to and with the first line containing ``text``."""
    seen = []
    while not seen or text not in seen[-1]:
        try:
            seen.append(lines.get(timeout=timeout))
        except queue.Empty:
            pytest.fail(
                f"no line with {text!r} within {timeout} s (exit code {process.poll()}): {''.join(seen)[-2000:]}"
            )
    return "".join(seen)


def iter_queue(lines: queue.Queue):
    while not lines.empty():
        yield lines.get()


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """Six epochs uninterrupted: the reference every stopped and resumed run must equal."""
    output = tmp_path_factory.mktemp("straight")
    assert main(train_args(data, output)) == 0
    return output


def test_signal_saves_and_resume_ends_with_the_same_weights(data, straight, tmp_path):
    # SIGTERM takes the same handler: tests/test_distributed.py stops two processes with it
    # mid-epoch, and the set-up test below checks its exit status.
    output = tmp_path / "run"
    process = cnl_process(*train_args(data, output))
    wait_for(output / "metrics.jsonl", process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "SIGINT received: stopping after this step; send it again to stop at once" in err
    assert "SIGINT received: stopped at epoch" in err and "continue with --resume" in err
    state = read_checkpoint(output / "checkpoints" / "last.pt")
    assert 1 <= state["epoch"] < 6 and "step" in state
    assert main(["train", "--resume", "--output", str(output)]) == 0
    assert_same_weights(weights(straight), weights(output))
    assert [json.loads(line)["epoch"] for line in (output / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]


def test_loader_workers_outlive_a_stop_sent_while_they_start(monkeypatch):
    """torchrun stops a group by signalling each worker's process group, loader workers
    included; one just started has torch's SIGTERM handler (fatal unless its parent sent it)
    before it runs ``worker_init_fn``. The run must still stop cleanly: no worker dies."""
    starting = signal_handling._set_worker_signal_handlers

    def stopped_while_starting(*args):
        starting(*args)
        os.kill(os.getpid(), signal.SIGTERM)  # what torchrun's killpg sends a worker
        os.kill(os.getpid(), signal.SIGINT)  # and a Ctrl-C at the terminal

    monkeypatch.setattr(signal_handling, "_set_worker_signal_handlers", stopped_while_starting)  # forked workers
    images = [(torch.full((1,), float(k)), k) for k in range(8)]
    ctx = Context(0, 1, torch.device("cpu"))
    loaders = train_loader(images, 0, 0, 0, 4, 4, 2, ctx), eval_loader(images, 4, 2, ctx)
    assert [sorted(torch.cat([labels for _, labels in loader]).tolist()) for loader in loaders] == [[*range(8)]] * 2


def test_loaders_without_signal_masks_still_load(monkeypatch):
    monkeypatch.delattr(signal, "pthread_sigmask")  # as on Windows
    images = [(torch.full((1,), float(k)), k) for k in range(8)]
    loader = eval_loader(images, 4, 2, Context(0, 1, torch.device("cpu")))
    assert sorted(torch.cat([labels for _, labels in loader]).tolist()) == [*range(8)]


@pytest.mark.slow
def test_kill_9_with_loader_workers_leaves_the_last_complete_checkpoint_and_resumes_bit_identical(
    data, straight, tmp_path
):
    # The reference trained without workers: a draw depends on the seed, the epoch and the
    # position only (tests/test_distributed.py), so workers change nothing.
    output = tmp_path / "run"
    process = cnl_process(*train_args(data, output, workers=2))
    wait_until(epochs_done(output, 2), process, "second epoch")  # in the third, its workers loading
    process.kill()
    process.communicate()
    state = read_checkpoint(output / "checkpoints" / "last.pt")  # complete, whatever the moment
    assert 1 <= state["epoch"] < 6
    assert main(["train", "--resume", "--output", str(output)]) == 0
    assert_same_weights(weights(straight), weights(output))
    assert epochs_logged(output) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_during_set_up_exits_within_a_second_in_one_line(data, tmp_path, number):
    output = tmp_path / "run"
    # ResNet-152's initialisation keeps set-up busy for a few seconds.
    process = cnl_process(*train_args(data, output, "--model", "resnet152_cnl5", epochs=3, workers=2))
    assert "global batch 4" in process.stdout.readline()  # set-up has begun
    sent = time.monotonic()
    process.send_signal(number)
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - sent < 1.0
    assert process.returncode == 128 + number
    assert err.strip() == f"cnl train: {number.name} during set-up: stopped; no checkpoint was written"
    assert not (output / "checkpoints").exists()


@pytest.mark.slow
def test_a_second_ctrl_c_during_training_exits_at_once(data, tmp_path):
    output = tmp_path / "run"
    process = cnl_process(
        *train_args(data, output, "--img-size", "96", "--model", "resnet50_cnl5", epochs=50, workers=2)
    )
    wait_for(output / "checkpoints" / "last.pt", process)
    before = read_checkpoint(output / "checkpoints" / "last.pt")
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True)
    reader.start()
    process.send_signal(signal.SIGINT)
    # Two signals within one long C call (a backward) reach Python's handler once: the
    # second is sent when the first has been handled, as a person presses Ctrl-C again.
    err = wait_for_line(lines, "cnl train: SIGINT received: stopping after this step; send it again", process)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    reader.join(timeout=30)
    err += "".join(iter_queue(lines))
    # Python runs a handler between bytecodes: the backward in progress ends first, then the
    # interpreter exits: over a second on a busy 2-core machine. The last line below says
    # which way it stopped; the bound says it did not train on.
    assert time.monotonic() - sent < 3.0
    assert process.returncode == 130
    assert err.strip().splitlines()[-1].startswith("cnl train: SIGINT again: stopped at once")
    after = read_checkpoint(output / "checkpoints" / "last.pt")  # complete
    assert (after["epoch"], after["step"]) == (before["epoch"], before["step"]) or after["epoch"] > before["epoch"]
    assert not list((output / "checkpoints").glob("*.tmp"))


@pytest.mark.slow
def test_one_run_per_folder_and_a_killed_runs_lock_is_taken_over(data, tmp_path, capsys):
    output = tmp_path / "run"
    first = cnl_process(*train_args(data, output, epochs=200))
    wait_for(output / "checkpoints" / "last.pt", first)
    capsys.readouterr()
    assert main(train_args(data, output, epochs=2)) == 2
    assert f"{output} is in use by another cnl train (pid {first.pid})" in capsys.readouterr().err
    first.kill()
    first.communicate()
    wait_until(lock_free(output / ".lock"), None, "free lock")
    # A new run into the folder (the killed one had another length).
    assert main(train_args(data, output, epochs=2)) == 0
    assert f"taking over the lock of process {first.pid}, which has ended" in capsys.readouterr().err
    assert (output / ".lock").read_text() == ""  # a clean end leaves nothing to take over


@pytest.mark.slow
def test_chaos_stops_lose_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "chaos.py"), "--kills", "2", "--epochs", "4", "--seed", "2",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=ENV, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["stop 1", "stop 2"]
    assert "weights bit-identical to the uninterrupted run" in lines[-1]
    print(done.stdout)  # the kill log, shown with pytest -s
