"""Non-local block (NL), Eq. 1 of Ye et al., ICIP 2020; Wang et al., CVPR 2018.

``NL(X) = X + BN(z(f(theta(X), phi(X)) g(X)))`` with the scaled embedded dot product
for ``f``, as in the NL baseline the CNL paper compares against.
"""

from __future__ import annotations

from torch import Tensor, nn

from cnl.errors import InvalidValue
from cnl.nn.attention import DotProductAttention, embedded_attention, to_map, to_tokens
from cnl.nn.init import init_attention_block


class NonLocal2d(nn.Module):
    """Self-attention over the positions of one feature map.

    Args:
        channels: channels C of the input (and output).
        inner_channels: width c of theta, phi and g; ``C // 2`` by default.
        order: ``"paper"``, ``"reassociated"`` or ``"auto"`` as in CrossLayerNonLocal;
            with the query as its own response, ``auto`` keeps the paper's order.
        use_sdpa: fused attention kernels (True), bmm + softmax (False), or per shape (None).
    """

    def __init__(
        self, channels: int, inner_channels: int | None = None, order: str = "auto", use_sdpa: bool | None = None
    ) -> None:
        super().__init__()
        inner_channels = inner_channels or channels // 2
        if inner_channels < 1:
            raise InvalidValue(f"inner_channels must be >= 1, got {inner_channels} for {channels} channels")
        self.channels = channels
        self.inner_channels = inner_channels
        self.order = order
        self.theta = nn.Conv2d(channels, inner_channels, 1, bias=False)
        self.phi = nn.Conv2d(channels, inner_channels, 1, bias=False)
        self.g = nn.Conv2d(channels, inner_channels, 1, bias=False)
        self.attention = DotProductAttention(use_sdpa)
        self.z = nn.Conv2d(inner_channels, channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convs ~ N(0, 0.01), norm weight and bias 0: a new block is the identity."""
        init_attention_block(self)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        """``x [B, C, H, W]`` -> same shape; with ``return_attention``, also ``A [B, HW, HW]``."""
        height, width = x.shape[-2:]
        aggregated, attention = embedded_attention(
            self.attention, to_tokens(self.theta(x)), x, self.phi, self.g, self.order, return_attention
        )
        out = x + self.norm(self.z(to_map(aggregated, height, width)))
        return (out, attention) if return_attention else out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inner_channels={self.inner_channels}, order={self.order!r}"
