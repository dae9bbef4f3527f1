"""Any torchvision or timm classifier as a backbone: names, stages, layouts, placements.

``"tv:convnext_tiny"`` is torchvision's model, ``"timm:efficientnet_b0"`` timm's; a suffix
``_nl5`` or ``_cnl5`` places five NL blocks or one CNL module by the paper's rule,
generalised to a backbone's stages (``default_placement``); ``query``, ``responses`` and
``nl_layers`` name modules to place them by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnl.errors import InvalidValue, MissingDependency, MissingFile
from cnl.models.names import CNL, NO_WEIGHTS, VARIANTS
from cnl.models.placement import default_placement
from cnl.models.plug import Site, plug_into, record_outputs, site_channels
from cnl.models.weights import is_weights_file, load_pretrained, torchvision_weights

SOURCES = ("tv", "timm")
CONTAINERS = ("features", "encoder.layers", "trunk_output")  # torchvision's stage containers
PROBE_SIZE = 224  # torchvision's classifiers; timm's take their pretrained_cfg input size


@dataclass(frozen=True)
class ForeignName:
    """A name split: source, backbone, variant ("", "_nl5" or "_cnl5")."""

    source: str
    backbone: str
    variant: str

    @classmethod
    def parse(cls, name: str) -> ForeignName:
        source, _, rest = name.partition(":")
        if source not in SOURCES or not rest:
            raise InvalidValue(f"{name!r}: expected tv:MODEL or timm:MODEL, with an optional _nl5 or _cnl5 suffix")
        variant = next((v for v in VARIANTS if rest.endswith(v)), "")
        return cls(source, rest[: len(rest) - len(variant)], variant)


def is_foreign(name: str) -> bool:
    return name.partition(":")[0] in SOURCES and ":" in name


TORCHVISION_NAMES = {"drop_rate": "dropout", "drop_path": "stochastic_depth_prob", "global_pool": "global_pool"}
TIMM_NAMES = {"drop_rate": "drop_rate", "drop_path": "drop_path_rate", "global_pool": "global_pool"}


def _regularisers(source: str, asked: dict[str, Any]) -> dict[str, Any]:
    """``asked`` (drop_rate, drop_path, global_pool) under the backbone constructor's own names."""
    names = TIMM_NAMES if source == "timm" else TORCHVISION_NAMES
    return {names[key]: value for key, value in asked.items()}


def _refused(source: str, backbone: str, asked: dict[str, Any], error: TypeError) -> str:
    """The constructor took no dropout or stochastic depth (a TypeError that names it)."""
    names = TIMM_NAMES if source == "timm" else TORCHVISION_NAMES
    refused = [key for key in asked if names[key] in str(error)] or list(asked)
    return (
        f"{source}:{backbone} has no {' or '.join(refused)} (its constructor takes no "
        f"{' or '.join(names[k] for k in refused)}); leave it unset for this backbone"
    )


def _torchvision(
    backbone: str,
    num_classes: int,
    weights: str | Path | None,
    img_size: int | None = None,
    regularise: dict[str, Any] | None = None,
) -> nn.Module:
    import torchvision

    if backbone not in torchvision.models.list_models(torchvision.models):
        raise InvalidValue(f"unknown torchvision classifier {backbone!r}; see torchvision.models.list_models()")
    fixed = fixed_size(backbone, "tv")
    resize = img_size is not None and fixed is not None and img_size != fixed
    if resize and weights is not None:
        raise InvalidValue(_fixed_with_weights(backbone, fixed, img_size))
    asked = regularise or {}
    try:
        model = torchvision.models.get_model(
            backbone, num_classes=num_classes, **({"image_size": img_size} if resize else {}),
            **_regularisers("tv", asked),
        )  # fmt: skip
    except TypeError as error:  # dropout or stochastic depth that its constructor has not
        if not asked:
            raise
        raise InvalidValue(_refused("tv", backbone, asked, error)) from error
    if weights is not None:
        load_pretrained(model, backbone, weights, head=head_name(model) + ".")
    return model


