"""Training, resuming, evaluating and predicting on generated data; the schedule; configs."""

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

import cnl
from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from cnl.engine import TrainConfig, checkpoint, load_model, make_config, read_checkpoint
from cnl.engine.config import read_yaml
from cnl.engine.schedule import build_scheduler, lr_factor
from runs import NARROW, epoch_line, eval_json

TINY = SynthConfig(classes=4, train_per_class=5, test_per_class=3, image_size=40, seed=1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth"), TINY)


def train_args(data, output, *extra):
    return [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", "resnet18_cnl5",
        "--img-size", "32", "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8",
        "--lr", "0.01", "--lr-steps", "1", "--workers", "0", "--device", "cpu", "--seed", "5", *NARROW,
        "--output", str(output), *extra,
    ]  # fmt: skip


def metrics_lines(output):
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


# --- schedule ------------------------------------------------------------------------


def test_schedule_is_the_papers():
    steps = [50, 70, 90]
    assert lr_factor(0, 10, steps) == pytest.approx(1e-3)
    assert lr_factor(5, 10, steps) == pytest.approx(1e-3 + (1 - 1e-3) / 2)
    assert [lr_factor(e, 10, steps) for e in (10, 49.99)] == [1, 1]
    assert lr_factor(50, 10, steps) == pytest.approx(0.1)
    assert lr_factor(70, 10, steps) == pytest.approx(0.01)
    assert lr_factor(109, 10, steps) == pytest.approx(0.001)
    assert lr_factor(60, 10, steps, decay=0.5) == pytest.approx(0.5)


def test_scheduler_steps_per_iteration():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = build_scheduler(optimizer, iters_per_epoch=4, warmup_epochs=2, steps=[3], decay=0.1)
    lrs = []
    for _ in range(16):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[4] == pytest.approx(0.01 * lr_factor(1, 2, [3]))  # rises within warmup
    assert lrs[8:12] == pytest.approx([0.01] * 4)
    assert lrs[12:] == pytest.approx([0.001] * 4)


# --- configuration -------------------------------------------------------------------


def test_every_preset_is_valid_and_follows_the_paper():
    presets = sorted((REPO / "configs").glob("*.yaml"))
    assert {p.stem for p in presets} >= {
        "cub_resnet50", "cub_resnet50_nl5", "cub_resnet50_cnl5", "cub_resnet101", "cub_resnet101_nl5",
        "cub_resnet101_cnl5", "dogs_resnet101_cnl5", "cars_resnet101_cnl5",
    }  # fmt: skip
    for preset in presets:
        config = make_config(read_yaml(preset))
        assert (config.img_size, config.epochs, config.warmup_epochs, config.lr) == (448, 110, 10, 0.01)
        assert config.lr_steps == [50, 70, 90] and config.crop_scale == [0.08, 1.25]
        assert config.model in cnl.list_models()


def test_flags_override_the_file_and_bad_values_are_rejected(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data-root": "x", "epochs": 3, "lr": 0.5}))
    config = make_config(read_yaml(path), {"lr": 0.1, "epochs": None})
    assert (config.epochs, config.lr, config.global_batch_size, config.batch_size) == (3, 0.1, 64, None)
    path.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match=r"unknown setting 'epoch'; did you mean epochs\?"):
        read_yaml(path)
    with pytest.raises(
        ValueError, match="batch_size must be an integer >= 1, got 0; lr must be a finite number > 0, got -1"
    ):
        make_config({"data_root": "x", "lr": -1, "batch_size": 0})
    with pytest.raises(ValueError, match=r"img_size must be an integer in \[32, 4096\], got 8"):
        TrainConfig(data_root="x", img_size=8).validate()


# --- a run: train, interrupt, resume, evaluate, predict --------------------------------


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    straight, resumed = root / "straight", root / "resumed"
    assert main(train_args(data, straight)) == 0
    # "Interrupted" after one epoch: a run told to stop there, then resumed to two.
    assert main(train_args(data, resumed, "--epochs", "1")) == 0
    original = checkpoint.read_checkpoint
    with mock.patch.object(checkpoint, "read_checkpoint", lambda path: RESUME_READS.append(path) or original(path)):
        assert main(["train", "--resume", "--output", str(resumed), "--epochs", "2"]) == 0
    return straight, resumed


RESUME_READS: list = []  # each checkpoint the resume of ``runs`` read


def test_a_resumed_run_reads_its_checkpoint_once(runs):
    """The settings and the state come from one read: cnl train resolves the resume point
    for the stored config and hands it to the run."""
    _, resumed = runs
    assert RESUME_READS == [resumed / "checkpoints" / "last.pt"]


def test_run_writes_logs_summary_and_checkpoints(runs):
    straight, _ = runs
    lines = metrics_lines(straight)
    assert [line["epoch"] for line in lines] == [1, 2]
    assert {"top1", "top5", "test_loss", "per_class_top1", "lr", "train_images_per_s"} <= set(lines[0])
    assert len(lines[0]["per_class_top1"]) == 4 and lines[0]["test_count"] == 12
    summary = json.loads((straight / "summary.json").read_text())
    assert {"best_top1", "best_top5", "best_epoch", "final_top1", "params", "train_images_per_s"} <= set(summary)
    assert summary["best_top1"] == max(line["top1"] for line in lines)
    assert summary["final_top1"] == lines[-1]["top1"]
    assert summary["params"] == sum(p.numel() for p in cnl.create_model("resnet18_cnl5", 4, width=16).parameters())
    assert any((straight / "tensorboard").iterdir())
    state = read_checkpoint(straight / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "config", "classes", "provenance"} <= set(state)
    assert state["epoch"] == 2 and state["classes"][0] == "oval plain dot"
    assert not list((straight / "checkpoints").glob("*.tmp"))


def test_resumed_run_ends_where_the_uninterrupted_one_does(runs):
    straight, resumed = runs
    assert [line["epoch"] for line in metrics_lines(resumed)] == [1, 2]
    a = read_checkpoint(straight / "checkpoints" / "last.pt")
    b = read_checkpoint(resumed / "checkpoints" / "last.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=1e-6)
    assert metrics_lines(straight)[-1]["top1"] == metrics_lines(resumed)[-1]["top1"]


def test_eval_equals_what_training_logged(runs, capsys):
    straight, _ = runs
    summary = json.loads((straight / "summary.json").read_text())
    best = eval_json(capsys, straight / "checkpoints" / "best.pt")
    assert (best["top1"], best["top5"]) == (summary["best_top1"], summary["best_top5"])
    last = eval_json(capsys, straight / "checkpoints" / "last.pt", "--batch-size", "3")
    assert last["top1"] == pytest.approx(metrics_lines(straight)[-1]["top1"])


def test_load_model_and_predict(runs, data, capsys):
    straight, _ = runs
    model, classes = load_model(straight / "checkpoints" / "best.pt")
    assert not model.training and len(classes) == 4 and model.fc.out_features == 4
    image_dir = data / "images" / "001.oval_plain_dot"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(straight / "checkpoints" / "best.pt"),
                str(image_dir),
                "--topk",
                "3",
                "--json",
            ]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 8
    for result in results:
        probabilities = [p["probability"] for p in result["predictions"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1 + 1e-6
        assert all(p["class"] == classes[p["index"]] for p in result["predictions"])
    image = sorted(image_dir.iterdir())[0]
    assert main(["predict", "--checkpoint", str(straight / "checkpoints" / "best.pt"), str(image)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and line.count(",") == 3 and any(c in line for c in classes)


def test_ablate_prints_table_2(data, tmp_path, capsys):
    args = train_args(data, tmp_path / "ablation", "--epochs", "1")
    args[args.index("--model") : args.index("--model") + 2] = []
    assert main(["ablate", "--models", "resnet18,resnet18_cnl5", *args[1:]]) == 0
    out = capsys.readouterr().out
    assert "| resnet18 |" in out and "| resnet18_cnl5 |" in out and "speed vs first" in out
    rows = json.loads((tmp_path / "ablation" / "ablation.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["resnet18", "resnet18_cnl5"]
    assert rows[1]["params"] > rows[0]["params"] and rows[1]["macs_all"] > rows[1]["macs"]


# --- distributed -------------------------------------------------------------------------


def test_demo_quick_runs_the_whole_pipeline(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "demo"), "--quick"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet18", "resnet18_nl5", "resnet18_cnl5"):
        assert f"| {name} |" in out
        for seed in (0, 1):
            assert (
                tmp_path / "demo" / "quick" / "ablation" / name / f"seed{seed}" / "checkpoints" / "best.pt"
            ).is_file()
    assert "against resnet18; " in out and "McNemar, 8 images)" in out and "Training images/s" in out
    assert "One epoch per run: nothing to say of convergence." in out  # a smoke run: one epoch
    assert "docs/synthetic.md" in out and (Path(__file__).parents[1] / "docs" / "synthetic.md").is_file()
    assert "speed vs first" not in out  # the table repeats exactly; speed is a line of its own
    assert (tmp_path / "demo" / "quick" / "data" / "synth.json").is_file()


def test_demo_convergence_names_the_run_that_moved_most(tmp_path):
    from cnl.demo import convergence

    for run, curve in {"a/seed0": [10.0, 30.0, 31.0], "a/seed1": [10.0, 29.0, 32.5]}.items():
        (tmp_path / run).mkdir(parents=True)
        lines = [epoch_line(epoch=epoch, top1=top1) for epoch, top1 in enumerate(curve, 1)]
        (tmp_path / run / "metrics.jsonl").write_text("".join(lines))
    sentence = convergence(tmp_path, [{"runs": ["a/seed0", "a/seed1"]}])
    assert "at most 3.50 points (a/seed1): still moving" in sentence
    (tmp_path / "a/seed1/metrics.jsonl").write_text(epoch_line(epoch=1, top1=31.0) + epoch_line(epoch=2, top1=32.5))
    assert "at most 1.50 points (a/seed1): flattened" in convergence(tmp_path, [{"runs": ["a/seed0", "a/seed1"]}])
