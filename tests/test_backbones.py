"""CNL and NL inside torchvision and timm backbones, placed by module name (random weights)."""

import copy
import functools
import io
import json
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from torch import nn

import cnl
from cnl.export import write_onnx
from cnl.models.backbones import ForeignName
from cnl.models.placement import default_placement, regular
from cnl.models.plug import Site, attended, name_of, plug_into, plugged, record_outputs

pytest.importorskip("timm")

# name, test image size (timm's Swin and ViT take their fixed 224), default CNL placement
FAMILIES = {
    "timm:resnet50d": (64, "layer4.1", ("layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5")),
    "timm:convnext_tiny": (
        64,
        "stages.3.blocks.1",
        ("stages.1.blocks.1", "stages.1.blocks.2", "stages.2.blocks.2", "stages.2.blocks.5", "stages.2.blocks.8"),
    ),
    "timm:efficientnet_b0": (64, "blocks.5.3", ("blocks.2.0", "blocks.2.1", "blocks.3.1", "blocks.4.0", "blocks.4.2")),
    "timm:regnety_016": (64, "s4.b1", ("s2.b3", "s2.b6", "s3.b7", "s3.b12", "s3.b17")),
    "timm:swin_tiny_patch4_window7_224": (
        224,
        "layers.3.blocks.0",
        ("layers.1.blocks.0", "layers.1.blocks.1", "layers.2.blocks.1", "layers.2.blocks.3", "layers.2.blocks.5"),
    ),
    "timm:vit_small_patch16_224": (224, "blocks.10", ("blocks.0", "blocks.2", "blocks.4", "blocks.6", "blocks.8")),
    "tv:convnext_tiny": (
        64,
        "features.7.1",
        ("features.3.1", "features.3.2", "features.5.2", "features.5.5", "features.5.8"),
    ),
    "tv:efficientnet_b0": (
        64,
        "features.6.3",
        ("features.3.0", "features.3.1", "features.4.1", "features.5.0", "features.5.2"),
    ),
    "tv:mobilenet_v3_large": (
        64,
        "features.14",
        ("features.5", "features.6", "features.8", "features.10", "features.12"),
    ),
}


@functools.cache
def built(name: str) -> nn.Module:
    torch.manual_seed(0)
    return cnl.create_model(name, num_classes=5)


def build(name: str) -> nn.Module:
    """A model of its own, as ``create_model`` builds it from seed 0: each name is built once
    in this module (a full-size backbone takes seconds to build), every test gets a copy."""
    return copy.deepcopy(built(name))


@pytest.fixture(scope="module", autouse=True)
def forget_built_models():
    yield
    built.cache_clear()


def grid(site: Site, output: torch.Tensor) -> int:
    """Positions of a site's map: H*W (maps) or the patch tokens (ViT)."""
    return site.to_map(output).shape[2] * site.to_map(output).shape[3]


def site_outputs(model, x):
    return record_outputs(model, list(model.plug.sites), x)


