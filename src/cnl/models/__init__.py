"""The paper's models on torchvision ResNets, and NL/CNL modules in any torchvision or timm backbone.

The names below are imported on first use: ``cnl.models.names`` (what the parser needs)
loads no torch.
"""

from __future__ import annotations

from cnl.lazy import lazy_attributes

_LAZY = {
    "Plug": "cnl.models.plug",
    "plugged": "cnl.models.plug",
    "create_model": "cnl.models.registry",
    "list_models": "cnl.models.registry",
    "register_model": "cnl.models.registry",
    "ResNet": "cnl.models.resnet",
}
__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
