"""The Hugging Face Hub format that timm reads: a folder with ``config.json``,
``model.safetensors`` and a ``README.md`` model card.

``config.json`` is timm's: ``architecture`` (the timm name cnl registers for the model:
a paper ResNet's own name, ``resnet50_cnl5``, else ``cnl_model`` with the cnl name in
``model_args``), ``num_classes``, ``label_names``, ``model_args`` and ``pretrained_cfg``
(input size, mean, std, crop, interpolation, classifier), so that
``timm.create_model("local-dir:DIR", pretrained=True)`` and ``"hf-hub:ORG/NAME"`` build it.
Its ``cnl`` entry keeps what cnl itself needs again: the model name, placement
overrides, image size and the run's training config (for ``cnl eval``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RESIZE_RATIO
from cnl.engine.modelinfo import CardError, ModelInfo, check_head, class_names
from cnl.engine.records import Summary
from cnl.engine.runfolder import read_json
from cnl.errors import MissingDependency, MissingFile, excerpt

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"
HUB_PREFIX = "hf-hub:"
GENERIC = "cnl_model"  # the timm name of any cnl model timm has no name of its own for


def is_hub(path: str | Path) -> bool:
    """A Hub model: ``hf-hub:ORG/NAME`` or a folder holding ``config.json``."""
    return str(path).startswith(HUB_PREFIX) or (Path(path) / CONFIG).is_file()


def hub_folder(path: str | Path) -> Path:
    """The local folder of a Hub model: ``path`` itself, or huggingface_hub's cached copy of
    ``hf-hub:ORG/NAME`` (downloaded once; offline, read from the cache)."""
    text = str(path)
    if not text.startswith(HUB_PREFIX):
        return Path(path)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise MissingDependency("hf-hub: models need huggingface_hub (pip install huggingface_hub)") from error
    repo, _, revision = text[len(HUB_PREFIX) :].partition("@")
    return Path(snapshot_download(repo, revision=revision or None, allow_patterns=[CONFIG, WEIGHTS, CARD]))


def read_hub(path: str | Path) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    """``(info, weights)`` of a Hub model. config.json is checked field by field, against
    itself (``num_classes`` and ``label_names``, the input size and the image size) and the
    weights (the head's rows): damage is a CardError naming the file and the field."""
    from cnl.engine.modelfile import read_safetensors

    folder = hub_folder(path)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise MissingFile(f"{folder / name} does not exist: a Hub model folder holds {CONFIG} and {WEIGHTS}")
    where = str(folder / CONFIG)
    config = read_json(folder / CONFIG)
    if not isinstance(config, dict):
        raise CardError(f"{where}: expected a mapping (timm's config.json), got {type(config).__name__}")
    cnl = config.get("cnl")
    if cnl is None:
        raise MissingFile(f"{where} has no 'cnl' entry: it was not written by cnl export --format hf")
    if not isinstance(cnl, dict):
        raise CardError(f"{where}: cnl must be a mapping, got {excerpt(cnl)}")
    classes = class_names(config.get("label_names"), where, "label_names")
    if config.get("num_classes") != len(classes):
        raise CardError(
            f"{where}: num_classes is {excerpt(config.get('num_classes'))} but label_names names {len(classes)} "
            "classes (timm reads one, cnl the other: they must agree)"
        )
    pretrained = config.get("pretrained_cfg")
    if not isinstance(pretrained, dict):
        raise CardError(f"{where}: pretrained_cfg must be a mapping, got {excerpt(pretrained)}")
    info = ModelInfo.checked(
        {"model": cnl.get("model"), "classes": classes, "img_size": cnl.get("img_size"),
         "overrides": cnl.get("overrides", {}), "mean": pretrained.get("mean"), "std": pretrained.get("std"),
         "config": cnl.get("config") or {}},
        where,
    )  # fmt: skip
    size = pretrained.get("input_size")
    if size != [3, info.img_size, info.img_size]:
        raise CardError(
            f"{where}: pretrained_cfg.input_size is {excerpt(size)}, not [3, {info.img_size}, {info.img_size}]"
        )
    weights = read_safetensors(folder / WEIGHTS)
    classifier = pretrained.get("classifier")
    if isinstance(classifier, str):
        check_head(weights, classifier, classes, str(folder / WEIGHTS))
    return info, weights


def timm_name(model_name: str) -> str:
    """The name timm builds this model by (registered by ``cnl.timm_models``)."""
    from cnl.models import list_models
    from cnl.models.names import VARIANTS

    ours = {name for name in list_models() if name.endswith(VARIANTS)}
    return model_name if model_name in ours else GENERIC


def hub_config(info: ModelInfo, classifier: str, summary: Summary | None) -> dict[str, Any]:
    """``config.json`` of a model ``info`` describes (as ``load_model_with_info`` gives it)."""
    classes, size = info.classes, info.img_size
    crop, resize, interpolation = info.eval_sizes()  # timm's data config: the evaluation's geometry
    architecture = timm_name(info.model)
    model_args = {
        **info.overrides,
        "img_size": size,  # a fixed-size backbone (ViT, Swin) is built for it; a ResNet ignores it
        **({"cnl_name": info.model} if architecture == GENERIC else {}),
    }
    return {
        "architecture": architecture,
        "num_classes": len(classes),
        "label_names": classes,
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [3, crop, crop],
            "interpolation": interpolation,
            "crop_pct": crop / resize if resize else 1 / RESIZE_RATIO,
            "crop_mode": "center",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "num_classes": len(classes),
            "classifier": classifier,
        },
        "cnl": {
            "model": info.model,
            "overrides": info.overrides,
            "img_size": size,
            "config": info.config,
            "summary": summary.to_json() if summary is not None else None,
        },
    }
