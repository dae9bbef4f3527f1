"""The builders of a training run, in the manner of DeiT's ``main.py``: each builds one thing
from the config, and each can be called and tested alone. ``trainer.fit`` calls them in
order and loops."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnl.data import build_dataset, detect_layout, eval_transform, train_transform
from cnl.data.catalog import CATALOG
from cnl.data.check import preflight
from cnl.data.datasets import FineGrainedDataset
from cnl.data.transforms import batch_mix
from cnl.engine import distributed
from cnl.engine.config import TrainConfig, model_overrides
from cnl.engine.loop import StepSettings, TrainParts, wants_progress_bars
from cnl.engine.randomness import seed_model_init, validation_indices
from cnl.engine.runfolder import RunFolder
from cnl.engine.schedule import build_scheduler
from cnl.errors import DataError, InvalidValue
from cnl.models import create_model
from cnl.models.backbones import PRETRAINED, head_name
from cnl.models.registry import load_weights
from cnl.models.weights import NEW_MODULE_PREFIXES, wants_weights

# Datasets with an official validation split: the training split that leaves it out.
OFFICIAL_VALIDATION = {r.name: r.validation for r in CATALOG.values() if r.validation is not None}


def build_datasets(
    config: TrainConfig, output: Path
) -> tuple[FineGrainedDataset, FineGrainedDataset | None, FineGrainedDataset]:
    """Train, validation (None without ``val_split``) and test sets, checked before training."""
    log = RunFolder(output).skipped
    root = config.data_root
    name = detect_layout(Path(root)) if config.dataset == "auto" else config.dataset
    official = config.val_split == "official"
    if official and name not in OFFICIAL_VALIDATION:
        raise InvalidValue(
            f"{name} has no official validation split (only {', '.join(OFFICIAL_VALIDATION)} has); "
            "carve one from the training split with a fraction, e.g. --val-split 0.1"
        )
    train_split = OFFICIAL_VALIDATION[name] if official else "train"
    train = build_dataset(name, root, train_split, train_transform_of(config), skip_log=log)
    test = build_dataset(name, root, "test", eval_transform(*config.eval_sizes()), skip_log=log)
    val = None
    if official:
        val = build_dataset(name, root, "val", eval_transform(*config.eval_sizes()), skip_log=log)
    elif config.val_split is not None:
        held_out = validation_indices(train.targets, float(config.val_split), config.seed)
        kept = sorted(set(range(len(train))) - set(held_out))
        train, val = train.subset(kept, train.transform), train.subset(held_out, eval_transform(*config.eval_sizes()))
    for split, dataset in (("val", val), ("test", test)):
        if dataset is not None and dataset.classes != train.classes:
            raise DataError(f"the train and {split} splits of {root} name different classes")
    for split, dataset in (("train", train), ("test", test), ("val", val)):
        if dataset is not None:
            preflight(dataset, split, root)
    return train, val, test


def train_transform_of(config: TrainConfig) -> Any:
    """The training transform a config asks for: the paper's crop and flip, and any of the
    augmentations of timm's and torchvision's scripts it turns on; with ``cache_features``,
    evaluation's (features computed once cannot be augmented)."""
    if config.cache_features:
        return eval_transform(*config.eval_sizes())
    scale = (config.crop_scale[0], config.crop_scale[1])
    return train_transform(
        config.img_size, scale, config.augment, config.color_jitter, config.random_erase, config.interpolation
    )


def set_determinism(config: TrainConfig) -> None:
    """``--deterministic``: deterministic kernels everywhere (an error where torch has none)."""
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def steps_per_epoch(train_set: Any, global_batch: int, root: str) -> int:
    """Optimizer steps of an epoch (the last partial global batch is dropped); an error for none."""
    steps = len(train_set) // global_batch
    if not steps:
        raise DataError(
            f"the global batch {global_batch} is larger than the {len(train_set)} training images of {root}"
        )
    return steps


def class_names(train_set: Any) -> list[str]:
    classes = list(getattr(train_set, "classes", None) or [])
    if not classes:
        raise DataError("the training set needs a 'classes' list (class names, index = label)")
    return classes


def build_model(
    config: TrainConfig, classes: list[str], ctx: distributed.Context, given: torch.nn.Module | None = None
) -> torch.nn.Module:
    """``config.model`` (or ``given``) with the seed's initial weights and ``config.weights``
    (saying what was loaded, skipped and left new), the backbone frozen when asked, on this
    process's device; rank 0 builds first, so that it alone fetches pretrained weights."""
    if not ctx.is_main:
        distributed.barrier()
    seed_model_init(config.seed)
    model = given
    if model is None:
        overrides = model_overrides(config.to_dict())
        at_build = config.weights if config.weights == PRETRAINED else None  # timm's own: timm loads them
        model = create_model(config.model, len(classes), weights=at_build, img_size=config.img_size, **overrides)
        if wants_weights(config.weights) and at_build is None:
            report = load_weights(model, config.model, config.weights, classes)
            if ctx.is_main:
                print(report, flush=True)
    if config.freeze == "backbone":
        freeze_backbone(model)
    if ctx.is_main:
        distributed.barrier()
    if config.sync_bn and ctx.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(ctx.device)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def trainable_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """The parameters that train when the backbone is frozen: the NL/CNL modules and the head."""
    return (*NEW_MODULE_PREFIXES, head_name(model) + ".")


