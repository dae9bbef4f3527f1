"""Run beside timm's tests/test_models.py (tools/timm_suite/run.sh): cnl's names registered in
timm before the test file lists its models, and the cases skipped by the rule of
docs/ecosystem.md "timm's own model tests"."""

import fnmatch

import pytest
import timm  # noqa: F401

import cnl  # noqa: F401  registers cnl's models in timm once timm is imported

# torch.jit.script compiles forward hooks as TorchScript, and the NL/CNL modules run in
# forward hooks that call Python (bound methods of the Plug, a list of kept maps): every
# model with modules is skipped here, as timm skips its own unscriptable models. Tracing
# (torch.jit.trace, cnl export --format torchscript), torch.export and ONNX work.
SCRIPTED = ("test_model_forward_torchscript", "test_model_forward_fx_torchscript")
SCRIPT_REASON = "torch.jit.script cannot compile the forward hooks that run the NL/CNL modules"


# torch.fx: at a ViT's sites (the tokens layout) the patch tokens are reshaped to a square
# grid whose side is computed from the number of tokens when the model runs, which symbolic
# tracing cannot follow. The registered ViTs are the vit_* names; torch.export traces them.
TRACED = ("test_model_forward_fx", "test_model_backward_fx")
TOKENS = "vit_*"
TRACE_REASON = "torch.fx: a ViT site's grid side is computed from the number of tokens at run time"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.originalname in SCRIPTED:
            item.add_marker(pytest.mark.skip(reason=SCRIPT_REASON))
        model = getattr(item, "callspec", None) and item.callspec.params.get("model_name", "")
        if item.originalname in TRACED and model and fnmatch.fnmatch(model, TOKENS):
            item.add_marker(pytest.mark.skip(reason=TRACE_REASON))
