"""Registration of the NL and CNL models in timm, so that ``timm.create_model("resnet50_cnl5")``
works. Imported by ``import cnl`` when timm is installed (``pip install 'cnl[timm]'``).

Only the ``_nl5`` and ``_cnl5`` names are registered: timm keeps its own plain ResNets.
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model

from cnl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RESIZE_RATIO
from cnl.models import FineGrainedResNet, create_model, list_models

NAMES = [name for name in list_models() if name.endswith(("_nl5", "_cnl5"))]


def _cfg(name: str) -> dict[str, Any]:
    """timm's pretrained configuration: the paper's 448 px input and ImageNet statistics."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 448, 448),
        "pool_size": (14, 14),
        "crop_pct": 1 / RESIZE_RATIO,
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "architecture": name,
    }


default_cfgs = generate_default_cfgs({name: _cfg(name) for name in NAMES})


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, num_classes: int = 1000, **kwargs: Any) -> FineGrainedResNet:
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        if kwargs.get("drop_rate") is None:
            kwargs.pop("drop_rate", None)
        weights = kwargs.pop("weights", "DEFAULT" if pretrained else None)
        model = create_model(name, num_classes=num_classes, weights=weights, **kwargs)
        model.pretrained_cfg = model.default_cfg = _cfg(name)
        return model

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"cnl's {name} (ImageNet backbone weights when pretrained=True)."
    return entrypoint


for _name in NAMES:
    globals()[_name] = register_model(_entrypoint(_name))
