"""``fit``: data, model, optimizer, the epoch loop, logs and checkpoints of one run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import Dataset

from cnl.data import build_dataset, detect_layout, eval_transform, train_transform
from cnl.data.datasets import FineGrainedDataset
from cnl.data.transforms import batch_mix
from cnl.engine import distributed
from cnl.engine.checkpoint import model_overrides, read_for_resume, remove_temporaries, save_checkpoint
from cnl.engine.config import TrainConfig
from cnl.engine.loaders import eval_loader, train_loader
from cnl.engine.loop import EpochStats, StepSettings, TrainParts, evaluate, train_one_epoch
from cnl.engine.predictions import PREDICTIONS, image_names, write_image_predictions
from cnl.engine.provenance import provenance
from cnl.engine.randomness import seed_model_init, validation_indices
from cnl.engine.runlock import RunLock
from cnl.engine.schedule import build_scheduler
from cnl.errors import DataError, InvalidValue, MissingFile
from cnl.models import create_model
from cnl.models.backbones import head_name
from cnl.models.weights import NEW_MODULE_PREFIXES


class RunInterrupted(KeyboardInterrupt):
    """A signal ended the run. A KeyboardInterrupt, so that no ``except Exception`` on the
    way (a weights reader, a data loader) can swallow it."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(f"{signal.Signals(number).name} {message}")
        self.number = number

    @property
    def exit_code(self) -> int:
        return 128 + self.number  # as a shell reports a process ended by that signal


def skip_log(output: Path) -> Path:
    return output / "skipped.txt"


# Datasets with an official validation split: the training split that leaves it out.
OFFICIAL_VALIDATION = {"aircraft": "train_without_val"}


def build_datasets(
    config: TrainConfig, output: Path
) -> tuple[FineGrainedDataset, FineGrainedDataset | None, FineGrainedDataset]:
    """Train, validation (None without ``val_split``) and test sets, checked before training."""
    log = skip_log(output)
    scale = (config.crop_scale[0], config.crop_scale[1])
    root = config.data_root
    name = detect_layout(Path(root)) if config.dataset == "auto" else config.dataset
    official = config.val_split == "official"
    if official and name not in OFFICIAL_VALIDATION:
        raise InvalidValue(
            f"{name} has no official validation split (only {', '.join(OFFICIAL_VALIDATION)} has); "
            "carve one from the training split with a fraction, e.g. --val-split 0.1"
        )
    train_split = OFFICIAL_VALIDATION[name] if official else "train"
    train = build_dataset(name, root, train_split, train_transform(config.img_size, scale), skip_log=log)
    test = build_dataset(name, root, "test", eval_transform(config.img_size), skip_log=log)
    val = None
    if official:
        val = build_dataset(name, root, "val", eval_transform(config.img_size), skip_log=log)
    elif config.val_split is not None:
        held_out = validation_indices(train.targets, float(config.val_split), config.seed)
        kept = sorted(set(range(len(train))) - set(held_out))
        train, val = train.subset(kept, train.transform), train.subset(held_out, eval_transform(config.img_size))
    for split, dataset in (("val", val), ("test", test)):
        if dataset is not None and dataset.classes != train.classes:
            raise DataError(f"the train and {split} splits of {root} name different classes")
    preflight(train, "train", root)
    preflight(test, "test", root)
    if val is not None:
        preflight(val, "val", root)
    return train, val, test


def preflight(dataset: FineGrainedDataset, split: str, root: str) -> None:
    """Stop before any training on metadata that names missing files or leaves a class empty."""
    origins = dataset.origins or [str(path) for path, _ in dataset.samples]
    missing = [f"{origin}: {path}" for (path, _), origin in zip(dataset.samples, origins) if not Path(path).is_file()]
    if missing:
        shown = "\n  ".join(missing[:10]) + ("\n  ..." if len(missing) > 10 else "")
        raise DataError(
            f"{len(missing)} {split} images of {root} named by its metadata do not exist "
            f"(expected an image file at each path):\n  {shown}"
        )
    if split == "train":
        counts = np.bincount(dataset.targets, minlength=len(dataset.classes))
        empty = [dataset.classes[k] for k in np.flatnonzero(counts == 0)]
        if empty:
            raise DataError(f"classes without training images in {root}: {', '.join(empty[:10])}")


