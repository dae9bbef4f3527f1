"""Model names and ``create_model``, in the manner of timm."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from cnl.errors import InvalidArgument, InvalidValue, excerpt
from cnl.models.backbones import create_foreign, is_foreign
from cnl.models.names import CNL, FOREIGN_OVERRIDES, NL, OVERRIDES
from cnl.models.plug import name_of
from cnl.models.resnet import ARCHITECTURES, create_resnet, paper_placement
from cnl.models.weights import LoadReport, check_weights, load_pretrained, wants_weights

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_YOURS: dict[str, Callable[..., nn.Module]] = {}  # models of the user's own (register_model)


def _variants(arch: str) -> dict[str, dict[str, Any]]:
    """The three models of Table 2 for one backbone: plain, five NL blocks, one CNL with five responses."""
    query, responses = paper_placement(arch)
    return {
        arch: {},
        f"{arch}{NL}": {"nl_layers": responses},
        f"{arch}{CNL}": {"query": query, "responses": responses},
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
    return sorted(n for n in (*_MODELS, *_YOURS) if fnmatch.fnmatch(n, pattern))


def register_model(name: str, factory: Callable[..., nn.Module] | None = None) -> Any:
    """Make ``name`` a model of your own that ``create_model`` builds, and so ``fit``, ``cnl
    eval``, ``predict``, ``export`` and ``load_model`` of its checkpoints: ``factory(num_classes,
    **overrides)`` returns the module. Usable as a decorator (``@register_model("my_net")``).
    On the command line, ``--import MODULE`` imports the module that registers it."""
    if name in _MODELS or ":" in name or not name:
        raise InvalidValue(f"cannot register {name!r}: it is one of cnl's names, empty, or holds ':'")

    def register(made: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _YOURS[name] = made
        return made

    return register if factory is None else register(factory)


def unknown_model(name: str) -> str:
    """The error for a model name nobody registered: the nearest names, where to find the rest."""
    import difflib

    near = difflib.get_close_matches(str(name), list_models(), 3, 0.6)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    return (
        f"unknown model {excerpt(name)}; {hint}cnl list-models lists them; tv:NAME or timm:NAME is any torchvision "
        "or timm classifier; a model of your own: cnl.register_model, and --import its module"
    )


def create_model(name: str, num_classes: int = 1000, weights: str | Path | None = None, **overrides: Any) -> Any:
    """Build a model: one of ours, or any torchvision or timm classifier with NL/CNL modules.

    Args:
        name: ours (``"resnet50"``, ``"resnet50_nl5"``, ``"resnet50_cnl5"``, see
            ``list_models``), ``"tv:MODEL"`` (torchvision) or ``"timm:MODEL"``, each
            optionally with ``_nl5`` or ``_cnl5``: e.g. ``"timm:convnext_tiny_cnl5"``.
        num_classes: outputs of the new classifier.
        weights: torchvision weights name ("IMAGENET1K_V1", "DEFAULT") for the backbone,
            ``"pretrained"`` for timm's own, or a local ``.pth``/``.safetensors`` file;
            None or ``"none"`` for random init.
        **overrides: ``query`` and ``responses`` (module names such as "layer4.2"),
            ``nl_layers``, ``inner_channels``; ours also ``drop_rate`` and ``width``;
            ``img_size``, the input size, for backbones built for one size (ViT, Swin: timm
            resizes their position embeddings); our ResNets take any size and ignore it.
    """
    weights = weights if wants_weights(weights) else None
    if is_foreign(name):
        unknown = sorted(set(overrides) - set(FOREIGN_OVERRIDES))
        if unknown:
            raise InvalidArgument(f"unknown arguments {unknown} for {name}; valid: {', '.join(FOREIGN_OVERRIDES)}")
        return create_foreign(name, num_classes, weights, **overrides)
    if name in _YOURS:
        return _your_model(name, num_classes, weights, overrides)
    if name not in _MODELS:
        raise InvalidValue(unknown_model(name))
    overrides.pop("img_size", None)  # a ResNet takes any input size
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise InvalidArgument(f"unknown arguments {unknown} for {name}; valid overrides: {', '.join(OVERRIDES)}")
    model: Any = _MODELS[name](num_classes, **overrides)
    if weights is not None:
        load_pretrained(model, name_of(model), weights)
    return model


def _your_model(name: str, num_classes: int, weights: str | Path | None, overrides: dict[str, Any]) -> nn.Module:
    """A model of the user's own (``register_model``), with a weights file's state dict when given."""
    overrides.pop("img_size", None)
    model = _YOURS[name](num_classes, **overrides)
    if weights is not None:
        _your_model_weights(model, name, weights)
    return model


def _your_model_weights(model: nn.Module, name: str, weights: str | Path) -> None:
    from cnl.models.weights import is_weights_file, read_state_dict

    if not is_weights_file(weights):
        raise InvalidValue(f"{name} is a model of your own: its weights are a local file, not {weights!r}")
    model.load_state_dict(read_state_dict(weights))


def load_weights(model: nn.Module, name: str, weights: str | Path, classes: list[str] | None = None) -> LoadReport:
    """Load ``weights`` into ``model`` (built by ``create_model(name)`` without weights): what
    was loaded, skipped (a head of other classes) and left new (the NL/CNL modules). timm's
    own pretrained weights are loaded by timm when the model is built, not here."""
    from cnl.models.backbones import PRETRAINED, ForeignName, head_name

    if name in _YOURS:
        report = LoadReport(str(weights))
        _your_model_weights(model, name, weights)
        report.loaded = len(model.state_dict())
        return report
    if not is_foreign(name):
        return load_pretrained(model, name_of(model), weights, classes=classes)
    if str(weights) == PRETRAINED:
        raise InvalidValue(f"timm's pretrained weights of {name} are loaded when the model is built")
    backbone = ForeignName.parse(name).backbone
    return load_pretrained(model, backbone, weights, head=head_name(model) + ".", classes=classes)


def check_input_size(name: str, img_size: int, weights: str | Path | None = None) -> None:
    """An error, before any data is read, when model ``name`` cannot take ``img_size`` px
    (a fixed-size backbone whose pretrained weights pin its size); ours take any size."""
    if is_foreign(name):
        from cnl.models.backbones import check_input_size as check_backbone

        check_backbone(name, img_size, weights if wants_weights(weights) else None)


def check_model(
    name: str, img_size: int, weights: str | Path | None = None, eval_crop: int | None = None, **overrides: Any
) -> None:
    """Before any data is read, each in one line: an unknown model or layer name, an input
    size the backbone cannot take (in training or, ``eval_crop``, in evaluation), a weights
    name or file that does not exist. The model is built on the meta device (no memory, no
    weights)."""
    import torch

    check_input_size(name, img_size, weights)
    if eval_crop not in (None, img_size) and is_foreign(name):
        from cnl.models.backbones import ForeignName, fixed_size

        spec = ForeignName.parse(name)
        if fixed_size(spec.backbone, spec.source) is not None:
            raise InvalidValue(
                f"{name} is built for one input size ({img_size} px, --img-size): --eval-crop {eval_crop} "
                "would not fit it; leave --eval-crop unset"
            )
    with torch.device("meta"):
        model = create_model(name, num_classes=2, img_size=img_size, **overrides)
    if not wants_weights(weights) or name in _YOURS:
        return
    if is_foreign(name):
        from cnl.models.backbones import check_foreign_weights

        check_foreign_weights(name, weights)  # type: ignore[arg-type]
    else:
        check_weights(name_of(model), weights)  # type: ignore[arg-type]