@pytest.mark.parametrize("backbone", FAMILIES)
def test_family_identity_attention_gradients_and_one_step(backbone):
    size, query, responses = FAMILIES[backbone]
    plain, model = build(backbone).eval(), build(f"{backbone}_cnl5").eval()
    assert (plugged(model).query, plugged(model).responses) == (query, responses)
    # The backbone's keys are its own; the new modules live under plug.
    keys = set(model.state_dict())
    assert set(plain.state_dict()) == {k for k in keys if not k.startswith("plug.")}
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("plug.") for k in missing)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))  # zero-initialised norms: the identity
        logits, attention = model.forward_with_attention(x)
    assert logits.shape == (2, 5) and list(attention) == list(responses)
    outputs = site_outputs(model, x)
    queries = grid(model.plug.sites[query], outputs[query])
    for name in responses:
        assert attention[name].shape == (2, queries, grid(model.plug.sites[name], outputs[name]))
    # One training step moves the zero-initialised norms; then every new parameter gets a gradient.
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
        loss.backward()
        assert torch.isfinite(loss)
        optimizer.step()
    silent = [n for n, p in model.plug.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


@pytest.mark.parametrize("backbone", ["timm:convnext_tiny", "tv:mobilenet_v3_large", "timm:vit_small_patch16_224"])
def test_nl_variant_gives_one_map_per_block(backbone):
    size = FAMILIES[backbone][0]
    model = build(f"{backbone}_nl5").eval()
    assert plugged(model).nl_layers == FAMILIES[backbone][2] and plugged(model).query is None
    x = torch.randn(1, 3, size, size)
    _, attention = model.forward_with_attention(x)
    outputs = site_outputs(model, x)
    for name in plugged(model).nl_layers:
        positions = grid(model.plug.sites[name], outputs[name])
        assert attention[name].shape == (1, positions, positions)


# What the plug does differently is the layout of a site (plug.py); the families within one
# layout differ only in their own modules, which are torch's exporter's to trace, at about
# ten seconds an export whatever the model's width. So export is tested on one family of
# each layout, the smallest: timm's own test models (a few narrow blocks, random weights;
# ViTs take their fixed size). tests/test_export.py exports NCHW (a trained resnet18_cnl5)
# through `cnl export`.
EXPORTED = {"timm:test_mambaout": 64, "timm:test_vit2": 160}


def test_the_exported_families_have_every_layout():
    layouts = [{site.layout for site in built(f"{name}_cnl5").plug.sites.values()} for name in EXPORTED]
    assert layouts == [{"NHWC"}, {"tokens"}]
    assert {site.layout for site in built("resnet18_cnl5").plug.sites.values()} == {"NCHW"}


@pytest.mark.parametrize("backbone", EXPORTED)
def test_onnx_export_equals_pytorch_in_onnxruntime(backbone, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    size = EXPORTED[backbone]
    model = build(f"{backbone}_cnl5").eval()
    torch.manual_seed(1)
    for parameter in model.plug.parameters():  # away from the identity, so the module counts
        parameter.data.normal_(0.5, 0.1)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        write_onnx(model, torch.randn(2, 3, size, size), path)  # what cnl export --format onnx writes
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = model(x)
    got = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)


def test_compile_and_deepcopy_run_the_same_hooks():
    model = build("timm:convnext_tiny_cnl5").eval()
    for parameter in model.plug.parameters():
        parameter.data.normal_(0.5, 0.1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), expected)
        twin = copy.deepcopy(model)  # as EMA copies a model: the hooks follow the copy
        assert twin.plug is not model.plug
        twin.plug.cnl.reset_parameters()  # the copy's CNL back to the identity, not the original's
        plain = build("timm:convnext_tiny").eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("plug.")})
        torch.testing.assert_close(twin(x), plain(x))
        torch.testing.assert_close(model(x), expected)


def test_default_placement_rule():
    # The paper's ResNet-50 from stage lists of 3, 4, 6, 3 blocks.
    stages = [[f"s{k}.{b}" for b in range(n)] for k, n in enumerate((3, 4, 6, 3))]
    assert default_placement(stages) == ("s3.1", ("s1.1", "s1.3", "s2.1", "s2.3", "s2.5"))
    # A short stage hands its surplus to the one before (ResNet-18's 2, 2, 2, 2).
    stages = [[f"s{k}.{b}" for b in range(2)] for k in range(4)]
    assert default_placement(stages) == ("s3.0", ("s0.1", "s1.0", "s1.1", "s2.0", "s2.1"))
    assert regular(5, 9) == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="too short"):
        default_placement([["b0", "b1", "b2"]])


def test_names_errors_and_unsupported_outputs():
    swin = ForeignName.parse("timm:swin_tiny_patch4_window7_224_cnl5")
    assert swin == ForeignName("timm", "swin_tiny_patch4_window7_224", "_cnl5")
    with pytest.raises(ValueError, match="expected tv:MODEL or timm:MODEL"):
        ForeignName.parse("keras:resnet50")
    with pytest.raises(ValueError, match="unknown torchvision classifier 'convnext_huge'"):
        cnl.create_model("tv:convnext_huge")
    with pytest.raises(ValueError, match=r"has no modules \['layer9'\]"):
        cnl.create_model("tv:resnet18", query="layer4.0", responses=["layer9"])
    with pytest.raises(ValueError, match=r"module 'fc' outputs shape \(1, 1000\); a NCHW site needs 4"):
        cnl.create_model("tv:resnet18", query="fc", responses=["layer3.0"])
    with pytest.raises(TypeError, match="outputs tuple, not a tensor"):
        Site("blocks.0", "NCHW", 8).to_map((torch.zeros(1),))
    with pytest.raises(ValueError, match="10 tokens after 1 prefix tokens are not a square grid"):
        Site("blocks.0", "tokens", 8, prefix_tokens=1).to_map(torch.zeros(1, 11, 8))
    late = cnl.create_model("tv:resnet18", query="layer2.0", responses=["layer3.0"])
    with pytest.raises(ValueError, match="query 'layer2.0' ran after 0 of its 1 responses"):
        late(torch.zeros(1, 3, 64, 64))


