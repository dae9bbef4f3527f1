"""Validation sets: carved from the training split (stratified, seeded) or official; best.pt chosen on them."""

import json

from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from cnl.engine import read_checkpoint
from cnl.engine.randomness import validation_indices
from layouts import write_aircraft


def test_validation_indices_are_stratified_and_seeded():
    targets = [0] * 10 + [1] * 20 + [2] * 2
    chosen = validation_indices(targets, 0.2, seed=0)
    assert [targets[i] for i in chosen].count(0) == 2 and [targets[i] for i in chosen].count(1) == 4
    assert [targets[i] for i in chosen].count(2) == 1  # at least one, never the whole class
    assert chosen == validation_indices(targets, 0.2, seed=0) != validation_indices(targets, 0.2, seed=1)


def args(data, output, *extra):
    return [
        "train", "--data-root", str(data), "--model", "resnet18", "--img-size", "32", "--epochs", "3",
        "--warmup-epochs", "1", "--lr", "0.01", "--lr-steps", "2", "--workers", "0", "--device", "cpu",
        "--width", "16", "--output", str(output), *extra,
    ]  # fmt: skip


def test_a_fraction_of_the_training_split_chooses_best_pt(tmp_path):
    data = generate(tmp_path / "data", SynthConfig(classes=4, train_per_class=8, test_per_class=3, image_size=40))
    output = tmp_path / "run"
    assert main(args(data, output, "--dataset", "cub", "--val-split", "0.25", "--global-batch-size", "8")) == 0
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert all({"val_top1", "val_top5", "val_loss"} <= set(line) for line in lines)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["selection"] == "val"
    best = max(lines, key=lambda line: line["val_top1"])  # the first of equals, as training keeps it
    assert summary["best_epoch"] == best["epoch"]
    assert (summary["best_val_top1"], summary["best_top1"], summary["best_top5"]) == (
        best["val_top1"], best["top1"], best["top5"],
    )  # fmt: skip
    assert (summary["final_val_top1"], summary["final_top1"]) == (lines[-1]["val_top1"], lines[-1]["top1"])
    assert read_checkpoint(output / "checkpoints" / "best.pt")["epoch"] == best["epoch"]
    # 24 of the 32 training images remain: 3 optimizer steps of 8 per epoch.
    assert read_checkpoint(output / "checkpoints" / "last.pt")["scheduler"]["last_epoch"] == 9


def test_official_validation_split_of_fgvc_aircraft(tmp_path):
    root = write_aircraft(tmp_path / "aircraft")
    output = tmp_path / "run"
    assert main(args(root, output, "--dataset", "aircraft", "--val-split", "official", "--global-batch-size", "3")) == 0
    line = json.loads((output / "metrics.jsonl").read_text().splitlines()[0])
    assert "val_top1" in line and line["test_count"] == 3
    # Trained on the official train split alone: 3 images, one optimizer step per epoch.
    assert read_checkpoint(output / "checkpoints" / "last.pt")["scheduler"]["last_epoch"] == 3


def test_without_validation_the_choice_is_labelled_optimistic(tmp_path, capsys):
    data = generate(tmp_path / "data", SynthConfig(classes=3, train_per_class=4, test_per_class=2, image_size=40))
    assert main(args(data, tmp_path / "run", "--dataset", "cub", "--global-batch-size", "4", "--epochs", "1")) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["selection"] == "test (optimistic)"
    capsys.readouterr()
    assert main(args(data, tmp_path / "r2", "--dataset", "cub", "--val-split", "official")) == 2
    assert "cub has no official validation split" in capsys.readouterr().err
    assert main(args(data, tmp_path / "r3", "--val-split", "some")) == 2
    assert "val_split must be a fraction in (0, 1) or 'official', got 'some'" in capsys.readouterr().err
