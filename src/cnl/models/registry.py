"""Model names and ``create_model``, in the manner of timm."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from cnl.errors import InvalidArgument, InvalidValue
from cnl.models.backbones import create_foreign, is_foreign
from cnl.models.resnet import ARCHITECTURES, create_resnet, paper_placement
from cnl.models.weights import load_pretrained

_MODELS: dict[str, Callable[..., nn.Module]] = {}
OVERRIDES = ("nl_layers", "query", "responses", "inner_channels", "drop_rate", "width")
FOREIGN_OVERRIDES = ("nl_layers", "query", "responses", "inner_channels", "img_size")


def _variants(arch: str) -> dict[str, dict[str, Any]]:
    """The three models of Table 2 for one backbone: plain, five NL blocks, one CNL with five responses."""
    query, responses = paper_placement(arch)
    return {
        arch: {},
        f"{arch}_nl5": {"nl_layers": responses},
        f"{arch}_cnl5": {"query": query, "responses": responses},
    }


def _builder(arch: str, defaults: dict[str, Any]) -> Callable[..., nn.Module]:
    def build(num_classes: int, **overrides: Any) -> nn.Module:
        return create_resnet(arch, num_classes, **{**defaults, **overrides})

    return build


for _arch in ARCHITECTURES:
    for _name, _defaults in _variants(_arch).items():
        _MODELS[_name] = _builder(_arch, _defaults)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, num_classes: int = 1000, weights: str | Path | None = None, **overrides: Any) -> Any:
    """Build a model: one of ours, or any torchvision or timm classifier with NL/CNL modules.

    Args:
        name: ours (``"resnet50"``, ``"resnet50_nl5"``, ``"resnet50_cnl5"``, see
            ``list_models``), ``"tv:MODEL"`` (torchvision) or ``"timm:MODEL"``, each
            optionally with ``_nl5`` or ``_cnl5``: e.g. ``"timm:convnext_tiny_cnl5"``.
        num_classes: outputs of the new classifier.
        weights: torchvision weights name ("IMAGENET1K_V1", "DEFAULT") for the backbone,
            ``"pretrained"`` for timm's own, or a local ``.pth``/``.safetensors`` file;
            None for random init.
        **overrides: ``query`` and ``responses`` (module names such as "layer4.2"),
            ``nl_layers``, ``inner_channels``; ours also ``drop_rate`` and ``width``;
            ``img_size``, the input size, for backbones built for one size (ViT, Swin: timm
            resizes their position embeddings); our ResNets take any size and ignore it.
    """
    if is_foreign(name):
        unknown = sorted(set(overrides) - set(FOREIGN_OVERRIDES))
        if unknown:
            raise InvalidArgument(f"unknown arguments {unknown} for {name}; valid: {', '.join(FOREIGN_OVERRIDES)}")
        return create_foreign(name, num_classes, weights, **overrides)
    if name not in _MODELS:
        raise InvalidValue(
            f"unknown model {name!r}; valid models: {', '.join(list_models())}, "
            "or any torchvision or timm classifier as tv:NAME or timm:NAME (with _nl5 or _cnl5)"
        )
    overrides.pop("img_size", None)  # a ResNet takes any input size
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise InvalidArgument(f"unknown arguments {unknown} for {name}; valid overrides: {', '.join(OVERRIDES)}")
    model: Any = _MODELS[name](num_classes, **overrides)
    if weights is not None:
        load_pretrained(model, model.arch, weights)
    return model


def check_input_size(name: str, img_size: int, weights: str | Path | None = None) -> None:
    """An error, before any data is read, when model ``name`` cannot take ``img_size`` px
    (a fixed-size backbone whose pretrained weights pin its size); ours take any size."""
    if is_foreign(name):
        from cnl.models.backbones import check_input_size as check_backbone

        check_backbone(name, img_size, weights)