def resume_checkpoint(output: str | Path, resume: str | None) -> Path | None:
    """The checkpoint a run into ``output`` continues from, or None for a fresh start.

    ``resume`` as ``TrainConfig.resume``: None means "no", or "auto" in a group that
    torchrun restarted."""
    mode = resume or ("auto" if distributed.restarted() else "no")
    path = Path(output) / "checkpoints" / "last.pt"
    if mode == "yes" and not path.is_file():
        raise MissingFile(f"cannot resume: {path} does not exist (use --resume auto to start fresh then)")
    return path if mode != "no" and path.is_file() else None


def parameter_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's groups: the new modules and the head at ``lr x head_lr_mult``, and with
    ``no_wd_norm_bias`` no weight decay on norms and biases (the 1-d parameters). One group
    when neither is asked for, as in the paper."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    head = head_name(model) + "."
    for name, parameter in model.named_parameters():
        new = config.head_lr_mult != 1 and name.startswith((*NEW_MODULE_PREFIXES, head))
        decay = not (config.no_wd_norm_bias and parameter.ndim <= 1)
        groups.setdefault((new, decay), []).append(parameter)
    return [
        {
            "params": parameters,
            "lr": config.lr * (config.head_lr_mult if new else 1.0),
            "weight_decay": config.weight_decay if decay else 0.0,
        }
        for (new, decay), parameters in groups.items()
    ]


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, as the paper; AdamW for training from scratch (the CPU demo)."""
    groups = parameter_groups(model, config)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def build_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of the weights and buffers, starting from ``model``'s
    own: after k steps, ``decay^k w_0 + sum_j decay^(k-j) (1 - decay) w_j``."""
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.update_parameters(model)  # the first update copies: the average starts at w_0
    return ema


@dataclass
class RunState:
    """What a checkpoint restores besides the weights."""

    start_epoch: int = 0
    start_step: int = 0  # optimizer steps of start_epoch already trained (an interrupted epoch)
    best_epoch: int = 0
    best: dict[str, float] = field(default_factory=dict)  # top1, top5 (test) and val_top1, val_top5 of best_epoch


