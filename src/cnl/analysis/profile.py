"""Parameters, multiply-accumulates and attention memory, side by side with Table 2.

Counting runs on the meta device: shapes only, no arithmetic, so ResNet-101 + 5NL at
448x448 costs milliseconds. torch.utils.flop_counter counts convolutions, linear layers
and matrix products; we add normalisation layers (one multiply-add per element) so that
``macs`` covers every layer, as the paper's column does.

Two conventions:
- ``macs``: the layers (conv, linear, norm), without the attention products. Within
  about 0.03e10 of the paper's printed "Flops (x10^9)", which is really MACs in 10^10.
- ``macs_all``: everything, the attention products ``theta phi^T`` and ``A g`` included.

Both count the paper's order of operations (phi and g convolve the responses). ``macs_fast``
counts what our modules run by default (``order="auto"``: the exact reassociated product
where it is cheaper), everything included.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnl.analysis.table2 import TABLE2
from cnl.errors import InvalidValue
from cnl.models import create_model
from cnl.models.plug import plugged
from cnl.nn import DotProductAttention, configure_attention
from cnl.tables import Table

ATTENTION_BYTES_PER_ELEMENT = 4  # float32 maps


def _norm_flops(input_shape: torch.Size, *args: object, out_shape: object = None, **kwargs: object) -> int:
    # Scale and shift: one multiply-add per element, as a folded inference norm costs.
    return 2 * math.prod(input_shape)


NORM_OPS = {
    torch.ops.aten.native_batch_norm: _norm_flops,
    torch.ops.aten._native_batch_norm_legit: _norm_flops,
    torch.ops.aten._native_batch_norm_legit_no_training: _norm_flops,
}


@dataclass
class ModelProfile:
    """Counts of one model: parameters, MACs in both conventions, attention bytes, Table 2's values."""

    model: str
    params: int
    macs: int
    macs_all: int
    macs_fast: int
    attention_bytes: int
    img_size: int
    num_classes: int
    paper_params: float | None
    paper_flops: float | None
    # CNL only: the layer MACs when theta runs once per response, as the authors' code does.
    authors_macs: int | None

    def to_json(self) -> dict:
        return asdict(self)


def _attention_modules(model: nn.Module) -> list[DotProductAttention]:
    return [m for m in model.modules() if isinstance(m, DotProductAttention)]


def _count(model: nn.Module, img_size: int, custom: dict | None = None) -> FlopCounterMode:
    counter = FlopCounterMode(display=False, custom_mapping=custom or {})
    with counter, torch.no_grad():
        model(torch.empty(1, 3, img_size, img_size, device="meta"))
    return counter


def profile_model(name: str, img_size: int = 448, num_classes: int = 200, **overrides: Any) -> ModelProfile:
    """Count one image's forward pass of ``name`` (with ``create_model``'s ``overrides``) in eval mode."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **overrides).eval()
    fast_total = _count(model, img_size, NORM_OPS).get_total_flops()
    configure_attention(model, order="paper")
    attention_elements: list[int] = []

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        query, key = inputs[0], inputs[1]
        attention_elements.append(query.shape[1] * key.shape[2])  # [B, Nq, E] x [B, E, Nr]

    handles = [m.register_forward_hook(record) for m in _attention_modules(model)]
    counter = _count(model, img_size, NORM_OPS)
    for handle in handles:
        handle.remove()

    by_module = counter.get_flop_counts()
    # Leaf modules named "...attention" are exactly the DotProductAttention instances.
    attention_flops = sum(sum(ops.values()) for key, ops in by_module.items() if key.endswith(".attention"))
    total = counter.get_total_flops()
    theta = sum(sum(ops.values()) for key, ops in by_module.items() if key.endswith(".cnl.theta")) // 2
    macs = (total - attention_flops) // 2
    paper = TABLE2.get(name, (None, None))
    plug = plugged(model)
    cross_layer = plug.cnl if plug is not None else None
    return ModelProfile(
        model=name,
        params=sum(p.numel() for p in model.parameters()),
        macs=macs,
        macs_all=total // 2,
        macs_fast=fast_total // 2,
        attention_bytes=sum(attention_elements) * ATTENTION_BYTES_PER_ELEMENT,
        img_size=img_size,
        num_classes=num_classes,
        paper_params=paper[0],
        paper_flops=paper[1],
        authors_macs=macs + (len(cross_layer.phi) - 1) * theta if cross_layer is not None else None,
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(profiles: list[ModelProfile]) -> str:
    """A Markdown table: ours beside the paper's, in the paper's units."""
    header = ["model", "params (1e7)", "paper", "MACs layers (1e10)", "paper 'Flops'", "MACs all (1e10)"]
    table = Table.of(
        [*header, "MACs ours (1e10)", "attention maps (MB/img)"],
        [
            [p.model, f"{p.params / 1e7:.2f}", _cell(p.paper_params), f"{p.macs / 1e10:.3f}", _cell(p.paper_flops),
             f"{p.macs_all / 1e10:.3f}", f"{p.macs_fast / 1e10:.3f}", f"{p.attention_bytes / 2**20:.2f}"]
            for p in profiles
        ],
    )  # fmt: skip
    lines = [table.markdown()]
    first = profiles[0]
    lines += [
        "",
        f"One {first.img_size}x{first.img_size} image, {first.num_classes} classes. 'MACs layers' counts conv, "
        "linear and norm layers (the paper's convention); 'MACs all' adds the attention products; "
        "'MACs ours' is everything our modules compute (phi/g reassociated where cheaper); "
        "attention maps are float32.",
    ]
    for p in profiles:
        if p.authors_macs is not None:
            lines.append(
                f"{p.model}: theta is shared, so it runs once; the authors' code runs it once per response, "
                f"which counts {p.authors_macs / 1e10:.3f}e10 (paper: {_cell(p.paper_flops)})."
            )
    return "\n".join(lines)


def format_placements(name: str, img_size: int = 448, num_classes: int = 200) -> str:
    """The modules a model's NL blocks and CNL module sit at, in forward order, with the
    shape each outputs for one ``img_size`` image and the map the module sees."""
    from cnl.analysis.attention import as_map
    from cnl.models.plug import record_outputs, site_roles

    model = create_model(name, num_classes=num_classes)
    fixed = getattr(model, "pretrained_cfg", {}).get("fixed_input_size")
    size = getattr(model, "pretrained_cfg", {}).get("input_size", (3, img_size, img_size))
    if fixed and size[-1] != img_size:
        raise InvalidValue(f"{name} takes {size[-1]}x{size[-1]} images only: use --img-size {size[-1]}")
    precedence = ("NL", "response", "query")  # a site of two roles shows the later one
    roles = dict(sorted(site_roles(model), key=lambda item: precedence.index(item[1])))
    if not roles:
        return f"{name}: no NL or CNL module"
    order = [n for n, _ in model.named_modules()]
    names = sorted(roles, key=order.index)
    outputs = record_outputs(model, names, torch.zeros(1, 3, img_size, img_size))
    cells = [
        [layer, roles[layer], list(outputs[layer].shape), list(as_map(model, layer, outputs[layer]).shape[1:])]
        for layer in names
    ]
    table = Table.of(["module", "role", "output", "map [C, H, W]"], cells)
    return f"{name} at {img_size}x{img_size}:\n{table.markdown()}"
