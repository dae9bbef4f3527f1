"""Helpers for tests that start, stop and compare training runs."""

import time
from pathlib import Path

import torch

from cnl.engine import read_checkpoint


def wait_for(path: Path, process, timeout=180):
    """Until ``path`` exists; fails if ``process`` ends first or the time runs out."""
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def weights(output: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(output / "checkpoints" / "last.pt")["model"]


def assert_same_weights(a, b):
    """Bit for bit."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def tiny_run_args(data: Path, output: Path, model: str = "resnet18", *extra: str) -> list[str]:
    """``cnl train`` of ``model`` for one epoch at 32 px on the CPU, in ``output``."""
    return [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", model, "--img-size", "32",
        "--epochs", "1", "--global-batch-size", "4", "--workers", "0", "--device", "cpu", "--output", str(output),
        *extra,
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