class Run:
    """One training run: ``Run(config).fit()`` returns the summary written to summary.json."""

    def __init__(
        self,
        config: TrainConfig,
        model: torch.nn.Module | None = None,
        train_set: Dataset | None = None,
        test_set: Dataset | None = None,
    ) -> None:
        if (train_set is None) != (test_set is None):
            raise InvalidValue("give both train_set and test_set, or neither (then config.data_root is read)")
        self.given_model = model
        self.given_sets = (train_set, test_set) if train_set is not None and test_set is not None else None
        self.config = config
        self.output = Path(config.output)
        self.ctx = distributed.setup(config.device)
        self.main = self.ctx.is_main
        self.batch_size, self.global_batch = config.batch_plan(self.ctx.world_size)
        if config.sync_bn and self.ctx.distributed and self.ctx.device.type != "cuda":
            raise InvalidValue(
                "--sync-bn needs CUDA devices (SyncBatchNorm runs on GPUs only); on the CPU every process "
                "already evaluates rank 0's BatchNorm statistics"
            )
        self.recipe = config.recipe(self.global_batch)
        self.training = False  # set-up until the first step: a signal then ends the run at once
        self.stop_signal: int | None = None

    # --- set-up ------------------------------------------------------------------------

    def _announce(self) -> None:
        config = self.config
        if self.main:
            print(
                f"{self.ctx.world_size} processes x batch {self.batch_size} x {config.accum_steps} accumulation "
                f"= global batch {self.global_batch}; lr {config.lr}, {config.epochs} epochs",
                flush=True,
            )

    def _build(self) -> None:
        config, ctx = self.config, self.ctx
        self.output.mkdir(parents=True, exist_ok=True)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.train_set: Any
        self.test_set: Any
        self.val_set: FineGrainedDataset | None = None
        if self.given_sets is None:
            self.train_set, self.val_set, self.test_set = build_datasets(config, self.output)
        else:
            self.train_set, self.test_set = self.given_sets
        self.classes = list(getattr(self.train_set, "classes", None) or [])
        if not self.classes:
            raise DataError("the training set needs a 'classes' list (class names, index = label)")
        self.steps_per_epoch = len(self.train_set) // self.global_batch
        if not self.steps_per_epoch:
            raise DataError(
                f"the global batch {self.global_batch} is larger than the {len(self.train_set)} training images "
                f"of {config.data_root}"
            )
        if not ctx.is_main:
            distributed.barrier()  # rank 0 fetches pretrained weights first
        seed_model_init(config.seed)
        model = self.given_model
        if model is None:
            overrides = model_overrides(config.to_dict())
            model = create_model(config.model, num_classes=len(self.classes), weights=config.weights, **overrides)
        if ctx.is_main:
            distributed.barrier()
        if config.sync_bn and ctx.distributed:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(ctx.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(self.model, config)
        scheduler = build_scheduler(
            optimizer, self.steps_per_epoch, config.warmup_epochs, config.lr_steps, config.lr_decay,
            config.schedule, config.epochs,
        )  # fmt: skip
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.amp == "fp16")
        wrapped: torch.nn.Module = self.model
        if ctx.distributed:
            wrapped = DistributedDataParallel(
                self.model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None
            )
        compiled = torch.compile(wrapped) if config.compile else wrapped
        self.ema = build_ema(self.model, config.ema) if config.ema else None
        self.parts = TrainParts(compiled, optimizer, scheduler, scaler, self.ema)  # type: ignore[arg-type]
        # What is evaluated, checkpointed and used afterwards: the EMA weights when there are.
        self.evaluated: torch.nn.Module = self.ema.module if self.ema is not None else self.model
        self.eval_model: torch.nn.Module = torch.compile(self.evaluated) if config.compile else self.evaluated  # type: ignore[assignment]
        self.test_loader = eval_loader(self.test_set, self.batch_size, config.workers, ctx)
        self.val_loader = (
            None if self.val_set is None else eval_loader(self.val_set, self.batch_size, config.workers, ctx)
        )
        self.settings = StepSettings(
            ctx.device,
            len(self.classes),
            amp=config.amp,
            channels_last=config.channels_last,
            show_progress=self.main,
            accum_steps=config.accum_steps,
            global_batch=self.global_batch,
            world_size=ctx.world_size,
            rank=ctx.rank,
            seed=config.seed,
            label_smoothing=config.label_smoothing,
            clip_grad=config.clip_grad,
            mix=batch_mix(config.mixup, config.cutmix, len(self.classes)),
        )
        self.params = sum(p.numel() for p in self.model.parameters())
        self.provenance = provenance(ctx, self.batch_size, self.global_batch, config.accum_steps)

    # --- checkpoints ---------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.output / "checkpoints"

    def _state(self, epoch: int, run: RunState, metrics: dict[str, Any], step: int = 0) -> dict[str, Any]:
        return {
            "step": step,
            "model": self.model.state_dict(),
            **({"model_ema": self.ema.module.state_dict()} if self.ema is not None else {}),
            "optimizer": self.parts.optimizer.state_dict(),
            "scheduler": self.parts.scheduler.state_dict(),
            "scaler": self.parts.scaler.state_dict(),
            "epoch": epoch,
            "best": {**run.best, "epoch": run.best_epoch},
            "metrics": {k: v for k, v in metrics.items() if k not in ("per_class_top1", "per_image")},
            "config": self.recipe,
            "classes": self.classes,
            "model_name": self.config.model,
            "provenance": self.provenance,
        }

    def _resume(self, path: Path) -> RunState:
        state, used, damage = read_for_resume(path)
        if damage is not None:
            distributed.barrier()  # every process has read what it resumes from
            if self.main:
                # Kept for inspection, and out of the way: the next save must not rotate it into last-prev.pt.
                path.rename(path.with_name(f"{path.name}.damaged"))
                print(f"cnl train: warning: {damage}; resuming from {used} (kept it as {path.name}.damaged)",
                      file=sys.stderr, flush=True)  # fmt: skip
        if state["model_name"] != self.config.model or list(state["classes"]) != self.classes:
            raise InvalidValue(f"{path} is a checkpoint of {state['model_name']} on other classes; cannot resume")
        previous = state.get("provenance", {}).get("global_batch_size", self.global_batch)
        if previous != self.global_batch:
            raise InvalidValue(
                f"{path} was trained with a global batch of {previous}; resuming with {self.global_batch} would "
                "shift its schedule (resume on any number of processes, with the same global batch)"
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state.get("model_ema", state["model"]))
        self.parts.optimizer.load_state_dict(state["optimizer"])
        self.parts.scheduler.load_state_dict(state["scheduler"])
        self.parts.scaler.load_state_dict(state["scaler"])
        best = dict(state["best"])
        self._keep_metrics(state["epoch"])
        return RunState(state["epoch"], state.get("step", 0), int(best.pop("epoch")), best)

    def _keep_metrics(self, completed: int) -> None:
        """Drop log lines of epochs past ``completed``: they will be run again."""
        path = self.output / "metrics.jsonl"
        if self.main and path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= completed]
            path.write_text("".join(line + "\n" for line in kept))

    def _write_config(self) -> None:
        if self.main:
            header = (
                f"# The settings of {self.output}, written by: {self.provenance['command']}\n"
                f"# cnl train --config {self.output / 'config.yaml'} --output NEW_FOLDER trains the same run again.\n"
            )
            text = yaml.safe_dump(self.recipe, sort_keys=False)
            (self.output / "config.yaml").write_text(header + text, encoding="utf-8")

    # --- signals -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM: during set-up, or a second time, they end the run at once;
        the first during training asks the loop to stop after the current step and save."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        numbers = (signal.SIGINT, signal.SIGTERM)
        previous = {number: signal.signal(number, self._on_signal) for number in numbers}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _on_signal(self, number: int, frame: object) -> None:
        if self.training and self.stop_signal is None:
            self.stop_signal = number
            return
        if self.training:
            raise RunInterrupted(number, "again: stopped at once; checkpoints/last.pt is the last complete one")
        raise RunInterrupted(number, "during set-up: stopped; no checkpoint was written")

    def _should_stop(self) -> bool:
        flag = torch.tensor([float(self.stop_signal is not None)], device=self.ctx.device)
        return bool(distributed.all_reduce_sum(flag).item() > 0)  # every process stops at the same step

    # --- the loop --------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        lock = RunLock(self.output)
        with self._signals():
            try:
                self._announce()
                if self.main:
                    ended = lock.acquire()
                    if ended is not None:
                        print(f"cnl train: taking over the lock of process {ended}, which has ended",
                              file=sys.stderr, flush=True)  # fmt: skip
                    remove_temporaries(self.checkpoints)  # of a run killed while it wrote
                self._build()
                resume = resume_checkpoint(self.output, self.config.resume)
                run = self._resume(resume) if resume else RunState()
                if not resume:
                    self._keep_metrics(0)
                self._write_config()
                self.training = True
                return self._loop(run)
            finally:
                lock.release()
                distributed.teardown(self.ctx)

    def _loop(self, run: RunState) -> dict[str, Any]:
        config = self.config
        writer = self._writer()
        rates: list[float] = []
        metrics: dict[str, Any] = {}
        val: dict[str, Any] = {}
        for epoch in range(run.start_epoch, config.epochs):
            first_step = run.start_step if epoch == run.start_epoch else 0
            lr = self.parts.optimizer.param_groups[0]["lr"]
            loader = train_loader(
                self.train_set, config.seed, epoch, first_step, self.global_batch, self.batch_size, config.workers,
                self.ctx,
            )  # fmt: skip
            train = train_one_epoch(self.parts, loader, self.settings, epoch, first_step, self._should_stop)
            if train.stopped and train.steps < self.steps_per_epoch:
                self._stop(epoch, train.steps, run, metrics)
            distributed.broadcast_buffers(self.evaluated)  # every process evaluates what rank 0 saves
            val = {}
            if self.val_loader is not None:
                val = evaluate(self.eval_model, self.val_loader, self.settings, f"val {epoch + 1}", per_image=True)
            metrics = evaluate(self.eval_model, self.test_loader, self.settings, f"test {epoch + 1}", per_image=True)
            rates.append(train.images_per_s)
            current = {"top1": metrics["top1"], "top5": metrics["top5"]}
            current.update({"val_top1": val["top1"], "val_top5": val["top5"]} if val else {})
            chosen_on = "val_top1" if val else "top1"  # without a validation set, the paper's optimistic choice
            improved = current[chosen_on] > run.best.get(chosen_on, -1.0)
            if improved:
                run.best, run.best_epoch = current, epoch + 1
            if self.main:
                state = self._state(epoch + 1, run, metrics)  # gathered once, written once or twice
                if improved:
                    save_checkpoint(state, self.checkpoints / "best.pt")
                    self._write_predictions(metrics, val)
                save_checkpoint(state, self.checkpoints / "last.pt", keep_previous=True)
                self._log(writer, epoch + 1, lr, train, metrics, val)
            if train.stopped:
                self._stop(epoch + 1, 0, run, metrics, saved=True)
        summary = self._summary(run, {**metrics, **{f"val_{k}": v for k, v in val.items()}}, rates)
        if self.main:
            (self.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            if writer is not None:
                writer.close()
        return summary

    def _write_predictions(self, test: dict[str, Any], val: dict[str, Any]) -> None:
        """predictions.csv of the epoch kept as best.pt: the test split, and the validation split when there is one."""
        splits = {"test": (image_names(self.test_set), test["per_image"])}
        if val:
            splits["val"] = (image_names(self.val_set), val["per_image"])
        write_image_predictions(self.output / PREDICTIONS, splits, self.classes)

    def _stop(self, epoch: int, step: int, run: RunState, metrics: dict[str, Any], saved: bool = False) -> None:
        """Save the state after ``step`` optimizer steps of ``epoch`` (0-based), and end the run."""
        if self.main and not saved:
            save_checkpoint(
                self._state(epoch, run, metrics, step=step), self.checkpoints / "last.pt", keep_previous=True
            )
        assert self.stop_signal is not None or not self.main
        where = f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"
        raise RunInterrupted(
            self.stop_signal or signal.SIGTERM,
            f"received: stopped at {where}; saved {self.checkpoints / 'last.pt'}; continue with --resume",
        )

    def _writer(self):
        if not self.main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.output / "tensorboard"))

    def _log(self, writer, epoch: int, lr: float, train: EpochStats, test: dict[str, Any], val: dict[str, Any]) -> None:
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train.loss,
            "train_top1": train.top1,
            "train_images_per_s": train.images_per_s,
            "train_time_s": train.time_s,
            **({"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]} if val else {}),
            "test_loss": test["loss"],
            "top1": test["top1"],
            "top5": test["top5"],
            "test_count": test["count"],
            "per_class_top1": test["per_class_top1"],
        }
        with open(self.output / "metrics.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        for key in ("lr", "train_loss", "train_top1", "train_images_per_s", "val_top1", "test_loss", "top1", "top5"):
            if key in record:
                writer.add_scalar(key, record[key], epoch)
        writer.flush()
        print(
            f"epoch {epoch}/{self.config.epochs}  lr {lr:.2e}  "
            f"train loss {train.loss:.4f} top1 {train.top1:.2f}  "
            + (f"val top1 {val['top1']:.2f}  " if val else "")
            + f"test loss {test['loss']:.4f} top1 {test['top1']:.2f} top5 {test['top5']:.2f}  "
            f"{train.images_per_s:.1f} img/s",
            flush=True,
        )

    def _summary(self, run: RunState, metrics: dict[str, Any], rates: list[float]) -> dict[str, Any]:
        log = skip_log(self.output)
        skipped = sorted({line.split("\t")[0] for line in log.read_text().splitlines()}) if log.exists() else []
        summary = {
            "model": self.config.model,
            "dataset": self.config.dataset,
            "classes": len(self.classes),
            "epochs": self.config.epochs,
            # The epoch kept as best.pt: chosen on the validation set, else on the test set (optimistic).
            "selection": "val" if self.val_set is not None else "test (optimistic)",
            "best_epoch": run.best_epoch,
            "best_top1": run.best.get("top1"),
            "best_top5": run.best.get("top5"),
            "final_top1": metrics.get("top1"),
            "final_top5": metrics.get("top5"),
            **(
                {
                    "best_val_top1": run.best.get("val_top1"),
                    "best_val_top5": run.best.get("val_top5"),
                    "final_val_top1": metrics.get("val_top1"),
                    "final_val_top5": metrics.get("val_top5"),
                }
                if self.val_set is not None
                else {}
            ),
            "params": self.params,
            "train_images_per_s": float(np.mean(rates)) if rates else None,
            "world_size": self.ctx.world_size,
            "batch_size": self.batch_size,
            "accum_steps": self.config.accum_steps,
            "global_batch_size": self.global_batch,
            "lr": self.config.lr,
            "skipped_images": len(skipped),
            "provenance": self.provenance,
        }
        if self.ctx.distributed:
            summary["replicas_identical"] = distributed.replicas_identical(self.model)
        return summary


def fit(
    config: TrainConfig,
    model: torch.nn.Module | None = None,
    train_set: Dataset | None = None,
    test_set: Dataset | None = None,
) -> dict[str, Any]:
    """Train and evaluate; returns the summary (also written to OUTPUT/summary.json).

    ``model``: a module to train instead of ``create_model(config.model, ...)``;
    ``train_set``/``test_set``: map-style datasets of ``(image tensor, label)`` (the
    training set with a ``classes`` list) instead of ``config.data_root``. Inside a
    process group the caller made, the run takes part in it and leaves it as it was.
    Raises ``RunInterrupted`` when SIGINT or SIGTERM ends the run (after saving, when it
    came during training)."""
    return Run(config, model, train_set, test_set).fit()
