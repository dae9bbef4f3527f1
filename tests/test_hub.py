"""The Hugging Face Hub format: ``cnl export --format hf`` writes what timm reads, and every
cnl command that takes a checkpoint takes the folder, or ``hf-hub:ORG/NAME`` from the cache."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import cnl
from cnl.cli import main
from cnl.data.synth import SynthConfig, generate

timm = pytest.importorskip("timm")

MODELS = {"paper": "resnet18_cnl5", "timm": "timm:efficientnet_b0_cnl5", "tv": "tv:resnet18_cnl5"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(
        tmp_path_factory.mktemp("hub") / "data",
        SynthConfig(classes=3, train_per_class=2, test_per_class=1, image_size=40),
    )


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """A one-epoch run of each model, and its Hub folder."""
    made = {}
    for kind, model in MODELS.items():
        root = tmp_path_factory.mktemp(kind)
        args = [
            "train", "--data-root", str(data), "--dataset", "cub", "--model", model, "--img-size", "64",
            "--epochs", "1", "--batch-size", "3", "--workers", "0", "--device", "cpu", "--output", str(root / "run"),
        ] + (["--width", "16"] if kind == "paper" else [])  # fmt: skip
        assert main(args) == 0
        checkpoint, folder = root / "run" / "checkpoints" / "best.pt", root / "hub"
        assert main(["export", "--checkpoint", str(checkpoint), "--format", "hf", "--out", str(folder)]) == 0
        made[kind] = (checkpoint, folder)
    return made


def logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("kind", list(MODELS))
def test_timm_builds_the_exported_folder_with_the_checkpoints_logits(runs, kind):
    checkpoint, folder = runs[kind]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    trained, classes = cnl.load_model(checkpoint)
    assert config["num_classes"] == 3 and config["label_names"] == classes
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64] and config["pretrained_cfg"]["mean"][0] == 0.485
    assert config["pretrained_cfg"]["interpolation"] == "bilinear" and 0 < config["pretrained_cfg"]["crop_pct"] < 1
    from_timm = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert torch.equal(logits(from_timm), logits(trained))
    loaded, loaded_classes = cnl.load_model(folder)
    assert torch.equal(logits(loaded), logits(trained)) and loaded_classes == classes


def test_the_model_card_says_what_the_model_is_and_how_its_epoch_was_chosen(runs):
    card = (runs["paper"][1] / "README.md").read_text()
    summary = json.loads((runs["paper"][0].parent.parent / "summary.json").read_text())
    assert f"| {summary['best_top1']:.2f} | {summary['best_top5']:.2f} | 1 of 1 |" in card
    _, front, _ = card.split("---\n", 2)
    metadata = yaml.safe_load(front)  # what the Hub reads: the results shown beside the model
    assert (metadata["library_name"], metadata["pipeline_tag"], metadata["license"]) == (
        "timm", "image-classification", "mit",
    )  # fmt: skip
    assert metadata["datasets"] == ["CUB-200-2011"]
    (entry,) = metadata["model-index"]
    (result,) = entry["results"]
    assert entry["name"] == "hub" and result["task"]["type"] == "image-classification"
    assert result["dataset"] == {"name": "CUB-200-2011", "type": "cub", "split": "test"}
    top1, top5 = result["metrics"]
    assert (top1["type"], top1["value"], top5["value"]) == (
        "accuracy", round(summary["best_top1"], 2), round(summary["best_top5"], 2),
    )  # fmt: skip
    assert top1["name"] == "top-1 accuracy (best epoch, 1 of 1, chosen on the test split (optimistic); one crop)"
    assert "chosen on the test split itself, as the paper does: an optimistic figure" in card
    assert '"command":' in card and "arXiv:2005.09153" in card and "width: 16" in card


def test_cnl_commands_take_the_folder(runs, data, tmp_path, capsys):
    checkpoint, folder = runs["paper"]
    image = str(next((data / "images").rglob("*.jpg")))
    assert main(["eval", "--checkpoint", str(checkpoint), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(folder), "--json", "--data-root", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == expected["top1"]
    assert main(["predict", "--checkpoint", str(checkpoint), image, "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(["predict", "--checkpoint", str(folder), image, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    assert main(["attention", "--checkpoint", str(folder), image, "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").stat().st_size > 0


def hub_cache(tmp_path, folder, repo="our-lab/cub-resnet18-cnl5"):
    """huggingface_hub's cache as a download of ``repo`` would have left it."""
    org, name = repo.split("/")
    revision = "0123456789abcdef0123456789abcdef01234567"
    cached = tmp_path / "cache" / f"models--{org}--{name}"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text(revision)
    snapshot = cached / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    return tmp_path / "cache"


def test_hf_hub_names_load_offline_from_the_cache(runs, data, tmp_path):
    checkpoint, folder = runs["tv"]
    cache = hub_cache(tmp_path, folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    image = str(next((data / "images").rglob("*.jpg")))
    # One new process (huggingface_hub reads its settings from the environment at import):
    # cnl predict's own output, then one line of JSON.
    code = (
        "import json, sys, torch, timm, cnl\n"
        "from cnl.cli import main\n"
        f"predicted = main(['predict', '--checkpoint', 'hf-hub:our-lab/cub-resnet18-cnl5', {image!r}])\n"
        "x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))\n"
        "model, classes = cnl.load_model('hf-hub:our-lab/cub-resnet18-cnl5')\n"
        "other = timm.create_model('hf-hub:our-lab/cub-resnet18-cnl5', pretrained=True).eval()\n"
        "with torch.no_grad(): print(json.dumps([predicted, model(x).tolist(), other(x).tolist(), classes]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    *predictions, last = done.stdout.splitlines()
    predicted, from_cnl, from_timm, classes = json.loads(last)
    assert predicted == 0 and predictions[0].startswith(image)
    trained, expected_classes = cnl.load_model(checkpoint)
    expected = logits(trained)
    assert torch.allclose(torch.tensor(from_cnl), expected, atol=1e-6) and classes == expected_classes
    assert torch.allclose(torch.tensor(from_timm), expected, atol=1e-6)


# --- transformers at any size --------------------------------------------------------


@pytest.mark.parametrize("name", ["timm:vit_small_patch16_224_cnl5", "timm:swin_tiny_patch4_window7_224_cnl5"])
def test_a_transformer_takes_the_training_size(name):
    model = cnl.create_model(name, num_classes=3, img_size=448).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 448, 448)).shape == (1, 3)
    assert model.plug.cnl is not None


def test_a_vit_trains_at_another_size_and_loads_back(data, tmp_path, capsys):
    output = tmp_path / "run"
    args = [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", "timm:vit_small_patch16_224_cnl5",
        "--img-size", "64", "--epochs", "1", "--batch-size", "3", "--workers", "0", "--device", "cpu",
        "--output", str(output),
    ]  # fmt: skip
    assert main(args) == 0
    model, _ = cnl.load_model(output / "checkpoints" / "best.pt")
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_a_size_a_model_cannot_take_is_refused_before_any_data_is_read(tmp_path, capsys):
    empty = tmp_path / "empty"  # a folder holding no dataset: reading it would be an error of its own
    empty.mkdir()
    args = [
        "train", "--data-root", str(empty), "--model", "tv:vit_b_16_cnl5",
        "--weights", "IMAGENET1K_V1", "--img-size", "448", "--output", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "tv:vit_b_16 takes 224 px with pretrained weights" in err and "timm" in err
    assert "empty" not in err  # the data was never read
