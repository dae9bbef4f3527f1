"""The pairwise function f and the aggregation shared by the NL and CNL modules.

Both modules of Ye et al., "Associating Multi-Scale Receptive Fields for Fine-Grained
Recognition" (ICIP 2020) use the embedded dot product of Wang et al. (CVPR 2018),
scaled by 1/sqrt(c) before the softmax over response positions, as in the authors'
code (``use_scale=True``).

Layout: queries are tokens ``[B, Nq, E]`` (one row per position, as X in the paper);
keys, values and the aggregate stay channels-first ``[B, E, N]``, the layout of a
flattened feature map. The bmm path never materialises a transpose of a response map, so
the gradients that flow back into the backbone keep its layout. The fused path
(``scaled_dot_product_attention``) copies its inputs to token rows first, since its kernels
take rows of stride 1 only (the copy is free under channels_last, where they already are).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnl.errors import InvalidValue


def to_tokens(x: Tensor) -> Tensor:
    """``[B, C, H, W] -> [B, H*W, C]``: one row per position, as X in the paper."""
    return x.flatten(2).transpose(1, 2)


def to_map(aggregate: Tensor, height: int, width: int) -> Tensor:
    """``[B, C, H*W] -> [B, C, H, W]``.

    The aggregate is channels-first, so this is a plain reshape. The authors' release
    holds it as ``[B, HW, C]`` and reshapes that straight to ``[B, C, H, W]``, which mixes
    channels and positions; here the layouts agree, which is the paper's math.
    """
    return aggregate.reshape(*aggregate.shape[:2], height, width)


ORDERS = ("auto", "paper", "reassociated")


class DotProductAttention(nn.Module):
    """``A = softmax(query key * scale)`` over key positions, returns ``value A^T``.

    A module of its own (without parameters) so that profilers can tell the attention
    products apart from the layers around them.

    Args:
        use_sdpa: when the map is not asked for, use
            ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels that never
            store the map) rather than ``bmm`` + softmax + ``bmm``. ``None`` (default)
            decides per call: fused only when the map would be larger than the keys
            (``Nq > E``), as for NL's N x N maps. CNL's deep query makes its maps small,
            and there storing them for the backward pass beats recomputing them (measured
            with ``cnl bench module``; docs/benchmarks.md).
    """

    def __init__(self, use_sdpa: bool | None = None) -> None:
        super().__init__()
        self.use_sdpa = use_sdpa

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, return_attention: bool = False, scale: float | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``query [B, Nq, E]``, ``key [B, E, Nr]``, ``value [B, D, Nr]`` -> ``([B, D, Nq], A or None)``.

        ``A [B, Nq, Nr]``; ``scale`` defaults to ``1/sqrt(E)``.
        """
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        fused = self.use_sdpa if self.use_sdpa is not None else query.shape[1] > query.shape[2]
        if fused and not return_attention:
            # Fused kernels read rows of stride 1 and refuse anything else, and PyTorch then
            # falls back silently to the math kernel, which stores the map. A channels-first
            # map gives rows of stride N, so they are copied (a no-op under channels_last).
            # One head as a dimension of its own: ONNX's attention op takes 4-D inputs only.
            q, k, v = (t.contiguous().unsqueeze(1) for t in (query, key.transpose(1, 2), value.transpose(1, 2)))
            out = F.scaled_dot_product_attention(q, k, v, scale=scale).squeeze(1)
            return out.transpose(1, 2), None
        logits = torch.bmm(query, key) * scale
        # The softmax runs in at least float32 so that bf16/fp16 rows still sum to one.
        attention = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        attention = attention.to(value.dtype)
        return torch.bmm(value, attention.transpose(1, 2)), attention

    def extra_repr(self) -> str:
        return f"use_sdpa={self.use_sdpa}"


def paper_order_macs(nq: int, nr: int, cr: int, c: int) -> int:
    """phi and g over the response, then ``theta phi^T`` and ``A g``."""
    return 2 * nr * cr * c + 2 * nq * nr * c


def reassociated_macs(nq: int, nr: int, cr: int, c: int) -> int:
    """``(theta W_phi) Xr^T`` and ``(A Xr) W_g^T``: no convolution over the response."""
    return 2 * nq * nr * cr + 2 * nq * cr * c


def use_reassociated(order: str, nq: int, nr: int, cr: int, c: int) -> bool:
    """``auto`` picks the order with fewer multiply-adds for these shapes."""
    if order not in ORDERS:
        raise InvalidValue(f"unknown attention order {order!r}; valid orders: {', '.join(ORDERS)}")
    if order == "auto":
        return reassociated_macs(nq, nr, cr, c) < paper_order_macs(nq, nr, cr, c)
    return order == "reassociated"


def embedded_attention(
    attention: DotProductAttention,
    query_embedding: Tensor,
    response: Tensor,
    phi: nn.Module,
    g: nn.Module,
    order: str = "auto",
    return_attention: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``f(theta(Xq), phi(Xr)) g(Xr)`` of Eq. 2, channels-first ``[B, c, Nq]``, and A if asked for.

    ``query_embedding`` is ``theta(Xq)`` as tokens ``[B, Nq, c]``; ``response`` is
    ``Xr [B, Cr, Hr, Wr]``. phi and g are bias-free 1x1 convolutions, i.e. matrices
    ``W [c, Cr]``, so ``theta phi(Xr)^T = (theta W_phi) Xr^T`` and ``A g(Xr) = (A Xr) W_g^T``
    exactly: when the query has far fewer positions than the response (CNL's deep query),
    the reassociated order skips both convolutions over the large response map.
    """
    inner, channels = phi.weight.shape[:2]  # type: ignore[index]
    nq, nr = query_embedding.shape[1], response.shape[-2] * response.shape[-1]
    if not use_reassociated(order, nq, nr, channels, inner):
        return attention(query_embedding, phi(response).flatten(2), g(response).flatten(2), return_attention)
    flat = response.flatten(2)
    key_query = torch.matmul(query_embedding, phi.weight.reshape(inner, channels))  # type: ignore[operator]
    aggregated, attention_map = attention(key_query, flat, flat, return_attention, scale=inner**-0.5)
    return torch.matmul(g.weight.reshape(inner, channels), aggregated), attention_map  # type: ignore[operator]


KEEP = object()


def configure_attention(model: nn.Module, order: str | None = None, use_sdpa: object = KEEP) -> nn.Module:
    """Set the attention order and/or kernel (``use_sdpa``: True, False or None = auto) of
    every NL and CNL module in ``model``; arguments left out keep their value."""
    if order is not None and order not in ORDERS:
        raise InvalidValue(f"unknown attention order {order!r}; valid orders: {', '.join(ORDERS)}")
    for module in model.modules():
        if (
            order is not None
            and hasattr(module, "order")
            and any(isinstance(child, DotProductAttention) for child in module.children())
        ):
            setattr(module, "order", order)  # noqa: B010  (NonLocal2d or CrossLayerNonLocal)
        if use_sdpa is not KEEP and isinstance(module, DotProductAttention):
            module.use_sdpa = use_sdpa  # type: ignore[assignment]
    return model