def _timm(
    backbone: str,
    num_classes: int,
    weights: str | Path | None,
    img_size: int | None = None,
    regularise: dict[str, Any] | None = None,
) -> nn.Module:
    try:
        import timm
    except ImportError as error:
        raise MissingDependency("timm: models need timm (from a checkout: pip install -e '.[timm]')") from error
    if not timm.list_models(backbone) and backbone not in timm.list_models():
        raise InvalidValue(f"unknown timm model {backbone!r}; see timm.list_models()")
    # A model of fixed input size (ViT, Swin, ...) is told the size: timm resizes its
    # position embeddings (and windows) to it, pretrained weights included.
    options: dict[str, Any] = {"img_size": img_size} if img_size and fixed_size(backbone, "timm") is not None else {}
    asked = regularise or {}
    options.update(_regularisers("timm", asked))
    try:
        if weights == PRETRAINED:
            timm_weights_reachable(backbone)
        model = timm.create_model(backbone, pretrained=weights == PRETRAINED, num_classes=num_classes, **options)
    except TypeError as error:  # a constructor that takes no size, or no drop rates
        if asked and ("img_size" not in options or any(name in str(error) for name in TIMM_NAMES.values())):
            raise InvalidValue(_refused("timm", backbone, asked, error)) from error
        if "img_size" not in options:
            raise
        raise InvalidValue(_takes_no_size(backbone, img_size, error)) from error
    if weights not in (None, PRETRAINED):
        load_pretrained(model, backbone, weights, head=head_name(model) + ".")
    return model


PRETRAINED = "pretrained"  # a timm: backbone's own weights, from the Hugging Face Hub


def check_foreign_weights(name: str, weights: str | Path) -> None:
    """Before any data is read: the weights of a tv:/timm: model exist by that name or file."""
    spec = ForeignName.parse(name)
    if is_weights_file(weights):
        if not Path(weights).is_file():
            raise MissingFile(f"weights file {weights} does not exist")
    elif spec.source == "timm":
        if str(weights) != PRETRAINED:
            raise InvalidValue(
                f"unknown weights {str(weights)!r} for timm:{spec.backbone}; valid: {PRETRAINED} (timm's own), "
                f"{NO_WEIGHTS} (random), or a local file"
            )
        timm_weights_reachable(spec.backbone)
    else:
        torchvision_weights(spec.backbone, str(weights))


HUB_CONNECT_S = 3.0  # how long to try reaching the Hub before saying it cannot be reached


def timm_weights_reachable(backbone: str) -> None:
    """timm's pretrained weights of ``backbone`` are in the Hugging Face cache, or the Hub
    answers; otherwise one line saying so, in seconds, not after the Hub client's retries."""
    import socket
    import urllib.parse

    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.get_pretrained_cfg(backbone)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo or constants.HF_HUB_OFFLINE:
        return  # timm fetches from elsewhere, or offline mode: timm reads the cache and says what is missing
    repo = repo.partition("@")[0]
    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin")):
        return
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_CONNECT_S).close()
    except OSError as error:
        raise MissingFile(
            f"cannot reach {host} for timm's pretrained weights of {backbone} ({repo}): {error.strerror or error}; "
            f"put them in the Hugging Face cache ({constants.HF_HUB_CACHE}), or train from random weights with "
            f"--weights {NO_WEIGHTS}"
        ) from None


def fixed_size(backbone: str, source: str) -> int | None:
    """The input size a backbone is built for when it takes no other (ViT, Swin), else None."""
    if source == "timm":
        import timm

        cfg = timm.get_pretrained_cfg(backbone)
        return int(cfg.input_size[-1]) if cfg is not None and cfg.fixed_input_size else None
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.get_model(backbone)
    size = getattr(model, "image_size", None)
    return int(size) if isinstance(size, int) else None


def _fixed_with_weights(backbone: str, fixed: int | None, img_size: int | None) -> str:
    return (
        f"tv:{backbone} takes {fixed} px with pretrained weights (its position embeddings are fixed), not "
        f"{img_size}: train at {fixed}, or use a timm model (timm:vit_base_patch16_224, ...), whose position "
        "embeddings timm resizes"
    )


def _takes_no_size(backbone: str, img_size: int | None, error: TypeError) -> str:
    return f"timm:{backbone} cannot take {img_size} px input: {error}"


