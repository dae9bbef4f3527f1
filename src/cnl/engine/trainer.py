"""``fit``: data, model, optimizer, the epoch loop, logs and checkpoints of one run."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from cnl.data import build_dataset, eval_transform, train_transform
from cnl.data.datasets import FineGrainedDataset
from cnl.engine import distributed
from cnl.engine.checkpoint import model_overrides, read_checkpoint, rng_state, save_checkpoint, set_rng_state
from cnl.engine.config import TrainConfig
from cnl.engine.loop import StepSettings, evaluate, train_one_epoch
from cnl.engine.schedule import build_scheduler
from cnl.models import create_model


class SkipSampler(Sampler[int]):
    """The indices of ``sampler`` after the first ``skip``: the rest of an interrupted epoch."""

    def __init__(self, sampler: DistributedSampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(config: TrainConfig, epoch: int, rank: int) -> int:
    """Each epoch's randomness depends on (seed, epoch, rank) alone, so a resumed run
    draws the same crops and shuffles as one that never stopped."""
    return config.seed * 1_000_003 + epoch * 1009 + rank


def skip_log(output: Path) -> Path:
    return output / "skipped.txt"


def build_datasets(config: TrainConfig, output: Path) -> tuple[FineGrainedDataset, FineGrainedDataset]:
    log = skip_log(output)
    scale = (config.crop_scale[0], config.crop_scale[1])
    train = build_dataset(
        config.dataset, config.data_root, "train", train_transform(config.img_size, scale), skip_log=log
    )
    test = build_dataset(config.dataset, config.data_root, "test", eval_transform(config.img_size), skip_log=log)
    if train.classes != test.classes:
        raise ValueError(f"the train and test splits of {config.data_root} name different classes")
    preflight(train, "train", config.data_root)
    preflight(test, "test", config.data_root)
    return train, test


def preflight(dataset: FineGrainedDataset, split: str, root: str) -> None:
    """Stop before any training on metadata that names missing files or leaves a class empty."""
    origins = dataset.origins or [str(path) for path, _ in dataset.samples]
    missing = [f"{origin}: {path}" for (path, _), origin in zip(dataset.samples, origins) if not Path(path).is_file()]
    if missing:
        shown = "\n  ".join(missing[:10]) + ("\n  ..." if len(missing) > 10 else "")
        raise ValueError(
            f"{len(missing)} {split} images of {root} named by its metadata do not exist "
            f"(expected an image file at each path):\n  {shown}"
        )
    if split == "train":
        counts = np.bincount(dataset.targets, minlength=len(dataset.classes))
        empty = [dataset.classes[k] for k in np.flatnonzero(counts == 0)]
        if empty:
            raise ValueError(f"classes without training images in {root}: {', '.join(empty[:10])}")


def eval_loader(dataset: FineGrainedDataset, config: TrainConfig, ctx: distributed.Context) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=distributed.ShardSampler(len(dataset), ctx.rank, ctx.world_size),
        num_workers=config.workers,
        pin_memory=ctx.device.type == "cuda",
    )


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, as the paper; AdamW for training from scratch (the CPU demo)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


@dataclass
class RunState:
    """What a checkpoint restores besides the weights."""

    start_epoch: int = 0
    start_step: int = 0  # batches of start_epoch already trained (an interrupted epoch)
    best_top1: float = -1.0
    best_top5: float = 0.0
    best_epoch: int = 0


class Run:
    """One training run: ``Run(config).fit()`` returns the summary written to summary.json."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.output = Path(config.output)
        self.ctx = distributed.setup(config.device)
        self.main = self.ctx.is_main

    # --- set-up ------------------------------------------------------------------------

    def _build(self) -> None:
        config, ctx = self.config, self.ctx
        self.output.mkdir(parents=True, exist_ok=True)
        seed_everything(config.seed)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.train_set, self.test_set = build_datasets(config, self.output)
        self.classes = self.train_set.classes
        if not ctx.is_main:
            distributed.barrier()  # rank 0 fetches pretrained weights first
        self.model = create_model(
            config.model, num_classes=len(self.classes), weights=config.weights, **model_overrides(config.to_dict())
        ).to(ctx.device)
        if ctx.is_main:
            distributed.barrier()
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.sampler: DistributedSampler = DistributedSampler(
            self.train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed
        )
        self.train_loader = self._train_loader(self.sampler)
        self.test_loader = eval_loader(self.test_set, config, ctx)
        self.optimizer = build_optimizer(self.model, config)
        steps_per_epoch = math.ceil(len(self.train_loader) / config.accum_steps)
        self.scheduler = build_scheduler(
            self.optimizer, steps_per_epoch, config.warmup_epochs, config.lr_steps, config.lr_decay
        )
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.amp == "fp16")
        wrapped: torch.nn.Module = self.model
        if ctx.distributed:
            wrapped = DistributedDataParallel(
                self.model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None
            )
        self.train_model: torch.nn.Module = torch.compile(wrapped) if config.compile else wrapped  # type: ignore[assignment]
        self.eval_model: torch.nn.Module = torch.compile(self.model) if config.compile else self.model  # type: ignore[assignment]
        self.settings = StepSettings(ctx.device, config.amp, config.channels_last, config.accum_steps, self.main)
        self.params = sum(p.numel() for p in self.model.parameters())

    # --- checkpoints ---------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.output / "checkpoints"

    def _state(self, epoch: int, run: RunState, metrics: dict[str, Any], step: int = 0) -> dict[str, Any]:
        return {
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best": {"top1": run.best_top1, "top5": run.best_top5, "epoch": run.best_epoch},
            "metrics": {k: v for k, v in metrics.items() if k != "per_class_top1"},
            "rng": rng_state(),
            "config": self.config.to_dict(),
            "classes": self.classes,
            "model_name": self.config.model,
        }

    def _resume(self) -> RunState:
        path = self.checkpoints / "last.pt"
        state = read_checkpoint(path)
        if state["model_name"] != self.config.model or list(state["classes"]) != self.classes:
            raise ValueError(f"{path} is a checkpoint of {state['model_name']} on other classes; cannot resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        best = state["best"]
        self._truncate_metrics(state["epoch"])
        return RunState(state["epoch"], state.get("step", 0), best["top1"], best["top5"], best["epoch"])

    def _truncate_metrics(self, completed: int) -> None:
        """Drop log lines of epochs past the checkpoint: they will be run again."""
        path = self.output / "metrics.jsonl"
        if self.main and path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= completed]
            path.write_text("".join(line + "\n" for line in kept))

    # --- the loop --------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        previous = self._catch_signals()
        try:
            self._build()
            run = self._resume() if self.config.resume else RunState()
            return self._loop(run)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            distributed.teardown()

    def _catch_signals(self) -> dict[int, Any]:
        """SIGINT and SIGTERM ask the loop to stop after the current step and save."""
        self.stop_signal: int | None = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(number: int, frame: object) -> None:
            self.stop_signal = number

        return {number: signal.signal(number, request_stop) for number in (signal.SIGINT, signal.SIGTERM)}

    def _should_stop(self) -> bool:
        flag = torch.tensor([float(self.stop_signal is not None)], device=self.ctx.device)
        return bool(distributed.all_reduce_sum(flag).item() > 0)  # every process stops at the same step

    def _train_loader(self, sampler: Sampler[int]) -> DataLoader:
        # Its own generator: creating an iterator then draws no number from the global
        # generator, which the augmentations use, so a resumed epoch sees the same draws.
        generator = torch.Generator().manual_seed(self.config.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.config.batch_size,
            sampler=sampler,
            num_workers=self.config.workers,
            pin_memory=self.ctx.device.type == "cuda",
            generator=generator,
            # A last batch of one image breaks BatchNorm on 1x1 maps; drop the partial batch
            # (as timm does) whenever a full one exists.
            drop_last=len(self.sampler) > self.config.batch_size,
        )

    def _epoch_loader(self, skip_batches: int) -> DataLoader:
        if not skip_batches:
            return self.train_loader
        return self._train_loader(SkipSampler(self.sampler, skip_batches * self.config.batch_size))

    def _loop(self, run: RunState) -> dict[str, Any]:
        config = self.config
        writer = self._writer()
        rates: list[float] = []
        metrics: dict[str, Any] = {}
        for epoch in range(run.start_epoch, config.epochs):
            skip = run.start_step if epoch == run.start_epoch else 0
            if not skip:  # an interrupted epoch continues from the restored generators
                seed_everything(epoch_seed(config, epoch, self.ctx.rank))
            self.sampler.set_epoch(epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            train = train_one_epoch(
                self.train_model, self._epoch_loader(skip), self.optimizer, self.scheduler, self.scaler,
                self.settings, len(self.classes), epoch + 1, self.ctx.world_size, self._should_stop,
            )  # fmt: skip
            if train["stopped"]:
                return self._interrupted(epoch, skip + int(train["steps"]), run, metrics)
            metrics = evaluate(self.eval_model, self.test_loader, self.settings, len(self.classes), f"test {epoch + 1}")
            rates.append(float(train["images_per_s"]))
            improved = float(metrics["top1"]) > run.best_top1
            if improved:
                run.best_top1, run.best_top5, run.best_epoch = metrics["top1"], metrics["top5"], epoch + 1
            if self.main:
                state = self._state(epoch + 1, run, metrics)  # gathered once, written once or twice
                if improved:
                    save_checkpoint(state, self.checkpoints / "best.pt")
                save_checkpoint(state, self.checkpoints / "last.pt")
                self._log(writer, epoch + 1, lr, train, metrics)
        summary = self._summary(run, metrics, rates)
        if self.main:
            (self.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            if writer is not None:
                writer.close()
        return summary

    def _interrupted(self, epoch: int, step: int, run: RunState, metrics: dict[str, Any]) -> dict[str, Any]:
        """Save the state after ``step`` batches of ``epoch`` (0-based) and report the stop."""
        if self.main:
            save_checkpoint(self._state(epoch, run, metrics, step=step), self.checkpoints / "last.pt")
            name = signal.Signals(self.stop_signal).name if self.stop_signal else "a stop request"
            print(f"{name}: stopped at epoch {epoch + 1}, step {step}; saved {self.checkpoints / 'last.pt'}; "
                  "continue with --resume", flush=True)  # fmt: skip
        return {"interrupted": True, "signal": self.stop_signal, "epoch": epoch + 1, "step": step}

    def _writer(self):
        if not self.main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.output / "tensorboard"))

    def _log(self, writer, epoch: int, lr: float, train: dict[str, Any], test: dict[str, Any]) -> None:
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train["loss"],
            "train_top1": train["top1"],
            "train_images_per_s": train["images_per_s"],
            "train_time_s": train["time_s"],
            "test_loss": test["loss"],
            "top1": test["top1"],
            "top5": test["top5"],
            "test_count": test["count"],
            "per_class_top1": test["per_class_top1"],
        }
        with open(self.output / "metrics.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        for key in ("lr", "train_loss", "train_top1", "train_images_per_s", "test_loss", "top1", "top5"):
            writer.add_scalar(key, record[key], epoch)
        writer.flush()
        print(
            f"epoch {epoch}/{self.config.epochs}  lr {lr:.2e}  "
            f"train loss {train['loss']:.4f} top1 {train['top1']:.2f}  "
            f"test loss {test['loss']:.4f} top1 {test['top1']:.2f} top5 {test['top5']:.2f}  "
            f"{train['images_per_s']:.1f} img/s",
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
            "best_top1": run.best_top1,
            "best_top5": run.best_top5,
            "best_epoch": run.best_epoch,
            "final_top1": metrics.get("top1"),
            "final_top5": metrics.get("top5"),
            "params": self.params,
            "train_images_per_s": float(np.mean(rates)) if rates else None,
            "world_size": self.ctx.world_size,
            "skipped_images": len(skipped),
        }
        if self.ctx.distributed:
            summary["replicas_identical"] = distributed.replicas_identical(self.model)
        return summary


def fit(config: TrainConfig) -> dict[str, Any]:
    """Train and evaluate ``config``; returns the summary (also written to OUTPUT/summary.json)."""
    return Run(config).fit()
