"""Models: names, placements, torchvision weights, overrides."""

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

import cnl
from cnl import upgrades
from cnl.models.placement import spaced_blocks
from cnl.models.plug import plugged
from cnl.models.resnet import StemMaxPool2d, block_channels, paper_placement


def tv_resnet(name, num_classes):
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=num_classes).eval()


def test_list_models_has_every_backbone_and_variant():
    names = cnl.list_models()
    for depth in (18, 34, 50, 101, 152):
        assert {f"resnet{depth}", f"resnet{depth}_nl5", f"resnet{depth}_cnl5"} <= set(names)
    assert cnl.list_models("*_cnl5") == sorted(n for n in names if n.endswith("_cnl5"))


def test_paper_placements():
    r50 = cnl.create_model("resnet50_cnl5", num_classes=200)
    assert plugged(r50).query == "layer4.1"
    assert plugged(r50).responses == ("layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5")
    r101 = cnl.create_model("resnet101_cnl5", num_classes=200)
    assert plugged(r101).responses == ("layer2.1", "layer2.3", "layer3.5", "layer3.12", "layer3.19")
    nl = cnl.create_model("resnet101_nl5", num_classes=200)
    assert plugged(nl).nl_layers == plugged(r101).responses and nl.plug.cnl is None
    assert sorted(nl.plug.nl) == ["layer2_1", "layer2_3", "layer3_12", "layer3_19", "layer3_5"]


def test_placement_rule_for_other_depths():
    assert spaced_blocks(4, 2) == [1, 3] and spaced_blocks(6, 3) == [1, 3, 5] and spaced_blocks(5, 0) == []
    assert paper_placement("resnet34") == ("layer4.1", ("layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5"))
    assert paper_placement("resnet152")[1] == ("layer2.3", "layer2.7", "layer3.11", "layer3.23", "layer3.35")
    assert paper_placement("resnet18")[1] == ("layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1")
    assert plugged(cnl.create_model("resnet18_cnl5", num_classes=3)).query == "layer4.0"


def test_new_module_keys_have_their_own_prefix_and_backbone_keys_are_torchvisions():
    tv_keys = set(tv_resnet("resnet50", 200).state_dict())
    for name in ("resnet50", "resnet50_nl5", "resnet50_cnl5"):
        keys = set(cnl.create_model(name, num_classes=200).state_dict())
        assert tv_keys <= keys
        assert all(k.startswith(("plug.nl.", "plug.cnl.")) for k in keys - tv_keys)