def check_input_size(name: str, img_size: int, weights: str | Path | None) -> None:
    """Before any data is read: an error if backbone ``name`` cannot take ``img_size`` px."""
    spec = ForeignName.parse(name)
    fixed = fixed_size(spec.backbone, spec.source)
    if fixed is None or img_size == fixed:
        return
    if spec.source == "tv":
        if weights is not None:
            raise InvalidValue(_fixed_with_weights(spec.backbone, fixed, img_size))
        return
    import timm

    try:
        with torch.device("meta"):
            timm.create_model(spec.backbone, num_classes=1, img_size=img_size)
    except TypeError as error:
        raise InvalidValue(_takes_no_size(spec.backbone, img_size, error)) from error


def head_name(model: nn.Module) -> str:
    """The classifier: timm's ``pretrained_cfg["classifier"]``, else the last linear layer."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    if isinstance(classifier, str):
        return classifier
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def layout(spec: ForeignName, model: nn.Module) -> tuple[str, int]:
    """The layout of the backbone's block outputs and its prefix tokens, declared per family."""
    if spec.source == "timm":
        if hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed"):
            prefix: int = model.num_prefix_tokens  # type: ignore[assignment]  # timm sets an int
            return "tokens", prefix
        return ("NHWC", 0) if getattr(model, "output_fmt", "NCHW") == "NHWC" else ("NCHW", 0)
    family = type(model).__name__
    if family == "VisionTransformer":
        return "tokens", 1  # the class token
    return ("NHWC", 0) if family == "SwinTransformer" else ("NCHW", 0)


def built_for_one_size(model: nn.Module) -> bool:
    """A backbone that takes one input size (torchvision's ViT: ``image_size``; timm's ViT,
    Swin: ``fixed_input_size``), read from the built model."""
    cfg = getattr(model, "pretrained_cfg", {})
    return isinstance(getattr(model, "image_size", None), int) or bool(cfg.get("fixed_input_size", False))


def probe_input(spec: ForeignName, model: nn.Module, img_size: int | None = None) -> torch.Tensor:
    """The probe's input: ``img_size`` for a backbone built for that one size, else its own default."""
    if img_size is not None and built_for_one_size(model):
        return torch.zeros(1, 3, img_size, img_size)
    size = getattr(model, "pretrained_cfg", {}).get("input_size", (3, PROBE_SIZE, PROBE_SIZE))
    return torch.zeros(1, *size)


def blocks_of(model: nn.Module, name: str) -> list[str]:
    """The blocks inside a stage module: its ``blocks`` container's children, or its children
    when they are all of one type (a stack of blocks); else the module itself."""
    module = model.get_submodule(name)
    inner = getattr(module, "blocks", None)
    if isinstance(inner, (nn.Sequential, nn.ModuleList)) and len(inner):
        return [f"{name}.blocks.{child}" for child, _ in inner.named_children()]
    children = list(module.named_children())
    # One child is a block's body (torchvision's InvertedResidual.block), not a stack:
    # its output comes before the residual sum.
    stack = isinstance(module, (nn.Sequential, nn.ModuleList)) or len(children) > 1
    if children and stack and len({type(child) for _, child in children}) == 1:
        return [f"{name}.{child}" for child, _ in children]
    return [name]


def is_transition(model: nn.Module, name: str) -> bool:
    """A container of different layers (a stem, a downsampling norm + conv): not a block."""
    module = model.get_submodule(name)
    return isinstance(module, nn.Sequential) and blocks_of(model, name) == [name]


def stage_entries(spec: ForeignName, model: nn.Module) -> list[str]:
    """The modules that end stages (timm's ``feature_info``), or the children of torchvision's
    ``features`` (a ViT's encoder layers, a RegNet's trunk), else of the model itself."""
    if spec.source == "timm":
        info = getattr(model, "feature_info", None)
        if not info:
            raise InvalidValue(f"{spec.source}:{spec.backbone} has no feature_info: place modules by name")
        return with_siblings_between([entry["module"] for entry in info])
    for container in CONTAINERS:
        try:
            module = model.get_submodule(container)
        except AttributeError:
            continue
        return [f"{container}.{child}" for child, _ in module.named_children()]
    return [name for name, _ in model.named_children()]  # ResNets: layer1 .. layer4


def with_siblings_between(entries: list[str]) -> list[str]:
    """timm's feature points with the stages between them: ``blocks.2, blocks.4`` (points at
    strides 8 and 16) gain ``blocks.3``, which belongs to the stage ending at ``blocks.4``."""
    filled: list[str] = []
    for entry in entries:
        parent, _, index = entry.rpartition(".")
        if filled and index.isdigit():
            last_parent, _, last_index = filled[-1].rpartition(".")
            if last_parent == parent and last_index.isdigit():
                filled += [f"{parent}.{k}" for k in range(int(last_index) + 1, int(index))]
        filled.append(entry)
    return filled


