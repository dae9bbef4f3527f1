"""Initialisation shared by the NL and CNL modules (the authors' code, after Goyal et al.)."""

from __future__ import annotations

from torch import nn

CONV_STD = 0.01


def init_attention_block(module: nn.Module) -> None:
    """Every conv ~ N(0, 0.01); every norm weight and bias 0.

    The zero norm makes the block's residual branch vanish, so inserting it leaves a
    pretrained backbone's output unchanged until training moves the norm.
    """
    for child in module.modules():
        if isinstance(child, nn.Conv2d):
            nn.init.normal_(child.weight, std=CONV_STD)
            if child.bias is not None:
                nn.init.zeros_(child.bias)
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.reset_running_stats()
            nn.init.zeros_(child.weight)
            nn.init.zeros_(child.bias)
