"""Reliability: interruptions, hostile or broken checkpoints, NaN losses, bad data, fuzzed metadata."""

import json
import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnl.cli import main
from cnl.data.datasets import LayoutError, build_dataset
from cnl.data.synth import SynthConfig, generate
from cnl.engine import CheckpointError, load_model, read_checkpoint
from runs import assert_same_weights, epochs_done, wait_for, wait_until, weights

TINY = SynthConfig(classes=4, train_per_class=5, test_per_class=2, image_size=40, seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth"), TINY)


def train_args(data, output, epochs=6, *extra):
    return [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", "resnet18_cnl5", "--img-size", "32",
        "--epochs", str(epochs), "--warmup-epochs", "1", "--batch-size", "4", "--lr", "0.01", "--lr-steps", "4",
        "--workers", "0", "--device", "cpu", "--seed", "7", "--output", str(output), *extra,
    ]  # fmt: skip


def start(args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the same threads as this process: same sums
    return subprocess.Popen(
        [sys.executable, "-m", "cnl.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    output = tmp_path_factory.mktemp("straight")
    assert main(train_args(data, output, 6, "--deterministic")) == 0
    return output


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_resume_ends_with_the_same_weights(data, straight, tmp_path, number):
    output = tmp_path / "run"
    process = start(train_args(data, output, 6, "--deterministic"))
    wait_for(output / "metrics.jsonl", process)
    process.send_signal(number)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + number, err[-2000:]
    assert f"{number.name} received: stopped at epoch" in err and "continue with --resume" in err
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


def test_kill_9_leaves_the_last_complete_checkpoint(data, straight, tmp_path):
    output = tmp_path / "run"
    process = start(train_args(data, output, 6, "--deterministic"))
    wait_until(epochs_done(output, 2), process, "second epoch")  # in the third epoch, soon to write a checkpoint
    process.kill()
    process.wait()
    state = read_checkpoint(output / "checkpoints" / "last.pt")  # complete, whatever the moment
    assert state["epoch"] >= 1
    assert main(["train", "--resume", "--output", str(output)]) == 0
    assert_same_weights(weights(straight), weights(output))


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
    for evil in (path, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError, match="refusing .*could run code"):
            load_model(evil)
        assert main(["eval", "--checkpoint", str(evil)]) == 2
    assert not (tmp_path / "PWNED").exists()


def test_truncated_foreign_and_mismatched_checkpoints(data, straight, tmp_path, capsys):
    good = straight / "checkpoints" / "last.pt"
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


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_checkpoint(data, tmp_path, capsys, monkeypatch):
    output = tmp_path / "nan"
    assert main(train_args(data, output, 1)) == 0
    before = weights(output)
    calls = []
    original = torch.nn.CrossEntropyLoss.forward

    def poisoned(self, logits, labels):
        calls.append(1)
        loss = original(self, logits, labels)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    assert main(["train", "--resume", "--output", str(output), "--epochs", "3"]) == 3
    assert "the training loss is nan at epoch 2, step 3" in capsys.readouterr().err
    assert_same_weights(before, weights(output))


def test_bad_metadata_stops_before_training(data, tmp_path, capsys):
    broken = tmp_path / "broken"
    generate(broken, SynthConfig(classes=3, train_per_class=2, test_per_class=1, image_size=40))
    victim = sorted((broken / "images").rglob("*.jpg"))[0]
    victim.unlink()
    assert main(train_args(broken, tmp_path / "run", 1)) == 2
    assert f"images.txt, image 1: {victim}" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
    # An empty class: every training image of class 2 marked as test.
    generate(broken, SynthConfig(classes=3, train_per_class=2, test_per_class=1, image_size=40))
    ids = [
        line.split()[0] for line in (broken / "image_class_labels.txt").read_text().splitlines() if line.endswith(" 2")
    ]
    split = [
        f"{i} 0" if i in ids else line
        for line in (broken / "train_test_split.txt").read_text().splitlines()
        for i in [line.split()[0]]
    ]
    (broken / "train_test_split.txt").write_text("\n".join(split) + "\n")
    assert main(train_args(broken, tmp_path / "run2", 1)) == 2
    assert "classes without training images" in capsys.readouterr().err


def test_unreadable_training_images_are_skipped_counted_and_listed(data, tmp_path):
    copy = tmp_path / "data"
    generate(copy, SynthConfig(classes=3, train_per_class=3, test_per_class=1, image_size=40))
    bad = sorted((copy / "images").rglob("*0000.jpg"))[0]
    bad.write_bytes(b"not a jpeg")
    assert main(train_args(copy, tmp_path / "run", 1)) == 0
    assert (tmp_path / "run" / "skipped.txt").read_text().split("\t")[0] == str(bad)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_images"] == 1


def test_impossible_settings_are_rejected_before_any_work(data, tmp_path, capsys):
    for flag, value, message in [
        ("--lr", "-1", "lr must be a finite number > 0, got -1"),
        ("--batch-size", "0", "batch_size must be an integer >= 1, got 0"),
        ("--img-size", "16", r"img_size must be an integer in \[32, 4096\], got 16"),
        ("--model", "resnet51", "unknown model 'resnet51'; did you mean resnet50"),
        ("--dataset", "birds", "unknown dataset 'birds'.*cub, dogs"),
        ("--query", "layer9.0", "unknown query.*valid layer names"),
    ]:
        output = tmp_path / flag.strip("-")
        assert main([*train_args(data, output, 1), flag, value]) == 2
        import re

        assert re.search(message, capsys.readouterr().err)
        assert not (output / "checkpoints").exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300), layout=st.sampled_from(["list", "cub", "aircraft", "dogs"]))
def test_fuzzed_metadata_gives_clear_errors_only(tmp_path_factory, content, layout):
    root = tmp_path_factory.mktemp("fuzz")
    files = {
        "list": ["train.txt", "test.txt"],
        "cub": ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"],
        "aircraft": ["data/variants.txt", "data/images_variant_trainval.txt"],
        "dogs": ["lists/train_list.mat"],
    }[layout]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    (root / "Images").mkdir(exist_ok=True)
    try:
        dataset = build_dataset(layout, root, "train")
    except (LayoutError, ValueError, FileNotFoundError):
        return
    assert all(0 <= label < len(dataset.classes) for _, label in dataset.samples)


def test_a_list_entry_pointing_at_no_file_names_the_list_and_line(tmp_path, capsys):
    from layouts import write_list

    root = write_list(tmp_path / "lists")
    (root / "train.txt").write_text((root / "train.txt").read_text() + "images/class 1/gone.jpg 1\n")
    assert (
        main(
            [
                "train",
                "--data-root",
                str(root),
                "--dataset",
                "list",
                "--img-size",
                "32",
                "--output",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert f"{root / 'train.txt'}, line 5: {root / 'images/class 1/gone.jpg'}" in capsys.readouterr().err