def reduction(output: torch.Tensor, size: int, layout_name: str) -> int:
    if layout_name == "tokens":
        return 0  # one scale
    height = output.shape[2] if layout_name == "NCHW" else output.shape[1]
    return round(size / height)


def stages(
    model: nn.Module, entries: list[str], outputs: dict[str, Any], size: int, layout_name: str
) -> list[list[str]]:
    """Blocks grouped by stage: consecutive stage entries of one reduction (seen in
    ``outputs``, the entries' outputs on a ``size`` probe) form a stage; each entry gives its
    blocks (``blocks_of``); transitions are left out."""
    grouped: list[tuple[int, list[str]]] = []
    for entry in entries:
        output = outputs.get(entry)
        if not isinstance(output, torch.Tensor) or output.dim() != (3 if layout_name == "tokens" else 4):
            continue  # the stem's activation, a pooled head
        if is_transition(model, entry) or not any(True for _ in model.get_submodule(entry).children()):
            continue  # a stem, a downsampling pair, a lone conv, norm or pooling layer
        scale = reduction(output, size, layout_name)
        if grouped and grouped[-1][0] == scale:
            grouped[-1][1].extend(blocks_of(model, entry))
        else:
            grouped.append((scale, blocks_of(model, entry)))
    return [blocks for _, blocks in grouped]


def create_foreign(
    name: str,
    num_classes: int = 1000,
    weights: str | Path | None = None,
    *,
    query: str | None = None,
    responses: Sequence[str] | None = None,
    nl_layers: Sequence[str] | None = None,
    inner_channels: int | None = None,
    img_size: int | None = None,
    drop_rate: float | None = None,
    drop_path: float | None = None,
    global_pool: str | None = None,
) -> nn.Module:
    """A torchvision or timm classifier with NL/CNL modules (see the module docstring).
    ``img_size``: the input size, for backbones built for one (ViT, Swin); None keeps theirs.
    ``drop_rate``, ``drop_path`` and ``global_pool``: the backbone's own dropout, stochastic
    depth and pooling, where its constructor has them (timm's ``drop_rate``/``drop_path_rate``/
    ``global_pool``; torchvision's ``dropout``/``stochastic_depth_prob``); an error where not."""
    spec = ForeignName.parse(name)
    build = _timm if spec.source == "timm" else _torchvision
    regularised = {"drop_rate": drop_rate, "drop_path": drop_path, "global_pool": global_pool}
    model = build(
        spec.backbone, num_classes, weights, img_size, {k: v for k, v in regularised.items() if v is not None}
    )
    layout_name, prefix = layout(spec, model)
    by_rule = bool(spec.variant) and responses is None and nl_layers is None
    entries = stage_entries(spec, model) if by_rule else []
    by_hand = [*(nl_layers or ()), *(responses or ()), *([query] if query else [])]
    order = [n for n, _ in model.named_modules()]
    unknown = [n for n in by_hand if n not in order or not n]
    if unknown:
        raise InvalidValue(f"{name} has no modules {unknown}; module names are as model.named_modules() gives them")
    # One probe forward gives the stages' strides and every candidate site's channels.
    candidates = [block for entry in entries for block in blocks_of(model, entry)]
    probe = probe_input(spec, model, img_size)
    outputs = record_outputs(model, list(dict.fromkeys([*entries, *candidates, *by_hand])), probe)
    if by_rule:
        rule_query, rule_responses = default_placement(stages(model, entries, outputs, probe.shape[-1], layout_name))
        if spec.variant == CNL:
            query, responses = query or rule_query, rule_responses
        else:
            nl_layers = rule_responses
    names = dict.fromkeys([*(nl_layers or ()), *(responses or ()), *([query] if query else [])])
    sites = {n: Site(n, layout_name, site_channels(n, outputs[n], layout_name), prefix) for n in names}
    return plug_into(
        model,
        sites,
        name,
        query,
        sorted(responses or (), key=order.index),
        sorted(nl_layers or (), key=order.index),
        inner_channels,
    )
