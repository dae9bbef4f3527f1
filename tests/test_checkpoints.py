"""Checkpoints lose nothing: written atomically (the umask's modes, a synced rename, no
temporary file left), a full disk keeps the previous one, a damaged one falls back to the one
before or is named, one that would run code is refused, and earlier formats load and resume."""

import contextlib
import os
import pickle
import resource
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from cnl.engine import CheckpointError, load_model, read_checkpoint
from cnl.engine.checkpoint import read_for_resume, save_checkpoint
from runs import NARROW, ODD, assert_same_weights, deterministic_run_args, epochs_logged, eval_json, weights


@pytest.fixture(scope="module")
def data(synth):
    return synth(SynthConfig(classes=4, train_per_class=4, test_per_class=2))


def train_args(data, output, epochs=2, *extra):
    return deterministic_run_args(data, output, *NARROW, *extra, epochs=epochs, seed=2)


@contextlib.contextmanager
def full_disk(limit_bytes: int):
    """No file of this process may grow past ``limit_bytes``: writes fail as on a full disk
    (EFBIG; Python ignores the SIGXFSZ that would otherwise end the process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


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


# --- a full disk, damage -------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "tensors", "last bytes"])
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_where(one_epoch, tmp_path, where, capsys):
    output = tmp_path / "run"
    shutil.copytree(one_epoch, output)
    last = output / "checkpoints" / "last.pt"
    before = last.read_bytes()
    # The next checkpoint cannot be written: files may not grow past this point of one.
    limit = size_limits(last)[where]
    assert limit > (output / "config.yaml").stat().st_size  # the checkpoint is the first file to reach it
    capsys.readouterr()
    with full_disk(limit):
        code = main(["train", "--resume", "--output", str(output), "--epochs", "2"])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    message = [line for line in err.splitlines() if line.startswith("cnl train: error: ")]  # not warnings
    assert "Traceback" not in err
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_temporary_files_of_a_run_killed_mid_write_are_removed(data, tmp_path):
    output = tmp_path / "run"
    assert main(train_args(data, output, 1)) == 0
    checkpoints = output / "checkpoints"
    (checkpoints / ".last.pt.k2j4x.tmp").write_bytes(b"half a checkpoint")  # as SIGKILL inside a save leaves it
    (checkpoints / ".last.pt.k2j4x.tmp.prev").write_bytes(b"")
    assert main(["train", "--resume", "--output", str(output), "--epochs", "2"]) == 0
    assert no_temporaries(output)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoints_follow_the_umask_and_the_rename_is_synced(tmp_path, monkeypatch, umask):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real_fsync(fd)))
    previous = os.umask(umask)
    try:
        path = save_checkpoint({"model": {}, "model_name": "resnet18"}, tmp_path / "last.pt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [stat.S_ISREG(m) for m in synced] == [True, False] and stat.S_ISDIR(synced[1])


# --- hostile, foreign and earlier checkpoints -----------------------------------------


class RunsCode:
    """Unpickling this calls os.system: a checkpoint that would run code."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as file:
        pickle.dump({"model": RunsCode(), "model_name": "resnet18"}, file)
    torch.save({"model": {}, "model_name": "resnet18", "payload": RunsCode()}, tmp_path / "evil2.pt")
    for evil, refused in ((path, "Unsupported operand"), (tmp_path / "evil2.pt", "unsupported GLOBAL posix.system")):
        with pytest.raises(CheckpointError, match=f"refusing .*could run code \\(.*{refused}") as error:
            load_model(evil)
        assert "Weights only load failed" not in str(error.value)  # torch's reason, not its advice
        assert main(["eval", "--checkpoint", str(evil)]) == 2
    assert not (tmp_path / "PWNED").exists()


def test_truncated_foreign_and_mismatched_checkpoints(one_epoch, tmp_path, capsys):
    good = one_epoch / "checkpoints" / "last.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        read_checkpoint(truncated)
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a cnl training checkpoint"):
        read_checkpoint(plain)
    other = read_checkpoint(good)
    other["model_name"] = "resnet34_cnl5"
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not fit resnet34_cnl5"):
        load_model(tmp_path / "other.pt")
    # Resuming on data with another number of classes.
    fewer = generate(tmp_path / "fewer", SynthConfig(classes=3, train_per_class=2, test_per_class=1, image_size=40))
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    (resumed / "checkpoints" / "last.pt").write_bytes(good.read_bytes())
    assert main(["train", "--resume", "--output", str(resumed), "--data-root", str(fewer)]) == 2
    assert "was trained on other classes (4) than" in capsys.readouterr().err


def test_checkpoints_of_the_previous_format_still_load_and_resume(synth, tmp_path, capsys):
    output = tmp_path / "run"
    assert main(deterministic_run_args(synth(ODD), output, epochs=1)) == 0
    path = output / "checkpoints" / "last.pt"
    state = read_checkpoint(path)
    # Before: a per-process batch and a boolean resume in the config, generator states, no provenance.
    config = {k: v for k, v in state.pop("config").items() if k != "global_batch_size"}
    state.pop("provenance")
    state.update(config={**config, "batch_size": 4, "resume": False}, rng={"torch": torch.get_rng_state()})
    torch.save(state, path)
    assert eval_json(capsys, path)["count"] == 15
    assert main(["train", "--resume", "--output", str(output), "--epochs", "2"]) == 0
    assert epochs_logged(output) == [1, 2]
