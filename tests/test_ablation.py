"""Multi-seed ablations: per-seed values, mean and sd, paired differences with Student-t intervals."""

import json

import pytest

from cnl.analysis.ablation import format_ablation, mean_and_interval, summarise, verdict
from cnl.analysis.report import build_report
from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from cnl.engine import make_config


def test_student_t_interval_of_the_mean():
    result = mean_and_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / 3**0.5  # t(0.975, 2 degrees of freedom) x sd 1 / sqrt(3)
    assert (result["mean"], result["std"]) == (2.0, 1.0)
    assert (result["low"], result["high"]) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert mean_and_interval([5.0]) == {"mean": 5.0, "std": None, "low": None, "high": None}


def per_seed(top1s, top5=90.0):
    return [
        {"seed": s, "run": f"m/seed{s}", "top1": t, "top5": top5, "best_epoch": 3, "final_top1": t,
         "train_images_per_s": 10.0, "params": 1000, "classes": 4}
        for s, t in enumerate(top1s)
    ]  # fmt: skip


def test_differences_are_paired_by_seed_and_judged_against_their_interval():
    config = make_config({"data_root": "x", "img_size": 32})
    # The second model is better by exactly 2 points on every seed, though its seeds spread by 10.
    rows = summarise(config, {"resnet18": per_seed([50, 60, 70]), "resnet18_cnl5": per_seed([52, 62, 72])})
    assert rows[1]["diff_top1"] == {"mean": 2.0, "std": 0.0, "low": 2.0, "high": 2.0}
    assert rows[1]["top1_std"] == 10.0 and [r["top1"] for r in rows[1]["per_seed"]] == [52, 62, 72]
    assert verdict(rows[1], "resnet18").endswith("better, beyond the 95 % interval.")
    noisy = summarise(config, {"resnet18": per_seed([50, 60, 70]), "resnet18_nl5": per_seed([53, 58, 71])})
    assert verdict(noisy[1], "resnet18").endswith("the interval includes 0, no difference shown.")
    table = format_ablation(noisy, config, [0, 1, 2])
    assert "| resnet18 | 60.00 ± 10.00 | 90.00 ± 0.00 | - |" in table
    assert "| resnet18_nl5 | 60.67 ± 9.29 |" in table and "+0.67 [" in table
    assert "mean ± sd over seeds 0, 1, 2" in table and "best test epoch (optimistic" in table


def test_ablate_over_two_seeds_keeps_every_run_and_reports_error_bars(tmp_path, capsys):
    data = generate(tmp_path / "data", SynthConfig(classes=4, train_per_class=4, test_per_class=2, image_size=40))
    output = tmp_path / "ablation"
    args = [
        "ablate", "--models", "resnet18,resnet18_cnl5", "--seeds", "0,1", "--data-root", str(data),
        "--dataset", "cub", "--img-size", "32", "--epochs", "1", "--global-batch-size", "8", "--workers", "0",
        "--device", "cpu", "--output", str(output),
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "±" in out and "resnet18_cnl5: " in out and "against resnet18" in out
    record = json.loads((output / "ablation.json").read_text())
    assert record["seeds"] == [0, 1]
    for row in record["rows"]:
        assert [r["seed"] for r in row["per_seed"]] == [0, 1]
        assert all((output / run / "checkpoints" / "best.pt").is_file() for run in row["runs"])
        assert row["top1"] == pytest.approx(sum(r["top1"] for r in row["per_seed"]) / 2)
    assert record["rows"][1]["diff_top1"]["low"] is not None
    report = build_report([output], tmp_path / "report", images=1)
    page = report.read_text()
    assert "mean ± sd over seeds" in page and "resnet18_cnl5/seed1" in page
    assert (tmp_path / "report" / "ablation.png").is_file()


def test_a_single_seed_says_no_interval_can_be_given(tmp_path, capsys):
    config = make_config({"data_root": "x", "img_size": 32})
    rows = summarise(config, {"resnet18": per_seed([50]), "resnet18_nl5": per_seed([54])})
    assert rows[1]["diff_top1"]["low"] is None
    table = format_ablation(rows, config)
    assert "| +4.00 |" in table and "one seed, so no interval can be given" in table


def test_the_same_ablation_twice_gives_the_same_table(tmp_path, capsys):
    data = generate(tmp_path / "data", SynthConfig(classes=3, train_per_class=4, test_per_class=3, image_size=40))
    tables = []
    config = make_config({"data_root": str(data), "img_size": 32})
    for attempt in ("first", "second"):
        args = [
            "ablate", "--models", "resnet18,resnet18_nl5", "--seeds", "0,1", "--data-root", str(data),
            "--dataset", "cub", "--img-size", "32", "--epochs", "2", "--global-batch-size", "4", "--workers", "2",
            "--device", "cpu", "--deterministic", "--output", str(tmp_path / attempt),
        ]  # fmt: skip
        assert main(args) == 0
        capsys.readouterr()
        rows = json.loads((tmp_path / attempt / "ablation.json").read_text())["rows"]
        tables.append(format_ablation(rows, config, [0, 1], timing=False))
        for row in rows:
            row.pop("train_images_per_s")
            for run in row["per_seed"]:
                run.pop("train_images_per_s")
        tables.append(rows)
    assert tables[0] == tables[2] and tables[1] == tables[3]
