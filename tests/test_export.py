"""Ecosystem: torch.hub, timm, ONNX / TorchScript / safetensors export."""

import json
from pathlib import Path

import pytest
import torch

import cnl
from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from cnl.models.plug import plugged

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = generate(root / "data", SynthConfig(classes=3, train_per_class=3, test_per_class=1, image_size=40))
    args = [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", "resnet18_cnl5", "--img-size", "64",
        "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--width", "16",
        "--output", str(root / "run"),
    ]  # fmt: skip
    assert main(args) == 0
    return root / "run" / "checkpoints" / "best.pt", data


def reference(checkpoint, batch):
    model, _ = cnl.load_model(checkpoint)
    x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        return x, model(x)


def test_torch_hub_local_loads_every_model():
    with torch.device("meta"):  # shapes only: every entry point, quickly
        for name in cnl.list_models():
            assert torch.hub.load(str(REPO), name, source="local", num_classes=5).fc.out_features == 5
    model = torch.hub.load(str(REPO), "resnet18_cnl5", source="local", num_classes=7)
    assert model.fc.out_features == 7 and plugged(model).query == "layer4.0"


def test_onnx_runs_in_onnxruntime_with_any_batch(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint[0]), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x, expected = reference(checkpoint[0], batch)
        (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-4, atol=1e-4)


def test_torchscript_matches(checkpoint, tmp_path):
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(checkpoint[0]), "--format", "torchscript", "--out", str(out)]) == 0
    scripted = torch.jit.load(str(out))
    x, expected = reference(checkpoint[0], 2)
    torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-5)


def test_safetensors_with_model_card_load_and_predict(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    assert main(["export", "--checkpoint", str(checkpoint[0]), "--format", "safetensors", "--out", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["model"] == "resnet18_cnl5" and card["img_size"] == 64 and len(card["classes"]) == 3
    assert card["mean"] == [0.485, 0.456, 0.406] and card["summary"]["epochs"] == 1
    x, expected = reference(checkpoint[0], 2)
    model = cnl.create_model("resnet18_cnl5", num_classes=3, width=16, weights=out).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    capsys.readouterr()
    image = next((checkpoint[1] / "images").rglob("*.jpg"))
    assert main(["predict", "--checkpoint", str(out), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["predictions"][0]["class"] in card["classes"]


def test_timm_creates_the_models_when_installed():
    timm = pytest.importorskip("timm")

    model = timm.create_model("resnet50_cnl5", num_classes=200)
    assert isinstance(model, cnl.models.ResNet) and model.fc.out_features == 200
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406) and model.pretrained_cfg["input_size"] == (3, 448, 448)
    assert "resnet50_cnl5" in timm.list_models("*_cnl5")
    # timm's own resnet50 stays timm's.
    assert not isinstance(timm.create_model("resnet50"), cnl.models.ResNet)


def test_timm_pretrained_loads_the_weights_the_presets_name(monkeypatch):
    """pretrained=True asks for IMAGENET1K_V1, as every preset does (torchvision's DEFAULT is V2)."""
    pytest.importorskip("timm")
    import timm

    from cnl import timm_models
    from cnl.engine.config import read_yaml

    asked = []
    monkeypatch.setattr(
        timm_models, "create_model", lambda name, **kwargs: asked.append(kwargs["weights"]) or torch.nn.Linear(1, 1)
    )
    timm.create_model("resnet50_cnl5", pretrained=True)
    timm.create_model("resnet50_cnl5", pretrained=True, weights="IMAGENET1K_V2")
    presets = {read_yaml(path)["weights"] for path in (REPO / "configs").glob("*.yaml")}
    assert asked == ["IMAGENET1K_V1", "IMAGENET1K_V2"] and presets == {"IMAGENET1K_V1"}