def test_backbone_weights_load_unchanged_from_a_local_file(tmp_path):
    source = build("tv:mobilenet_v3_large")
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    model = cnl.create_model("tv:mobilenet_v3_large_cnl5", num_classes=5, weights=tmp_path / "backbone.pth").eval()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    timm_source = build("timm:efficientnet_b0")  # 5 classes; a 7-class model keeps its new head
    torch.save(timm_source.state_dict(), tmp_path / "timm.pth")
    timm_model = cnl.create_model("timm:efficientnet_b0_cnl5", num_classes=7, weights=tmp_path / "timm.pth")
    torch.testing.assert_close(timm_model.conv_stem.weight, timm_source.conv_stem.weight)
    assert timm_model.classifier.weight.shape == (7, 1280)


def test_downstream_train_eval_predict_attention_export_on_a_torchvision_backbone(tmp_path, capsys):
    """Everything after create_model works on a plugged backbone; the checkpoint rebuilds it."""
    from cnl.cli import main
    from cnl.data.synth import SynthConfig, generate

    data = generate(tmp_path / "data", SynthConfig(classes=3, train_per_class=4, test_per_class=2, image_size=40))
    run = tmp_path / "run"
    args = [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", "tv:mobilenet_v3_large_cnl5",
        "--img-size", "64", "--epochs", "1", "--global-batch-size", "4", "--workers", "0", "--device", "cpu",
        "--head-lr-mult", "10", "--output", str(run),
    ]  # fmt: skip
    assert main(args) == 0
    best = run / "checkpoints" / "best.pt"
    model, classes = cnl.load_model(best)
    plug = plugged(model)
    assert plug.arch == "tv:mobilenet_v3_large_cnl5" and plug.query == "features.14" and len(classes) == 3
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(best), "--json", "--device", "cpu"]) == 0
    logged = json.loads((run / "summary.json").read_text())
    assert json.loads(capsys.readouterr().out)["top1"] == logged["best_top1"]
    image = next((data / "images").rglob("*.jpg"))
    assert main(["predict", "--checkpoint", str(best), str(image), "--device", "cpu", "--topk", "2"]) == 0
    assert str(image) in capsys.readouterr().out
    assert main(["attention", "--checkpoint", str(best), "--image", str(image), "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").stat().st_size > 1000
    assert main(["attention", "--checkpoint", str(best), str(image), "--html", str(tmp_path / "a.html")]) == 0
    page = (tmp_path / "a.html").read_text()
    assert all(f'"name":"{layer}"' in page for layer in plug.responses)  # one map per response
    # ONNX of each layout is tested above; here, that an export reads a foreign backbone's checkpoint.
    weights = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(best), "--format", "safetensors", "--out", str(weights)]) == 0
    again, x = cnl.create_model(plug.arch, num_classes=3, weights=weights).eval(), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model.eval()(x))


def test_profile_placements_list_models_hub_and_timm_names(capsys):
    from cnl.cli import main

    assert main(["profile", "--placements", "--models", "timm:convnext_tiny_cnl5"]) == 0
    out = capsys.readouterr().out
    assert "| stages.1.blocks.1 | response | [1, 192, 56, 56] | [192, 56, 56] |" in out
    assert "| stages.3.blocks.1 | query | [1, 768, 14, 14] | [768, 14, 14] |" in out
    assert main(["profile", "--placements", "--img-size", "224", "--models", "timm:vit_small_patch16_224_nl5"]) == 0
    assert "| blocks.0 | NL | [1, 197, 384] | [384, 14, 14] |" in capsys.readouterr().out
    assert main(["profile", "--placements", "--models", "timm:swin_tiny_patch4_window7_224_cnl5"]) == 2
    assert "takes 224x224 images only: use --img-size 224" in capsys.readouterr().err
    assert main(["list-models", "resnet50*"]) == 0
    out = capsys.readouterr().out
    assert "resnet50_cnl5" in out and "tv:NAME or timm:NAME" in out
    hub = torch.hub.load(str(Path(__file__).resolve().parents[1]), "create_model", "tv:efficientnet_b0_cnl5",
                         source="local", num_classes=3)  # fmt: skip
    assert plugged(hub).query == "features.6.3"
    import timm

    model = timm.create_model("efficientnet_b0_cnl5", num_classes=4)
    assert plugged(model).arch == "timm:efficientnet_b0_cnl5" and model.classifier.out_features == 4
    assert "convnext_tiny_cnl5" in timm.list_models("*_cnl5")


