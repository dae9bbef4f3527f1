"""Bad input stops a run before any work, in one line naming what is wrong, or is skipped and
counted: impossible settings, broken or fuzzed metadata, unreadable images; a loss that turns
NaN stops the run with its epoch and step and keeps the last checkpoint."""

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnl.cli import main
from cnl.data.datasets import LayoutError, build_dataset
from cnl.data.synth import SynthConfig, generate
from cnl.errors import printable
from layouts import write_folder
from runs import NARROW, assert_same_weights, weights

TINY = SynthConfig(classes=4, train_per_class=5, test_per_class=2, image_size=40, seed=3)


@pytest.fixture(scope="module")
def data(synth):
    return synth(TINY)


def train_args(data, output, epochs=6, *extra):
    return [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", "resnet18_cnl5", "--img-size", "32",
        "--epochs", str(epochs), "--warmup-epochs", "1", "--batch-size", "4", "--lr", "0.01", "--lr-steps", "4",
        "--workers", "0", "--device", "cpu", "--seed", "7", *NARROW, "--output", str(output), *extra,
    ]  # fmt: skip


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


def test_a_file_name_that_breaks_lines_is_one_escaped_line_in_the_log_the_warning_and_predict(tmp_path, capsys, caplog):
    """A file may be named with a line break, a tab or a terminal command (``ESC[2J`` clears
    the screen): skipped.txt keeps one record a line, and nothing printed carries them raw."""
    root = write_folder(tmp_path / "data")
    hostile = root / "train" / "cardinal" / "bad\n\x1b[2J\t.png"
    hostile.write_bytes(b"not a png")
    argv = train_args(root, tmp_path / "run", 1)
    argv[argv.index("cub")] = "folder"
    argv[argv.index("--batch-size") + 1] = "5"  # every training image in the one step
    assert main(argv) == 0
    (warning,) = [message for message in caplog.messages if message.startswith("skipping unreadable image")]
    assert warning.startswith(f"skipping unreadable image {printable(str(hostile))}: ") and "\x1b" not in warning
    (record,) = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert record.split("\t")[0] == printable(str(hostile))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_images"] == 1
    best = str(tmp_path / "run" / "checkpoints" / "best.pt")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", best, str(root / "train"), "--workers", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "\x1b" not in "".join(lines)  # four images and the hostile file
    assert [line for line in lines if line.startswith(f"{printable(str(hostile))}: error: ")]


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
