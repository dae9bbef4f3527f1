"""The CUDA paths: modules, kernels, mixed precision, channels_last, compile.

Marked ``cuda``: skipped where no GPU is present, run by benchmarks/run_gpu.sh
(``pytest -m cuda`` over the files that import ``tests/devices.py``) on a GPU machine. The
training run on the GPU (bf16, channels_last, compile, then ``cnl eval``) is the script's
own step, so that it is done once.
"""

import pytest
import torch
from torch.nn.attention import sdpa_kernel

import cnl
from cnl.analysis.bench import FUSED_KERNELS
from cnl.nn import CrossLayerNonLocal, NonLocal2d
from devices import NEEDS_CUDA

pytestmark = NEEDS_CUDA
GPU = torch.device("cuda")


def randomised(module: torch.nn.Module) -> torch.nn.Module:
    """Non-zero norms, so that the attention branch shows in the output."""
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    return module


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_modules_on_the_gpu_equal_the_cpu(use_sdpa):
    torch.manual_seed(0)
    cnl_module = randomised(CrossLayerNonLocal(256, [64, 128], use_sdpa=use_sdpa)).eval()
    nl_module = randomised(NonLocal2d(64, use_sdpa=use_sdpa)).eval()
    query, responses = torch.randn(2, 256, 7, 7), [torch.randn(2, 64, 28, 28), torch.randn(2, 128, 14, 14)]
    expected_cnl, expected_nl = cnl_module(query, responses), nl_module(responses[0])
    with torch.no_grad():
        got_cnl = cnl_module.to(GPU)(query.to(GPU), [r.to(GPU) for r in responses])
        got_nl = nl_module.to(GPU)(responses[0].to(GPU))
    torch.testing.assert_close(got_cnl.cpu(), expected_cnl, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got_nl.cpu(), expected_nl, rtol=1e-3, atol=1e-3)


def test_bf16_autocast_follows_fp32_and_gradients_are_finite():
    torch.manual_seed(0)
    module = randomised(CrossLayerNonLocal(256, [64, 128])).to(GPU)
    query = torch.randn(2, 256, 7, 7, device=GPU, requires_grad=True)
    responses = [torch.randn(2, 64, 28, 28, device=GPU), torch.randn(2, 128, 14, 14, device=GPU)]
    reference = module(query, responses)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = module(query, responses)
    torch.testing.assert_close(mixed.float(), reference, rtol=5e-2, atol=5e-2)
    mixed.float().square().mean().backward()
    assert torch.isfinite(query.grad).all() and all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_channels_last_bf16_train_step_of_the_papers_model():
    model = cnl.create_model("resnet50_cnl5", num_classes=10).to(GPU, memory_format=torch.channels_last)
    images = torch.randn(4, 3, 224, 224, device=GPU).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (4,), device=GPU)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, attention = model.forward_with_attention(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and logits.shape == (4, 10)
    assert [a.shape for a in attention.values()][0] == (4, 7 * 7, 28 * 28)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_compiled_model_equals_eager():
    torch.manual_seed(0)
    model = randomised(cnl.create_model("resnet18_cnl5", num_classes=10)).to(GPU).eval()
    images = torch.randn(2, 3, 128, 128, device=GPU)
    with torch.no_grad():
        eager = model(images)
        compiled = torch.compile(model)(images)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("amp", [False, True])
def test_the_nl_baselines_paper_shapes_train_on_fused_kernels(amp):
    """ResNet-50's NL blocks (c = 256 and 512) as the bench runs them: channels_last, fp32 or
    bf16. Fused kernels alone are allowed, so a fallback to the math kernel raises."""
    model = cnl.create_model("resnet50_nl5", num_classes=10).to(GPU, memory_format=torch.channels_last)
    images = torch.randn(2, 3, 224, 224, device=GPU).to(memory_format=torch.channels_last)
    with sdpa_kernel(list(FUSED_KERNELS.values())):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(images).float(), torch.tensor([1, 2], device=GPU))
        loss.backward()
    assert torch.isfinite(loss)