@pytest.mark.parametrize("name", ["resnet50_cnl5", "resnet50_nl5"])
def test_torchvision_state_dict_loads_and_output_is_unchanged(name):
    reference = tv_resnet("resnet50", 200)
    model = cnl.create_model(name, num_classes=200).eval()
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(k.startswith("plug.") for k in missing)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_a_local_file(tmp_path, suffix):
    reference = tv_resnet("resnet18", 1000)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(reference.state_dict(), path)
    else:
        save_file(reference.state_dict(), str(path))
    model = cnl.create_model("resnet18_cnl5", num_classes=1000, weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_torchvision_weights_name_uses_the_hub_cache(tmp_path, monkeypatch):
    """The users' download path, served from a local file placed where torch.hub caches it."""
    reference = tv_resnet("resnet18", 1000)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / Path(weights.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = cnl.create_model("resnet18_nl5", num_classes=7, weights="IMAGENET1K_V1").eval()
    # A different number of classes: the backbone loads, the head stays new.
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.fc.weight.shape == (7, 512)
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        cnl.create_model("resnet18", weights="IMAGENET9K")


def test_missing_or_foreign_weights_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        cnl.create_model("resnet18", weights=tmp_path / "nowhere.pth")
    foreign = tmp_path / "r34.pth"
    torch.save(tv_resnet("resnet34", 10).state_dict(), foreign)
    with pytest.raises(ValueError, match="do not fit resnet18.*unexpected keys"):
        cnl.create_model("resnet18", num_classes=10, weights=foreign)


def test_query_and_responses_can_be_overridden_by_layer_name():
    model = cnl.create_model("resnet50_cnl5", num_classes=10, query="layer4.2", responses=["layer3.5", "layer2.0"])
    assert plugged(model).query == "layer4.2" and plugged(model).responses == ("layer2.0", "layer3.5")
    assert model.plug.cnl.response_channels == [512, 1024]
    out, attention = model.eval().forward_with_attention(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 10)
    assert {k: tuple(v.shape) for k, v in attention.items()} == {"layer2.0": (1, 4, 64), "layer3.5": (1, 4, 16)}


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown query \['layer5.0'\].*layer1.0, layer1.1"):
        cnl.create_model("resnet18_cnl5", query="layer5.0")
    with pytest.raises(ValueError, match="come after the query"):
        cnl.create_model("resnet50_cnl5", query="layer3.0")
    with pytest.raises(ValueError, match="unknown model 'resnet51'; did you mean resnet50"):
        cnl.create_model("resnet51")
    with pytest.raises(TypeError, match="valid overrides"):
        cnl.create_model("resnet50", querry="layer4.1")


def test_head_is_pool_dropout_linear():
    model = cnl.create_model("resnet18_cnl5", num_classes=5, drop_rate=0.5)
    assert model.fc.dropout.p == 0.5 and model.fc.out_features == 5
    assert {k for k in model.state_dict() if k.startswith("fc.")} == {"fc.weight", "fc.bias"}  # torchvision's keys
    features = []
    model.layer4.register_forward_hook(lambda module, args, output: features.append(output))
    x = torch.randn(2, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    trained = model(x)  # the head's dropout is the forward's only draw
    torch.manual_seed(0)
    expected = torch.nn.functional.linear(
        torch.nn.functional.dropout(features[0].mean((2, 3)), 0.5, training=True), model.fc.weight, model.fc.bias
    )
    torch.testing.assert_close(trained, expected)


def test_keys_of_the_paper_models_before_plug_are_renamed_in_one_place():
    old = {"conv1.weight": torch.ones(1), "nl.layer3_5.theta.weight": torch.ones(2), "cnl.norms.0.bias": torch.ones(3)}
    assert list(upgrades.state_keys(old)) == ["conv1.weight", "plug.nl.layer3_5.theta.weight", "plug.cnl.norms.0.bias"]
    assert upgrades.state_keys(upgrades.state_keys(old)).keys() == upgrades.state_keys(old).keys()


def test_width_scales_every_stage_keeps_the_keys_and_refuses_other_widths_weights(tmp_path):
    wide = cnl.create_model("resnet18_cnl5", num_classes=10)
    narrow = cnl.create_model("resnet18_cnl5", num_classes=10, width=16).eval()
    assert set(narrow.state_dict()) == set(wide.state_dict())
    assert narrow.conv1.out_channels == 16 and narrow.fc.in_features == 128
    assert [block_channels("resnet18", f"layer{k}.0", 16) for k in (1, 2, 3, 4)] == [16, 32, 64, 128]
    assert narrow.plug.cnl.response_channels == [16, 32, 32, 64, 64]
    x = torch.randn(2, 3, 64, 64)
    out, attention = narrow.forward_with_attention(x)
    assert out.shape == (2, 10) and attention["layer1.1"].shape == (2, 4, 256)
    path = tmp_path / "wide.pth"
    torch.save(wide.state_dict(), path)
    with pytest.raises(ValueError, match=r"another width\?\): conv1.weight \(64, 3, 7, 7\) \(model: \(16, 3, 7, 7\)\)"):
        cnl.create_model("resnet18", num_classes=10, width=16, weights=path)
    with pytest.raises(ValueError, match="width must be a positive number of channels, got 0"):
        cnl.create_model("resnet18", width=0)


@pytest.mark.parametrize("shape", [(4, 8, 48, 48), (2, 3, 47, 50), (1, 5, 7, 7)])
def test_the_stem_pooling_gives_torchs_maxima_and_gradients_bit_for_bit(shape):
    """The stem's max pooling runs on the channels-last kernel on the CPU; ties (a ReLU's
    zeros, a few integer levels) are where a kernel could pick another pixel."""
    torch.manual_seed(0)
    pool = StemMaxPool2d()
    for x in (torch.randint(0, 3, shape).float(), torch.relu(torch.randn(shape))):
        ours, torchs = x.clone().requires_grad_(), x.clone().requires_grad_()
        output, expected = pool(ours), nn.functional.max_pool2d(torchs, 3, 2, 1)
        assert torch.equal(output, expected) and output.is_contiguous()
        gradient = torch.randn(expected.shape)
        output.backward(gradient)
        expected.backward(gradient)
        assert torch.equal(ours.grad, torchs.grad) and ours.grad.is_contiguous()
    with torch.no_grad():  # evaluation: no indices kept
        assert torch.equal(pool(x), nn.functional.max_pool2d(x, 3, 2, 1))
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert pool(channels_last).is_contiguous(memory_format=torch.channels_last)
    model = cnl.create_model("resnet18_cnl5", num_classes=3, width=8)
    assert isinstance(model.maxpool, StemMaxPool2d)
