"""The NL and CNL modules against the paper's equations, written out with einsum."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.attention import sdpa_kernel

import cnl
from cnl.analysis.bench import FUSED_KERNELS
from cnl.nn import CrossLayerNonLocal, NonLocal2d, configure_attention
from cnl.nn.attention import paper_order_macs, reassociated_macs, use_reassociated
from devices import DEVICES

# Kernels that never store the attention map: under these alone, a fallback to the math
# kernel raises "No available kernel" instead of running silently.
FUSED = list(FUSED_KERNELS.values())


def conv1x1(x, conv):
    return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)


def batch_norm_eval(x, norm):
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return (x - norm.running_mean[:, None, None]) * scale[:, None, None] + norm.bias[:, None, None]


def two_variable_form(query_embedding, phi, g, z, norm, response):
    """Eq. 2 without the residual: BN(z(f(theta(Xq), phi(Xr)) g(Xr))), f = softmax(. / sqrt(c))."""
    key, value = conv1x1(response, phi), conv1x1(response, g)
    c = key.shape[1]
    logits = torch.einsum("bcq,bcr->bqr", query_embedding.flatten(2), key.flatten(2)) / c**0.5
    attention = logits.softmax(dim=-1)
    aggregated = torch.einsum("bqr,bcr->bcq", attention, value.flatten(2))
    aggregated = aggregated.reshape(query_embedding.shape)
    return batch_norm_eval(conv1x1(aggregated, z), norm)


def randomise_norms(module, generator=None):
    """Non-zero norms and running statistics, so the residual branch is not silent."""
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.weight.data.normal_(generator=generator)
            norm.bias.data.normal_(generator=generator)
            norm.running_mean.normal_(generator=generator)
            norm.running_var.uniform_(0.5, 2.0, generator=generator)
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            conv.weight.data.normal_(std=0.3, generator=generator)
    return module.eval()


def make_cnl(dtype=torch.float32):
    torch.manual_seed(0)
    return CrossLayerNonLocal(16, [4, 8, 8], inner_channels=6).to(dtype)


def make_inputs(batch=2, dtype=torch.float32, device="cpu"):
    torch.manual_seed(1)
    query = torch.randn(batch, 16, 3, 4, dtype=dtype, device=device)
    responses = [
        torch.randn(batch, c, h, w, dtype=dtype, device=device) for c, h, w in [(4, 12, 10), (8, 6, 6), (8, 5, 7)]
    ]
    return query, responses


def test_nl_is_identity_at_init():
    block = NonLocal2d(8)
    x = torch.randn(2, 8, 5, 6)
    for mode in (block.train(), block.eval()):
        assert torch.equal(mode(x), x)
    assert all((n.weight == 0).all() and (n.bias == 0).all() for n in [block.norm])


def test_cnl_is_identity_at_init():
    module = make_cnl()
    query, responses = make_inputs()
    assert torch.equal(module.train()(query, responses), query)
    assert torch.equal(module.eval()(query, responses), query)


def test_init_draws_convs_from_normal_001():
    module = CrossLayerNonLocal(512, [256, 256, 512], inner_channels=64)
    weights = torch.cat([p.flatten() for n, p in module.named_parameters() if "norm" not in n])
    assert abs(weights.std().item() - 0.01) < 5e-4
    assert abs(weights.mean().item()) < 5e-4
    assert all(c.bias is None for c in module.modules() if isinstance(c, nn.Conv2d))


def test_nl_default_widths_and_submodules():
    block = NonLocal2d(64)
    assert block.inner_channels == 32
    assert [name for name, _ in block.named_children()] == ["theta", "phi", "g", "attention", "z", "norm"]
    assert block.z.out_channels == 64 and block.norm.num_features == 64


def test_cnl_shares_theta_and_z_and_owns_one_phi_g_norm_per_response():
    module = CrossLayerNonLocal(2048, [512, 512, 1024, 1024, 1024])
    assert module.inner_channels == 256
    assert module.theta.weight.shape == (256, 2048, 1, 1)
    assert module.z.weight.shape == (2048, 256, 1, 1)
    assert [p.in_channels for p in module.phi] == [512, 512, 1024, 1024, 1024]
    assert [g.in_channels for g in module.g] == [512, 512, 1024, 1024, 1024]
    assert len(module.norm) == 5 and all(n.num_features == 2048 for n in module.norm)
    # The paper's ResNet-50 module: 3,166,208 parameters (Table 2: 2.71e7 - 2.39e7).
    assert sum(p.numel() for p in module.parameters()) == 3_166_208


PATHS = [(order, sdpa) for order in ("paper", "reassociated", "auto") for sdpa in (True, False, None)]


@pytest.mark.parametrize("order, use_sdpa", PATHS)
def test_nl_equals_two_variable_form_with_query_as_response(order, use_sdpa):
    block = randomise_norms(NonLocal2d(8, inner_channels=4, order=order, use_sdpa=use_sdpa).double())
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    expected = x + two_variable_form(conv1x1(x, block.theta), block.phi, block.g, block.z, block.norm, x)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("order, use_sdpa", PATHS)
def test_cnl_equals_sum_of_two_variable_forms(order, use_sdpa):
    module = configure_attention(randomise_norms(make_cnl(torch.float64)), order, use_sdpa)
    query, responses = make_inputs(dtype=torch.float64)
    theta_q = conv1x1(query, module.theta)
    expected = query + sum(
        two_variable_form(theta_q, phi, g, module.z, norm, r)
        for phi, g, norm, r in zip(module.phi, module.g, module.norm, responses)
    )
    torch.testing.assert_close(module(query, responses), expected)


def test_cnl_returns_attention_rows_summing_to_one_and_same_output():
    module = randomise_norms(make_cnl())
    query, responses = make_inputs(batch=3)
    out, attention = module(query, responses, return_attention=True)
    torch.testing.assert_close(out, module(query, responses), rtol=1e-5, atol=1e-5)
    assert [tuple(a.shape) for a in attention] == [(3, 12, 120), (3, 12, 36), (3, 12, 35)]
    for a in attention:
        torch.testing.assert_close(a.sum(-1), torch.ones(3, 12))
        assert (a >= 0).all()


def test_nl_returns_attention():
    block = randomise_norms(NonLocal2d(8))
    x = torch.randn(1, 8, 4, 5)
    out, attention = block(x, return_attention=True)
    assert attention.shape == (1, 20, 20)
    torch.testing.assert_close(out, block(x), rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    nl = randomise_norms(NonLocal2d(4, inner_channels=2).double())
    x = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: nl(t), (x,))
    assert torch.autograd.gradcheck(lambda t: nl(t, return_attention=True)[0], (x,))

    cnl = randomise_norms(CrossLayerNonLocal(4, [3, 2], inner_channels=2).double())
    query = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    r1 = torch.randn(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    r2 = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, a, b: cnl(q, [a, b]), (query, r1, r2))
    weights = tuple(p for p in cnl.parameters())
    assert torch.autograd.gradcheck(lambda *_: cnl(query.detach(), [r1.detach(), r2.detach()]), weights)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_float32(device, dtype):
    module = randomise_norms(make_cnl()).to(device)
    query, responses = make_inputs(device=device)
    expected = module(query, responses)
    low = module.to(dtype)
    out, attention = low(query.to(dtype), [r.to(dtype) for r in responses], return_attention=True)
    assert out.dtype == dtype and all(a.dtype == dtype for a in attention)
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.15)
    torch.testing.assert_close(
        low(query.to(dtype), [r.to(dtype) for r in responses]).float(), expected, rtol=0.05, atol=0.15
    )


@pytest.mark.parametrize("batch", [1, 4])
def test_any_batch_size(batch):
    module = randomise_norms(make_cnl())
    query, responses = make_inputs(batch=batch)
    assert module(query, responses).shape == query.shape


def test_cnl_rejects_wrong_number_of_responses():
    module = make_cnl()
    query, responses = make_inputs()
    with pytest.raises(ValueError, match="expected 3 response maps, got 2"):
        module(query, responses[:2])


@pytest.mark.parametrize("order", ["paper", "reassociated"])
def test_every_order_returns_the_same_attention_maps(order):
    module = randomise_norms(make_cnl())
    query, responses = make_inputs()
    expected_out, expected_maps = configure_attention(module, "paper")(query, responses, return_attention=True)
    out, maps = configure_attention(module, order)(query, responses, return_attention=True)
    torch.testing.assert_close(out, expected_out, rtol=1e-4, atol=1e-4)
    for a, b in zip(maps, expected_maps):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_reassociated_gradients_match_the_papers_order():
    module = randomise_norms(make_cnl(torch.float64)).train()
    query, responses = make_inputs(dtype=torch.float64)
    grads = {}
    for order in ("paper", "reassociated"):
        module.zero_grad()
        inputs = [t.clone().requires_grad_() for t in [query, *responses]]
        configure_attention(module, order)(inputs[0], inputs[1:]).square().sum().backward()
        grads[order] = [p.grad.clone() for p in module.parameters()] + [t.grad for t in inputs]
    for a, b in zip(grads["paper"], grads["reassociated"]):
        torch.testing.assert_close(a, b)


def test_auto_order_picks_the_cheaper_per_shape():
    # ResNet-50 at 448: a 14x14 query against 56x56x512 and 28x28x1024 responses, c = 256.
    assert reassociated_macs(196, 3136, 512, 256) < paper_order_macs(196, 3136, 512, 256)
    assert use_reassociated("auto", 196, 3136, 512, 256) and use_reassociated("auto", 196, 784, 1024, 256)
    # NL: the query is its own response (Nq = Nr) and C = 2c, so the paper's order is cheaper.
    assert not use_reassociated("auto", 784, 784, 1024, 512)
    with pytest.raises(ValueError, match="unknown attention order 'fast'"):
        use_reassociated("fast", 1, 1, 1, 1)


def fused_and_reference(module, device, dtype, memory_format):
    """``module`` forced onto the fused branch and a copy on bmm + softmax, on ``device``."""
    fused = configure_attention(randomise_norms(module), use_sdpa=True).train()
    fused = fused.to(device, dtype).to(memory_format=memory_format)
    return fused, configure_attention(copy.deepcopy(fused), use_sdpa=False)


def feature_map(shape, device, dtype, memory_format):
    return torch.randn(shape, device=device, dtype=dtype).to(memory_format=memory_format).requires_grad_()


LAYOUTS = [
    pytest.param(dtype, memory_format, id=f"{str(dtype)[6:]}-{str(memory_format)[6:]}")
    for dtype in (torch.float32, torch.bfloat16)
    for memory_format in (torch.contiguous_format, torch.channels_last)
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, memory_format", LAYOUTS)
@pytest.mark.parametrize("order", ["paper", "reassociated"])
def test_the_fused_branch_runs_a_fused_kernel_forward_and_backward(device, dtype, memory_format, order):
    torch.manual_seed(0)
    nl, nl_reference = fused_and_reference(NonLocal2d(16, order=order), device, dtype, memory_format)
    cnl_module, cnl_reference = fused_and_reference(
        CrossLayerNonLocal(32, [16, 32], inner_channels=8, order=order), device, dtype, memory_format
    )
    x = feature_map((2, 16, 6, 5), device, dtype, memory_format)
    query, responses = (
        feature_map((2, 32, 3, 2), device, dtype, memory_format),
        [
            feature_map((2, 16, 6, 5), device, dtype, memory_format),
            feature_map((2, 32, 4, 3), device, dtype, memory_format),
        ],
    )
    with sdpa_kernel(FUSED):
        outputs = [nl(x), cnl_module(query, responses)]
        sum(out.float().square().sum() for out in outputs).backward()
    tolerance = {"rtol": 0.05, "atol": 0.15} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(outputs[0], nl_reference(x), **tolerance)
    torch.testing.assert_close(outputs[1], cnl_reference(query, responses), **tolerance)
    assert all(torch.isfinite(t.grad).all() for t in [x, query, *responses])


@pytest.mark.parametrize("device", DEVICES)
def test_the_nl_baselines_blocks_run_fused_in_a_train_step(device):
    """The model path: theta's tokens and the phi/g maps come from the backbone's layers."""
    model = cnl.create_model("resnet18_nl5", num_classes=4, width=8).to(device).train()
    images = torch.randn(2, 3, 64, 64, device=device)
    with sdpa_kernel(FUSED):
        nn.functional.cross_entropy(model(images), torch.tensor([0, 3], device=device)).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
