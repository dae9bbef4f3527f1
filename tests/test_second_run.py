"""A second run loses nothing: resuming a finished run does nothing, and an ablation run
again over its folder reuses what finished, continues what stopped and trains what is
missing, printing the same figures."""

import json
import shutil
from pathlib import Path

import pytest

from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from runs import assert_same_weights, weights

TINY = SynthConfig(classes=3, train_per_class=4, test_per_class=2, image_size=40, seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth"), TINY)


def recipe(data: Path, output: Path) -> list[str]:
    return [
        "--data-root", str(data), "--dataset", "cub", "--img-size", "32", "--epochs", "2", "--warmup-epochs", "1",
        "--batch-size", "4", "--lr", "0.01", "--lr-steps", "1", "--workers", "0", "--device", "cpu", "--seed", "2",
        "--deterministic", "--width", "16", "--output", str(output),
    ]  # fmt: skip


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def table(out: str) -> str:
    """The ablation's table and verdicts, as printed."""
    return out[out.index("| model |") : out.index("\nwrote ")].strip() + "\n"


def test_resuming_a_finished_run_does_nothing_and_changes_no_file(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet18", *recipe(data, run)]) == 0
    capsys.readouterr()
    before = snapshot(run)
    summary = json.loads((run / "summary.json").read_text())
    for resume in ("auto", str(run / "checkpoints" / "last.pt")):
        assert main(["train", "--model", "resnet18", *recipe(data, run), "--resume", resume]) == 0
        out = capsys.readouterr().out
        assert "last.pt: finished at epoch 2 of 2: nothing to do" in out
        assert json.loads(out[out.index("{") :]) == summary
        assert snapshot(run) == before
    # Killed after its last checkpoint, before its summary: the resumed run writes the whole summary.
    (run / "summary.json").unlink()
    assert main(["train", "--model", "resnet18", *recipe(data, run), "--resume", "auto"]) == 0
    again = json.loads((run / "summary.json").read_text())
    for key in ("best_top1", "best_top5", "final_top1", "final_top5", "train_images_per_s", "best_epoch", "params"):
        assert again[key] == summary[key] is not None, key


@pytest.fixture(scope="module")
def ablation(data, tmp_path_factory):
    """An ablation of two models over two seeds, and what it printed."""
    output = tmp_path_factory.mktemp("ablation") / "ablation"
    args = ["ablate", "--models", "resnet18,resnet18_cnl5", "--seeds", "0,1", *recipe(data, output)]
    assert main(args) == 0
    return args, output


def test_an_ablation_run_again_reuses_every_finished_run(ablation, capsys):
    args, output = ablation
    capsys.readouterr()
    before = snapshot(output)
    first_table = (output / "ablation.md").read_text()
    assert main(args) == 0
    out = capsys.readouterr().out
    for run in ("resnet18/seed0", "resnet18_cnl5/seed0", "resnet18/seed1", "resnet18_cnl5/seed1"):
        assert f"reusing {output / run}: the same settings, finished at epoch 2" in out
    assert table(out) == first_table  # the same figures, speeds included
    assert {k: v for k, v in snapshot(output).items() if not k.startswith("ablation.")} == {
        k: v for k, v in before.items() if not k.startswith("ablation.")
    }
    assert main([*args, "--set", "resume=auto"]) == 0  # as asked for by hand: the same
    assert table(capsys.readouterr().out) == first_table


def test_an_interrupted_ablation_continues_exactly_and_trains_what_is_missing(ablation, tmp_path, capsys):
    args, output = ablation
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    args = [*args[: args.index("--output")], "--output", str(copy)]
    finished = weights(copy / "resnet18_cnl5" / "seed1")
    first_table = (copy / "ablation.md").read_text()
    # resnet18_cnl5/seed1 stopped after epoch 1 (its previous checkpoint), resnet18/seed1 never started.
    stopped = copy / "resnet18_cnl5" / "seed1"
    (stopped / "checkpoints" / "last-prev.pt").replace(stopped / "checkpoints" / "last.pt")
    (stopped / "summary.json").unlink()
    shutil.rmtree(copy / "resnet18" / "seed1")
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"continuing {stopped}: the same settings, stopped at epoch 1, step 0" in out
    assert f"reusing {copy / 'resnet18' / 'seed0'}" in out and f"{copy / 'resnet18' / 'seed1'}" not in out.split("|")[0]
    assert_same_weights(weights(stopped), finished)
    rows = json.loads((copy / "ablation.json").read_text())["rows"]
    original = json.loads((output / "ablation.json").read_text())["rows"]
    for row, was in zip(rows, original):
        assert [s["top1"] for s in row["per_seed"]] == [s["top1"] for s in was["per_seed"]]
    assert table(out).split("| GMACs")[0] == first_table.split("| GMACs")[0]


def test_a_folder_holding_a_run_of_other_settings_is_refused_and_kept(ablation, capsys):
    args, output = ablation
    before = snapshot(output)
    capsys.readouterr()
    assert main([*args, "--lr", "0.02"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cnl ablate: error: {output / 'resnet18' / 'seed0'} holds a run of other settings (lr: ")
    assert "0.01 there, 0.02 here): give another --output, or remove that folder" in err and len(err) <= 300
    assert snapshot(output) == before
