"""`cnl bench`: every column is measured and the ratios are to the first model."""

import json

import pytest

from cnl.analysis.bench import parse_spec
from cnl.cli import main


def test_model_bench_reports_times_memory_and_ratios(capsys):
    args = ["bench", "model", "--models", "resnet18,resnet18_cnl5:paper:bmm", "--img-size", "64", "--batch-size", "2"]
    assert main([*args, "--repeats", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["resnet18", "resnet18_cnl5:paper:bmm"]
    assert rows[0]["train_ratio"] == rows[0]["memory_ratio"] == rows[0]["inference_ratio"] == 1.0
    for row in rows:
        assert row["train_step_s"] > 0 and row["inference_images_per_s"] > 0
        # Parameters, gradients and momentum alone: 3 x 4 bytes x 11.2M parameters.
        assert row["peak_memory_mb"] > 3 * 4 * 11.1e6 / 2**20
    assert rows[1]["train_ratio"] == pytest.approx(rows[1]["train_step_s"] / rows[0]["train_step_s"])


def test_module_and_input_benches(capsys):
    assert main(["bench", "module", "--img-size", "64", "--repeats", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["order"], r["kernel"]) for r in rows} == {
        ("paper", "sdpa"),
        ("paper", "bmm"),
        ("reassociated", "sdpa"),
        ("reassociated", "bmm"),
    }
    assert main(["bench", "input", "--img-size", "64", "--repeats", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["decoder"] for r in rows] == ["pil", "torchvision"] and all(r["images_per_s"] > 0 for r in rows)


def test_old_bench_spellings_work_or_name_the_subcommand(capsys):
    from cnl.cli import upgrade_argv

    assert upgrade_argv(["bench", "--models", "resnet18"]) == ["bench", "model", "--models", "resnet18"]
    assert upgrade_argv(["bench"]) == ["bench", "model"]
    assert upgrade_argv(["bench", "--help"]) == ["bench", "--help"]
    for flag, job in (("--module", "module"), ("--input", "input"), ("--predict", "predict")):
        assert main(["bench", flag, "--img-size", "64"]) == 2
        assert f"cnl bench {flag} is now a subcommand: cnl bench {job}" in capsys.readouterr().err


def test_spec_parsing():
    assert parse_spec("resnet50_cnl5") == ("resnet50_cnl5", "auto", None)
    assert parse_spec("resnet50_nl5:paper:bmm") == ("resnet50_nl5", "paper", False)
    with pytest.raises(ValueError, match="unknown attention kernel 'cuda'"):
        parse_spec("resnet50:paper:cuda")
