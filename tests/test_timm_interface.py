"""timm's model interface on the names cnl registers in timm (the whole of timm's own model
tests runs in CI: tools/timm_suite/run.sh); here what a timm user does first."""

import pytest
import torch

timm = pytest.importorskip("timm")

import cnl  # noqa: E402,F401


def test_a_paper_model_is_a_timm_model_to_fine_tune_and_to_read_features_from():
    model = timm.create_model("resnet18_cnl5", num_classes=7, width=8).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, 2, 2) and model.num_features == model.head_hidden_size == 64
        assert torch.equal(model.forward_head(features), model(x))
        assert model.forward_head(features, pre_logits=True).shape == (2, 64)
    assert timm.data.resolve_data_config({}, model=model)["input_size"] == (3, 448, 448)
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model.num_classes == 3
    model.reset_classifier(0, "")
    assert model(x).shape == (2, 64, 2, 2)
    with pytest.raises(TypeError):
        timm.create_model("resnet18_cnl5", not_a_model_arg=1)


def test_features_only_keeps_the_modules_inside():
    features = timm.create_model("resnet18_cnl5", features_only=True, out_indices=(2, 3, 4), width=8)
    maps = features(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == features.feature_info.channels() == [16, 32, 64]
    assert any(name.startswith("model.plug.cnl.") for name, _ in features.named_parameters())


def test_timm_builds_on_the_device_and_in_the_dtype_asked():
    model = timm.create_model("resnet50_cnl5", device="meta", dtype=torch.bfloat16)
    assert {(t.device.type, t.dtype) for t in model.parameters()} == {("meta", torch.bfloat16)}


def test_fx_traces_through_the_hooks_with_the_modules_as_leaves():
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = timm.create_model("resnet18_cnl5", width=8).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a module that is not the identity, so that leaving it out would show
        for parameter in model.plug.parameters():
            parameter.normal_(0, 0.1)
    tracer = {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}
    _, nodes = get_graph_node_names(model, tracer_kwargs=tracer)
    traced = create_feature_extractor(model, return_nodes=[nodes[-1]], tracer_kwargs=tracer)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(next(iter(traced(x).values())), model(x), rtol=1e-4, atol=1e-5)
    assert any("plug.cnl" in node for node in nodes)  # the CNL module is in the graph, as a leaf


@pytest.mark.parametrize("name", ["resnet18_cnl5", "timm:vit_tiny_patch16_224_cnl5"])
def test_torch_export_traces_the_hooks(name):
    model = cnl.create_model(name, 3, **({"width": 8} if name.startswith("resnet") else {})).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.plug.parameters():
            parameter.normal_(0, 0.1)
    x = torch.randn(1, 3, 64 if name.startswith("resnet") else 224, 64 if name.startswith("resnet") else 224)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-4, atol=1e-4)


def test_forward_intermediates_gives_the_feature_levels_and_the_final_map():
    model = timm.create_model("resnet18_cnl5", width=8).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [m.shape[1] for m in maps] == [info["num_chs"] for info in model.feature_info]
        assert [64 // m.shape[-1] for m in maps] == [info["reduction"] for info in model.feature_info]
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [torch.equal(a, b) for a, b in zip(last_two, maps[-2:])] == [True, True]
        model.forward_intermediates(x, indices=[2], stop_early=True)  # responses kept, the query not reached
        assert torch.equal(model.forward_features(x), final)
