"""Helpers for tests that start, stop and compare training runs."""

import fcntl
import json
import time
from pathlib import Path

import torch

from cnl.data.synth import SynthConfig
from cnl.engine import read_checkpoint


def wait_until(ready, process, what: str, timeout=900):
    """Until ``ready()`` is true: an event, never a guessed time. Fails if ``process`` (if
    any) ends first or ``timeout`` seconds pass: only a guard, generous because a machine
    busy with other work makes every event late (a torchrun start and first epoch took
    more than 180 s with two busy loops beside the suite on 2 cores)."""
    deadline = time.time() + timeout
    while not ready():
        assert process is None or process.poll() is None, (what, process.communicate())
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)


def wait_for(path: Path, process, timeout=900):
    """Until ``path`` exists; fails if ``process`` ends first or the time runs out."""
    wait_until(path.exists, process, f"{path}", timeout)


def epochs_done(output: Path, count: int):
    """A condition: the run into ``output`` has logged ``count`` epochs (it is in a later one)."""

    def ready() -> bool:
        log = output / "metrics.jsonl"
        return log.exists() and log.read_text().count("\n") >= count

    return ready


def weights(output: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(output / "checkpoints" / "last.pt")["model"]


def assert_same_weights(a, b):
    """Bit for bit."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


RECORDS = Path(__file__).parent / "fixtures" / "run_records"
# 20 training images (5 optimizer steps of a global batch of 4), 15 test images: odd, so that
# processes and batches do not divide them evenly.
ODD = SynthConfig(classes=5, train_per_class=4, test_per_class=3, image_size=40, seed=2)


def epochs_logged(output: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (output / "metrics.jsonl").read_text().splitlines()]


def eval_json(capsys, checkpoint: Path, *extra: str) -> dict:
    """``cnl eval --json`` of a checkpoint, in this process: its result."""
    from cnl.cli import main

    assert main(["eval", "--checkpoint", str(checkpoint), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def epoch_line(**fields) -> str:
    """A line of metrics.jsonl as the trainer writes it (tests/fixtures/run_records), with ``fields`` replaced."""
    first = json.loads((RECORDS / "plain" / "metrics.jsonl").read_text().splitlines()[0])
    return json.dumps({**first, **fields}) + "\n"


# The tests' ResNets are a quarter of torchvision's width, as the demo's: they train, and write
# checkpoints, about 16 times faster. Tests that must stop a run mid-epoch keep the full width.
NARROW = ("--width", "16")


def tiny_run_args(data: Path, output: Path, model: str = "resnet18", *extra: str) -> list[str]:
    """``cnl train`` of ``model`` (a narrow ResNet) for one epoch at 32 px on the CPU, in ``output``."""
    return [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", model, "--img-size", "32",
        "--epochs", "1", "--global-batch-size", "4", "--workers", "0", "--device", "cpu", *NARROW,
        "--output", str(output), *extra,
    ]  # fmt: skip


def deterministic_run_args(data: Path, output: Path, *extra: str, epochs: int = 3, workers: int = 0, seed: int = 5):
    """``cnl train`` of resnet18_cnl5 at 32 px, global batch 4, ``--deterministic``: runs that
    are compared bit for bit."""
    return [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", "resnet18_cnl5", "--img-size", "32",
        "--epochs", str(epochs), "--warmup-epochs", "1", "--global-batch-size", "4", "--lr", "0.01",
        "--lr-steps", "2", "--workers", str(workers), "--device", "cpu", "--seed", str(seed), "--deterministic",
        "--output", str(output), *extra,
    ]  # fmt: skip


def lock_free(path: Path):
    """A condition: nobody holds the ``flock`` on ``path`` (a run's lock file). A killed run's
    forked loader workers hold it until they notice and exit."""

    def ready() -> bool:
        with open(path) as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(file, fcntl.LOCK_UN)
            return True

    return ready