def freeze_backbone(model: torch.nn.Module) -> None:
    """``--freeze backbone``: every parameter but the modules' and the head's stops training."""
    for name, parameter in model.named_parameters():
        if not name.startswith(trainable_prefixes(model)):
            parameter.requires_grad_(False)


def frozen_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose parameters all stopped training (and that hold some, or buffers):
    they run in eval mode while the rest trains, so that their norms keep their statistics."""
    return [
        module for name, module in model.named_modules()
        if name and not f"{name}.".startswith(trainable_prefixes(model))
        and any(True for _ in module.parameters(recurse=False)) | any(True for _ in module.buffers(recurse=False))
        and not any(p.requires_grad for p in module.parameters(recurse=False))
    ]  # fmt: skip


def layer_depths(model: torch.nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter's depth for layer-wise lr decay, and the top: the backbone's top-level
    modules in order (the blocks of a top-level sequence each one depth, a stem's leaves
    together one), the head and the NL/CNL modules at the top."""
    depths: dict[str, int] = {}
    depth, previous_leaf = 0, False
    for name, child in model.named_children():
        if f"{name}.".startswith(trainable_prefixes(model)):
            continue
        blocks = list(child.named_children()) if isinstance(child, torch.nn.Sequential | torch.nn.ModuleList) else []
        if blocks:
            depth += previous_leaf
            for block, module in blocks:
                depths.update({f"{name}.{block}.{key}": depth for key, _ in module.named_parameters()})
                depth += 1
            previous_leaf = False
        else:
            depths.update({f"{name}.{key}": depth for key, _ in child.named_parameters()})
            previous_leaf = previous_leaf or any(True for _ in child.parameters())
    return depths, depth + previous_leaf


def parameter_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's groups: the new modules and the head at ``lr x head_lr_mult``, and with
    ``wd_norm_bias`` off no weight decay on norms and biases (the 1-d parameters). One group
    when neither is asked for, as in the paper."""
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    depths, top = layer_depths(model) if config.layer_decay else ({}, 0)
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:  # frozen: not the optimizer's
            continue
        new = name.startswith(trainable_prefixes(model))
        scale = config.head_lr_mult if new else (config.layer_decay or 1.0) ** (top - depths.get(name, top))
        decay = config.wd_norm_bias or parameter.ndim > 1
        groups.setdefault((scale, decay), []).append(parameter)
    return [
        {"params": parameters, "lr": config.lr * scale, "weight_decay": config.weight_decay if decay else 0.0}
        for (scale, decay), parameters in groups.items()
    ]


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, as the paper; AdamW for training from scratch (the CPU demo)."""
    groups = parameter_groups(model, config)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov
    )


def build_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of the weights and buffers, starting from ``model``'s
    own: after k steps, ``decay^k w_0 + sum_j decay^(k-j) (1 - decay) w_j``."""
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.update_parameters(model)  # the first update copies: the average starts at w_0
    return ema


def build_parts(model: torch.nn.Module, config: TrainConfig, ctx: distributed.Context, steps: int) -> TrainParts:
    """What a training step updates: the model as it trains (under DDP, compiled when asked),
    the optimizer, the schedule of ``steps`` optimizer steps per epoch, the loss scaler and
    the EMA of the weights."""
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(
        optimizer, steps, config.warmup_epochs, config.lr_steps, config.lr_decay, config.schedule, config.epochs
    )
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.amp == "fp16")
    wrapped: torch.nn.Module = model
    if ctx.distributed:
        wrapped = DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
    compiled: torch.nn.Module = torch.compile(wrapped) if config.compile else wrapped  # type: ignore[assignment]
    ema = build_ema(model, config.ema) if config.ema else None
    return TrainParts(compiled, optimizer, scheduler, scaler, ema, frozen_modules(model))


def build_step_settings(
    config: TrainConfig, ctx: distributed.Context, num_classes: int, global_batch: int
) -> StepSettings:
    return StepSettings(
        ctx.device,
        num_classes,
        amp=config.amp,
        channels_last=config.channels_last,
        show_progress=wants_progress_bars(ctx.is_main),
        accum_steps=config.accum_steps,
        global_batch=global_batch,
        world_size=ctx.world_size,
        rank=ctx.rank,
        seed=config.seed,
        label_smoothing=config.label_smoothing,
        clip_grad=config.clip_grad,
        mix=batch_mix(config.mixup, config.cutmix, num_classes),
    )