def test_torchvision_resnet_gets_the_papers_placement_under_its_own_names():
    model = build("tv:resnet50_cnl5")
    plug = plugged(model)
    assert plug.query == "layer4.1" and plug.responses == ("layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5")


def test_bench_names_keep_their_source():
    from cnl.analysis.bench import parse_spec

    assert parse_spec("timm:convnext_tiny_cnl5") == ("timm:convnext_tiny_cnl5", "auto", None, False, False)
    assert parse_spec("tv:efficientnet_b0_cnl5:paper:bmm") == ("tv:efficientnet_b0_cnl5", "paper", False, False, False)
    assert parse_spec("resnet50_cnl5:reassociated") == ("resnet50_cnl5", "reassociated", None, False, False)


def test_profile_counts_a_plugged_backbone_and_receptive_fields_say_where_they_apply(capsys):
    from cnl.analysis.profile import profile_model
    from cnl.cli import main

    plain, plugged = profile_model("tv:efficientnet_b0", 224, 10), profile_model("tv:efficientnet_b0_cnl5", 224, 10)
    assert plugged.params - plain.params == sum(p.numel() for p in build("tv:efficientnet_b0_cnl5").plug.parameters())
    # The attention products: 7x7 query positions against each response's positions, c = 192 // 8.
    responses = 2 * 28 * 28 + 14 * 14 + 2 * 14 * 14
    assert plugged.macs_all - plugged.macs == 2 * 49 * responses * 24
    assert main(["profile", "--receptive-fields", "--models", "tv:efficientnet_b0_cnl5"]) == 2
    assert "torchvision's ResNets only, not tv:efficientnet_b0_cnl5" in capsys.readouterr().err
    # torchvision's own ResNet, plugged, has them too: its blocks are ours.
    assert main(["profile", "--receptive-fields", "--models", "tv:resnet50_cnl5"]) == 0
    assert "| layer4.1 | query | 363 | 32 |" in capsys.readouterr().out


def test_torchvision_weights_name_for_a_plugged_backbone_uses_the_hub_cache(tmp_path, monkeypatch):
    """The users' download path, served from a local file where torch.hub caches it."""
    import torchvision

    source = torchvision.models.mobilenet_v3_large()
    weights = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / Path(weights.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = cnl.create_model("tv:mobilenet_v3_large_cnl5", num_classes=7, weights="IMAGENET1K_V1")
    torch.testing.assert_close(model.features[0][0].weight, source.features[0][0].weight)
    assert model.classifier[-1].weight.shape == (7, 1280)


class OwnBackbone(nn.Module):
    """A backbone of the user's with attributes named as cnl's roles."""

    def __init__(self):
        super().__init__()
        self.query, self.arch = "its own", "its own"
        self.stem, self.deep = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return self.deep(self.stem(x))


def test_the_modules_are_reached_through_plugged_and_the_backbones_attributes_stay_its_own():
    own = OwnBackbone()
    assert plugged(own) is None and attended(own) == () and name_of(own) == "OwnBackbone"
    sites = {"stem": Site("stem", "NCHW", 8), "deep": Site("deep", "NCHW", 8)}
    model = plug_into(own, sites, "own_cnl", query="deep", responses=["stem"])
    assert (model.query, model.arch) == ("its own", "its own")
    plug = plugged(model)
    assert (plug.query, plug.responses, plug.arch) == ("deep", ("stem",), "own_cnl") and attended(model) == ("stem",)
    _, attention = model.forward_with_attention(torch.randn(1, 3, 16, 16))
    assert attention["stem"].shape == (1, 64, 256)
