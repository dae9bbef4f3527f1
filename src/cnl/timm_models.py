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

from typing import Any

from timm.models import generate_default_cfgs, get_pretrained_cfg, register_model

from cnl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RESIZE_RATIO
from cnl.engine.hub import GENERIC
from cnl.models import create_model, list_models
from cnl.models.weights import current_keys

NAMES = [name for name in list_models() if name.endswith(("_nl5", "_cnl5"))]
PAPER_WEIGHTS = "IMAGENET1K_V1"  # what every preset names; torchvision's DEFAULT is V2 for ResNet-50 and up
TIMM_FAMILIES = (
    "resnet50d",
    "convnext_tiny",
    "efficientnet_b0",
    "regnety_016",
    "swin_tiny_patch4_window7_224",
    "vit_small_patch16_224",
)
FOREIGN = {f"{family}{variant}": family for family in TIMM_FAMILIES for variant in ("_nl5", "_cnl5")}


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
        GENERIC: {"url": "", "architecture": GENERIC},
    }
)


def _hub_model(target: str, num_classes: int, hub_cfg: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """A model exported by ``cnl export --format hf``, which timm found by ``local-dir:`` or
    ``hf-hub:``: built as it was trained, with its own weights (nothing else is downloaded)."""
    from cnl.engine.hub import HUB_PREFIX, read_hub

    location = hub_cfg["file"] if hub_cfg["source"] == "local-dir" else HUB_PREFIX + hub_cfg["hf_hub_id"]
    _, weights = read_hub(location)
    model = create_model(kwargs.pop("cnl_name", target), num_classes=num_classes, **kwargs)
    model.load_state_dict(current_keys(weights))
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
        hub = isinstance(given_cfg, dict) and given_cfg.get("source") in ("local-dir", "hf-hub")
        if num_classes is None:
            num_classes = given_cfg["num_classes"] if hub else 1000
        if hub and pretrained:
            return _hub_model(target, num_classes, given_cfg, kwargs)
        weights = kwargs.pop("weights", pretrained_weights if pretrained else None)
        model = create_model(kwargs.pop("cnl_name", target), num_classes=num_classes, weights=weights, **kwargs)
        if cfg is not None:
            model.pretrained_cfg = model.default_cfg = cfg
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
    _entrypoint(GENERIC, "resnet50_cnl5", PAPER_WEIGHTS, "any cnl model, named by cnl_name (cnl export --format hf).")
)
