"""The pairwise function f and the aggregation shared by the NL and CNL modules.

Both modules of Ye et al., "Associating Multi-Scale Receptive Fields for Fine-Grained
Recognition" (ICIP 2020) use the embedded dot product of Wang et al. (CVPR 2018),
scaled by 1/sqrt(c) before the softmax over response positions, as in the authors'
code (``use_scale=True``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def to_tokens(x: Tensor) -> Tensor:
    """``[B, C, H, W] -> [B, H*W, C]``: one row per position, as X in the paper."""
    return x.flatten(2).transpose(1, 2)


def to_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """``[B, H*W, C] -> [B, C, H, W]``.

    The transpose comes first. The authors' release reshapes ``[B, HW, C]`` straight to
    ``[B, C, H, W]``, which mixes channels and positions; this is the paper's math.
    """
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


class DotProductAttention(nn.Module):
    """``A = softmax(query key^T / sqrt(c))`` over key positions, returns ``A value``.

    A module of its own (without parameters) so that profilers can tell the attention
    products apart from the layers around them.
    """

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """``query [B, Nq, c]``, ``key`` and ``value [B, Nr, c]`` -> ``([B, Nq, c], A or None)``."""
        if not return_attention:
            # Fused kernels never store the [Nq, Nr] map, and use the same 1/sqrt(c).
            return F.scaled_dot_product_attention(query, key, value), None
        scale = query.shape[-1] ** -0.5
        logits = torch.bmm(query, key.transpose(1, 2)) * scale
        # The softmax runs in at least float32 so that bf16/fp16 rows still sum to one.
        attention = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        attention = attention.to(value.dtype)
        return torch.bmm(attention, value), attention
