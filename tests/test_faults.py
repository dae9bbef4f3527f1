"""Faults lose nothing: full disks, damaged checkpoints, two runs in one folder, chaos."""

import os
import resource
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from cnl.engine import CheckpointError, read_checkpoint
from cnl.engine.checkpoint import read_for_resume, save_checkpoint
from runs import assert_same_weights, deterministic_run_args, lock_free, wait_for, wait_until, weights

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

pytestmark = pytest.mark.slow  # full disks, locks and chaos: runs in child processes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth"), SynthConfig(classes=4, train_per_class=4, test_per_class=2))


def train_args(data, output, epochs=2, *extra):
    return deterministic_run_args(data, output, *extra, epochs=epochs, seed=2)


def cnl(*args, limit_bytes=None):
    """``cnl ARGS`` in a process of its own, with a file size limit (a full disk) if given."""

    def limit():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        [sys.executable, "-m", "cnl", *args], capture_output=True, text=True, env=ENV, preexec_fn=limit, timeout=300
    )


def no_temporaries(output: Path) -> bool:
    return not [p for p in output.rglob("*") if p.name.endswith((".tmp", ".prev"))]


def size_limits(checkpoint: Path) -> dict[str, int]:
    """File sizes at which a checkpoint like ``checkpoint`` stops growing: inside its pickled
    header, inside its tensor data, in its last bytes (the zip's central directory)."""
    with zipfile.ZipFile(checkpoint) as archive:
        header = next(info for info in archive.infolist() if info.filename.endswith("data.pkl"))
        directory = archive.start_dir  # the central directory: the last thing the zip writer writes
    size = checkpoint.stat().st_size
    return {
        "header": header.header_offset + header.compress_size // 2,
        "tensors": size // 2,
        "last bytes": directory + (size - directory) // 2,
    }


@pytest.fixture(scope="module")
def one_epoch(data, tmp_path_factory):
    """A run of one epoch, trained once; each test resumes a copy of it."""
    output = tmp_path_factory.mktemp("one_epoch") / "run"
    assert main(train_args(data, output, 1)) == 0
    return output


@pytest.mark.parametrize("where", ["header", "tensors", "last bytes"])
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_where(one_epoch, tmp_path, where):
    output = tmp_path / "run"
    shutil.copytree(one_epoch, output)
    last = output / "checkpoints" / "last.pt"
    before = last.read_bytes()
    # The next checkpoint cannot be written: files may not grow past this point of one.
    limit = size_limits(last)[where]
    assert limit > (output / "config.yaml").stat().st_size  # the checkpoint is the first file to reach it
    done = cnl("train", "--resume", "--output", str(output), "--epochs", "2", limit_bytes=limit)
    assert done.returncode == 2, done.stderr[-3000:]
    message = [line for line in done.stderr.splitlines() if line.startswith("cnl train: error: ")]  # not warnings
    assert "Traceback" not in done.stderr
    assert len(message) == 1 and "cannot write checkpoint" in message[0] and "File too large" in message[0]
    assert "is intact" in message[0] and str(output / "checkpoints") in message[0]
    assert last.read_bytes() == before and no_temporaries(output)
    assert main(["train", "--resume", "--output", str(output), "--epochs", "2"]) == 0
    assert read_checkpoint(last)["epoch"] == 2


@pytest.fixture(scope="module")
def three_epochs(data, tmp_path_factory):
    output = tmp_path_factory.mktemp("straight")
    assert main(train_args(data, output, 3)) == 0
    return output


def damage(path: Path, how: str) -> None:
    content = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(content[: len(content) // 2])
    else:  # one flipped bit inside the tensors, where the zip format itself checks nothing
        content[len(content) * 3 // 5] ^= 0x10
        path.write_bytes(bytes(content))


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(data, three_epochs, tmp_path, capsys, how):
    output = tmp_path / "run"
    assert main(train_args(data, output, 2)) == 0
    checkpoints = output / "checkpoints"
    assert read_checkpoint(checkpoints / "last-prev.pt")["epoch"] == 1  # rotated at every save
    damage(checkpoints / "last.pt", how)
    with pytest.raises(CheckpointError, match="damaged|truncated"):
        read_checkpoint(checkpoints / "last.pt")
    capsys.readouterr()
    assert main(["train", "--resume", "--output", str(output), "--epochs", "3"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and f"resuming from {checkpoints / 'last-prev.pt'}" in warning[0]
    assert (checkpoints / "last.pt.damaged").exists()
    assert_same_weights(weights(three_epochs), weights(output))  # epoch 2 trained again, exactly


def test_two_damaged_checkpoints_are_named_and_nothing_is_overwritten(data, tmp_path, capsys):
    output = tmp_path / "run"
    assert main(train_args(data, output, 2)) == 0
    checkpoints = output / "checkpoints"
    damage(checkpoints / "last.pt", "bit-flipped")
    damage(checkpoints / "last-prev.pt", "truncated")
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", "--output", str(output), "--epochs", "3"]) == 2
    error = capsys.readouterr().err
    assert "both checkpoints are damaged" in error and "last.pt" in error and "last-prev.pt" in error
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before
    with pytest.raises(CheckpointError, match="both checkpoints are damaged"):
        read_for_resume(checkpoints / "last.pt")


def test_a_failed_write_removes_its_temporary_file(tmp_path, monkeypatch):
    import torch

    path = save_checkpoint({"model": {"w": torch.zeros(3)}, "model_name": "x"}, tmp_path / "last.pt")
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {path}: No space left on device"):
        save_checkpoint({"model": {"w": torch.ones(3)}, "model_name": "x"}, path, keep_previous=True)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_one_run_per_folder_and_a_killed_runs_lock_is_taken_over(data, tmp_path, capsys):
    output = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "cnl", *train_args(data, output, 200)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    wait_for(output / "checkpoints" / "last.pt", first)
    capsys.readouterr()
    assert main(train_args(data, output, 2)) == 2
    assert f"{output} is in use by another cnl train (pid {first.pid})" in capsys.readouterr().err
    first.kill()
    first.communicate()
    wait_until(lock_free(output / ".lock"), None, "free lock")
    # A new run into the folder (the killed one had another length).
    assert main(train_args(data, output, 2)) == 0
    assert f"taking over the lock of process {first.pid}, which has ended" in capsys.readouterr().err
    assert (output / ".lock").read_text() == ""  # a clean end leaves nothing to take over


def test_chaos_stops_lose_nothing(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "chaos.py"), "--kills", "4", "--epochs", "4", "--seed", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=ENV, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["stop 1", "stop 2", "stop 3", "stop 4"]
    assert "weights bit-identical to the uninterrupted run" in lines[-1]
    print(done.stdout)  # the kill log, shown with pytest -s


def test_temporary_files_of_a_run_killed_mid_write_are_removed(data, tmp_path):
    output = tmp_path / "run"
    assert main(train_args(data, output, 1)) == 0
    checkpoints = output / "checkpoints"
    (checkpoints / ".last.pt.k2j4x.tmp").write_bytes(b"half a checkpoint")  # as SIGKILL inside a save leaves it
    (checkpoints / ".last.pt.k2j4x.tmp.prev").write_bytes(b"")
    assert main(["train", "--resume", "--output", str(output), "--epochs", "2"]) == 0
    assert no_temporaries(output)
