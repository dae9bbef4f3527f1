"""The paper's modules: the non-local block (Eq. 1) and the cross-layer non-local module (Eq. 3)."""

from cnl.nn.attention import ORDERS, DotProductAttention, configure_attention
from cnl.nn.cross_layer import CrossLayerNonLocal
from cnl.nn.non_local import NonLocal2d

__all__ = ["ORDERS", "CrossLayerNonLocal", "DotProductAttention", "NonLocal2d", "configure_attention"]
