"""Registration of the NL and CNL models in timm, so that ``timm.create_model("resnet50_cnl5")``
works. Imported by ``import cnl`` when timm is installed (from a checkout:
``pip install -e '.[timm]'``).

``pretrained=True`` gives our ResNets torchvision's IMAGENET1K_V1 backbone weights, the
ones every preset in configs/ names (the original ResNet weights the paper fine-tuned),
not torchvision's DEFAULT (V2 for ResNet-50/101/152); ``weights=...`` picks others.

Only the ``_nl5`` and ``_cnl5`` names are registered: timm keeps its own plain models. Our
ResNets, and the timm families this project tests with modules placed by module name
(``timm.create_model("convnext_tiny_cnl5")`` is ``cnl.create_model("timm:convnext_tiny_cnl5")``;
any other timm model is reached through ``cnl.create_model("timm:NAME_cnl5")``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import register_notrace_module
from timm.models import FeatureInfo, generate_default_cfgs, get_pretrained_cfg, register_model
from torch import Tensor, nn

from cnl import upgrades
from cnl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RESIZE_RATIO
from cnl.engine.hub import GENERIC
from cnl.models import create_model, list_models
from cnl.models.names import VARIANTS
from cnl.nn import CrossLayerNonLocal, NonLocal2d

NAMES = [name for name in list_models() if name.endswith(VARIANTS)]
PAPER_WEIGHTS = "IMAGENET1K_V1"  # what every preset names; torchvision's DEFAULT is V2 for ResNet-50 and up
TIMM_FAMILIES = (
    "resnet50d",
    "convnext_tiny",
    "efficientnet_b0",
    "regnety_016",
    "swin_tiny_patch4_window7_224",
    "vit_small_patch16_224",
)
FOREIGN = {f"{family}{variant}": family for family in TIMM_FAMILIES for variant in VARIANTS}


def _foreign_cfg(name: str) -> dict[str, Any]:
    """timm's configuration of the backbone, with no weights of its own to fetch (the
    backbone's come through timm when pretrained=True)."""
    cfg = get_pretrained_cfg(FOREIGN[name])
    return {**(cfg.to_dict() if cfg is not None else {}), "url": "", "hf_hub_id": None, "architecture": name}


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


default_cfgs = generate_default_cfgs(
    {
        **{name: _cfg(name) for name in NAMES},
        **{name: _foreign_cfg(name) for name in FOREIGN},
        GENERIC: {**_cfg("resnet50_cnl5"), "architecture": GENERIC},
    }
)


class FeatureMaps(nn.Module):
    """``features_only=True``: the maps at the modules of the model's ``feature_info`` (stem
    and stages), a list, the NL/CNL modules running inside the stages as in the classifier.
    The whole model is kept (its keys under ``model.``), so the modules train with the rest."""

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        info = list(model.feature_info)  # type: ignore[arg-type]
        indices = tuple(range(len(info))) if out_indices is None else tuple(out_indices)
        self.model = model
        self.feature_info = FeatureInfo(info, indices)
        self.pretrained_cfg = self.default_cfg = getattr(model, "pretrained_cfg", {})
        self.output_fmt = getattr(model, "output_fmt", "NCHW")
        self.names = [info[i]["module"] for i in indices]

    def forward(self, x: Tensor) -> list[Tensor]:
        found: dict[str, Tensor] = {}
        handles = [
            self.model.get_submodule(name).register_forward_hook(
                lambda module, args, output, name=name: found.__setitem__(name, output)
            )
            for name in self.names
        ]
        try:
            self.model.forward_features(x)  # type: ignore[operator]
        finally:
            for handle in handles:
                handle.remove()
        return [found[name] for name in self.names]


def _hub_model(target: str, num_classes: int, hub_cfg: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """A model exported by ``cnl export --format hf``, which timm found by ``local-dir:`` or
    ``hf-hub:``: built as it was trained, with its own weights (nothing else is downloaded)."""
    from cnl.engine.hub import HUB_PREFIX, read_hub

    location = hub_cfg["file"] if hub_cfg["source"] == "local-dir" else HUB_PREFIX + hub_cfg["hf_hub_id"]
    _, weights = read_hub(location)
    model = create_model(kwargs.pop("cnl_name", target), num_classes=num_classes, **kwargs)
    model.load_state_dict(upgrades.state_keys(weights))
    model.pretrained_cfg = model.default_cfg = hub_cfg
    return model


def _entrypoint(name: str, target: str, pretrained_weights: str, doc: str, cfg: dict[str, Any] | None = None):
    """timm's entry point ``name``: ``cnl.create_model(target)``, with ``pretrained_weights``
    when pretrained=True (a Hub model's own weights when timm found it by ``local-dir:`` or
    ``hf-hub:``); ``cfg`` replaces the model's pretrained_cfg (ours), None keeps timm's (a
    timm backbone's own)."""

    def entrypoint(pretrained: bool = False, num_classes: int | None = None, **kwargs: Any) -> Any:
        given_cfg = kwargs.pop("pretrained_cfg", None)
        for key in ("pretrained_cfg_overlay", "cache_dir", "pretrained_model_args"):
            kwargs.pop(key, None)
        if kwargs.get("drop_rate") is None:
            kwargs.pop("drop_rate", None)
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        features = {key: kwargs.pop(key) for key in ("features_only", "out_indices", "feature_cls") if key in kwargs}
        hub = isinstance(given_cfg, dict) and given_cfg.get("source") in ("local-dir", "hf-hub")
        if num_classes is None:
            num_classes = given_cfg["num_classes"] if hub else 1000
        with torch.device(device) if device is not None else contextlib.nullcontext():
            if hub and pretrained:
                model = _hub_model(target, num_classes, given_cfg, kwargs)
            else:
                weights = kwargs.pop("weights", pretrained_weights if pretrained else None)
                name = kwargs.pop("cnl_name", target)
                model = create_model(name, num_classes=num_classes, weights=weights, **kwargs)
                if cfg is not None:
                    model.pretrained_cfg = model.default_cfg = cfg
        if dtype is not None:
            model.to(dtype)
        if features.pop("features_only", False):
            model = FeatureMaps(model, features.get("out_indices"))
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = doc
    return entrypoint


for _name in NAMES:
    _doc = f"cnl's {_name} (torchvision's {PAPER_WEIGHTS} backbone weights when pretrained=True)."
    globals()[_name] = register_model(_entrypoint(_name, _name, PAPER_WEIGHTS, _doc, _cfg(_name)))
for _name in FOREIGN:
    _doc = f"timm's {FOREIGN[_name]} with cnl's modules (timm's weights when pretrained=True)."
    globals()[_name] = register_model(_entrypoint(_name, f"timm:{_name}", "pretrained", _doc))
# Any other cnl model (a plain ResNet, a tv: backbone, ...) exported in the Hub format: its
# config.json names it in model_args (cnl_name).
globals()[GENERIC] = register_model(
    _entrypoint(
        GENERIC, "resnet50_cnl5", PAPER_WEIGHTS, "any cnl model, named by cnl_name (cnl export --format hf); "
        "resnet50_cnl5 by default.", {**_cfg("resnet50_cnl5"), "architecture": GENERIC},
    )
)  # fmt: skip
# timm's FX tracing treats the modules as leaves: their forwards choose a computation order
# by the maps' sizes, which a symbolic trace cannot follow; the hooks that call them are traced.
register_notrace_module(CrossLayerNonLocal)
register_notrace_module(NonLocal2d)
