"""Cross-layer non-local module (CNL), Eq. 3 of Ye et al., "Associating Multi-Scale
Receptive Fields for Fine-Grained Recognition", ICIP 2020.

``CNL(Xq, Xr1..Xrn) = Xq + sum_i BN_i(z(f(theta(Xq), phi_i(Xri)) g_i(Xri)))``

One deep query layer attends to several shallower response layers. ``theta`` and ``z``
are shared by all responses; ``phi_i``, ``g_i`` and ``BN_i`` belong to response i, as in
the authors' release. The attention map of response i has shape ``[HqWq, HriWri]``,
small because the query is the deepest, coarsest map.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from cnl.errors import InvalidValue
from cnl.nn.attention import DotProductAttention, embedded_attention, to_map, to_tokens
from cnl.nn.init import init_attention_block


class CrossLayerNonLocal(nn.Module):
    """Attention from one query feature map to n response feature maps.

    Args:
        query_channels: channels C_q of the query map (and of the output).
        response_channels: channels C_ri of each response map, shallow to deep.
        inner_channels: width c of theta, phi_i and g_i; ``C_q // 8`` by default
            (256 for a ResNet-50 query of 2048 channels, as in the paper).
        order: ``"paper"`` (phi and g convolutions), ``"reassociated"`` (the same product
            without convolving the response maps) or ``"auto"`` (fewer multiply-adds per
            response); see ``cnl.nn.attention.embedded_attention``.
        use_sdpa: fused attention kernels (True), bmm + softmax (False), or per shape (None).
    """

    def __init__(
        self,
        query_channels: int,
        response_channels: Sequence[int],
        inner_channels: int | None = None,
        order: str = "auto",
        use_sdpa: bool | None = None,
    ) -> None:
        super().__init__()
        if not response_channels:
            raise InvalidValue("CrossLayerNonLocal needs at least one response layer")
        inner_channels = inner_channels or query_channels // 8
        if inner_channels < 1:
            raise InvalidValue(f"inner_channels must be >= 1, got {inner_channels} for {query_channels} channels")
        self.query_channels = query_channels
        self.response_channels = list(response_channels)
        self.inner_channels = inner_channels
        self.order = order
        self.theta = nn.Conv2d(query_channels, inner_channels, 1, bias=False)
        self.phi = nn.ModuleList(nn.Conv2d(c, inner_channels, 1, bias=False) for c in response_channels)
        self.g = nn.ModuleList(nn.Conv2d(c, inner_channels, 1, bias=False) for c in response_channels)
        self.attention = DotProductAttention(use_sdpa)
        self.z = nn.Conv2d(inner_channels, query_channels, 1, bias=False)
        self.norm = nn.ModuleList(nn.BatchNorm2d(query_channels) for _ in response_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convs ~ N(0, 0.01), norm weights and biases 0: a new module is the identity."""
        init_attention_block(self)

    def forward(
        self, query: Tensor, responses: Sequence[Tensor], return_attention: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor | None]]:
        """``query [B, Cq, Hq, Wq]``, ``responses[i] [B, C_ri, H_ri, W_ri]`` -> ``[B, Cq, Hq, Wq]``.

        With ``return_attention`` also returns ``[A_1..A_n]``, ``A_i [B, HqWq, H_ri W_ri]``.
        """
        if len(responses) != len(self.phi):
            raise InvalidValue(f"expected {len(self.phi)} response maps, got {len(responses)}")
        height, width = query.shape[-2:]
        # theta is shared, so the query is embedded once, not once per response.
        query_embedding = to_tokens(self.theta(query))
        out = query
        attentions: list[Tensor | None] = []
        for phi, g, norm, response in zip(self.phi, self.g, self.norm, responses):
            aggregated, attention = embedded_attention(
                self.attention, query_embedding, response, phi, g, self.order, return_attention
            )
            out = out + norm(self.z(to_map(aggregated, height, width)))
            attentions.append(attention)
        return (out, attentions) if return_attention else out

    def extra_repr(self) -> str:
        return (
            f"query_channels={self.query_channels}, response_channels={self.response_channels}, "
            f"inner_channels={self.inner_channels}, order={self.order!r}"
        )
