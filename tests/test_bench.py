"""`cnl bench`: every column is measured and the ratios are to the first model."""

import json

import pytest
import torch

from cnl.analysis import bench
from cnl.analysis.bench import parse_spec
from cnl.cli import main
from devices import DEVICES


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


def test_model_bench_takes_the_width_of_a_resnet(capsys):
    """``--width 16`` benches the demo's narrow ResNets, a sixteenth of the parameters."""
    from cnl.analysis.bench import _setup

    model, _, _ = _setup("resnet18_cnl5", img_size=32, device="cpu", width=16)
    assert model.conv1.out_channels == 16
    args = ["bench", "model", "--models", "resnet18,resnet18_cnl5", "--img-size", "32", "--width", "16"]
    assert main([*args, "--repeats", "1", "--device", "cpu"]) == 0
    assert "width=16" in capsys.readouterr().out
    assert main(["bench", "model", "--models", "timm:resnet18", "--width", "16", "--img-size", "32"]) == 2
    assert "width" in capsys.readouterr().err


def test_module_and_input_benches(capsys):
    assert main(["bench", "module", "--img-size", "64", "--repeats", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["order"], r["kernel"]) for r in rows} == {
        ("paper", "sdpa"),
        ("paper", "bmm"),
        ("reassociated", "sdpa"),
        ("reassociated", "bmm"),
    }
    # The fused rows ran a fused kernel, not the math fallback that stores the map.
    assert {r["ran"] for r in rows if r["kernel"] == "sdpa"} <= {"flash", "efficient"}
    assert {r["ran"] for r in rows if r["kernel"] == "bmm"} == {"bmm + softmax"}
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
    assert parse_spec("resnet50_cnl5") == ("resnet50_cnl5", "auto", None, False, False)
    assert parse_spec("resnet50_nl5:paper:bmm") == ("resnet50_nl5", "paper", False, False, False)
    assert parse_spec("resnet50_cnl5+compile") == ("resnet50_cnl5", "auto", None, True, False)
    assert parse_spec("tv:resnet50_cnl5:paper+compile") == ("tv:resnet50_cnl5", "paper", None, True, False)
    with pytest.raises(ValueError, match="unknown attention kernel 'cuda'"):
        parse_spec("resnet50:paper:cuda")


def test_plus_compile_compiles_that_model_alone(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    rows = bench.bench_models(["resnet18", "resnet18+compile"], repeats=1, img_size=32, device="cpu")
    assert [r.model for r in rows] == ["resnet18", "resnet18+compile"] and len(compiled) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_a_models_peak_memory_is_its_own_whatever_was_benched_before(device):
    """On CUDA the allocator's peak also counts the models built earlier; they are taken off."""
    settings = {"repeats": 1, "img_size": 64, "batch_size": 2, "device": device}
    alone = bench.bench_models(["resnet18"], **settings)[0].peak_memory_mb
    after_others = bench.bench_models(["resnet50", "resnet18_cnl5", "resnet18"], **settings)
    assert after_others[2].peak_memory_mb == pytest.approx(alone, rel=0.02)
    assert after_others[0].peak_memory_mb > 2 * alone  # 25.6M parameters against 11.7M
