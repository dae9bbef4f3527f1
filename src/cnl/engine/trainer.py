"""``fit``: data, model, optimizer, the epoch loop, logs and checkpoints of one run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from cnl.data import build_dataset, eval_transform, train_transform
from cnl.data.datasets import FineGrainedDataset
from cnl.engine import distributed
from cnl.engine.checkpoint import model_overrides, read_checkpoint, save_checkpoint
from cnl.engine.config import TrainConfig
from cnl.engine.loop import EpochStats, StepSettings, TrainParts, evaluate, train_one_epoch
from cnl.engine.provenance import provenance
from cnl.engine.randomness import EpochSampler, SeededDataset, seed_model_init
from cnl.engine.schedule import build_scheduler
from cnl.models import create_model


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


def eval_loader(dataset: FineGrainedDataset, batch_size: int, workers: int, ctx: distributed.Context) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=distributed.ShardSampler(len(dataset), ctx.rank, ctx.world_size),
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
    )


def ignore_interrupts(worker_id: int) -> None:
    """Loader workers leave SIGINT and SIGTERM, which a terminal or torchrun sends to the whole
    process group, to the training process: it stops cleanly and then ends them. (They
    still exit by themselves when that process dies.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def resume_checkpoint(output: str | Path, resume: str | None) -> Path | None:
    """The checkpoint a run into ``output`` continues from, or None for a fresh start.

    ``resume`` as ``TrainConfig.resume``: None means "no", or "auto" in a group that
    torchrun restarted."""
    mode = resume or ("auto" if distributed.restarted() else "no")
    path = Path(output) / "checkpoints" / "last.pt"
    if mode == "yes" and not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (use --resume auto to start fresh then)")
    return path if mode != "no" and path.is_file() else None


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, as the paper; AdamW for training from scratch (the CPU demo)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


@dataclass
class RunState:
    """What a checkpoint restores besides the weights."""

    start_epoch: int = 0
    start_step: int = 0  # optimizer steps of start_epoch already trained (an interrupted epoch)
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
        self.batch_size, self.global_batch = config.batch_plan(self.ctx.world_size)
        if config.sync_bn and self.ctx.distributed and self.ctx.device.type != "cuda":
            raise ValueError(
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
        self.train_set, self.test_set = build_datasets(config, self.output)
        self.classes = self.train_set.classes
        self.steps_per_epoch = len(self.train_set) // self.global_batch
        if not self.steps_per_epoch:
            raise ValueError(
                f"the global batch {self.global_batch} is larger than the {len(self.train_set)} training images "
                f"of {config.data_root}"
            )
        if not ctx.is_main:
            distributed.barrier()  # rank 0 fetches pretrained weights first
        seed_model_init(config.seed)
        model = create_model(
            config.model, num_classes=len(self.classes), weights=config.weights, **model_overrides(config.to_dict())
        )
        if ctx.is_main:
            distributed.barrier()
        if config.sync_bn and ctx.distributed:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.model = model.to(ctx.device, memory_format=memory_format)
        optimizer = build_optimizer(self.model, config)
        scheduler = build_scheduler(
            optimizer, self.steps_per_epoch, config.warmup_epochs, config.lr_steps, config.lr_decay
        )
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.amp == "fp16")
        wrapped: torch.nn.Module = self.model
        if ctx.distributed:
            wrapped = DistributedDataParallel(
                self.model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None
            )
        compiled = torch.compile(wrapped) if config.compile else wrapped
        self.parts = TrainParts(compiled, optimizer, scheduler, scaler)  # type: ignore[arg-type]
        self.eval_model: torch.nn.Module = torch.compile(self.model) if config.compile else self.model  # type: ignore[assignment]
        self.test_loader = eval_loader(self.test_set, self.batch_size, config.workers, ctx)
        self.settings = StepSettings(
            ctx.device, len(self.classes), config.amp, config.channels_last, self.main, config.accum_steps,
            self.global_batch, ctx.world_size, ctx.rank, config.seed,
        )  # fmt: skip
        self.params = sum(p.numel() for p in self.model.parameters())
        self.provenance = provenance(ctx, self.batch_size, self.global_batch, config.accum_steps)

    def _train_loader(self, epoch: int, first_step: int) -> DataLoader:
        """This process's batches of ``epoch`` from optimizer step ``first_step`` on."""
        ctx = self.ctx
        sampler = EpochSampler(
            len(self.train_set), self.config.seed, epoch, self.global_batch, ctx.rank, ctx.world_size,
            start=first_step * self.global_batch,
        )  # fmt: skip
        return DataLoader(
            SeededDataset(self.train_set),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.config.workers,
            pin_memory=ctx.device.type == "cuda",
            worker_init_fn=ignore_interrupts,
        )

    # --- checkpoints ---------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.output / "checkpoints"

    def _state(self, epoch: int, run: RunState, metrics: dict[str, Any], step: int = 0) -> dict[str, Any]:
        return {
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.parts.optimizer.state_dict(),
            "scheduler": self.parts.scheduler.state_dict(),
            "scaler": self.parts.scaler.state_dict(),
            "epoch": epoch,
            "best": {"top1": run.best_top1, "top5": run.best_top5, "epoch": run.best_epoch},
            "metrics": {k: v for k, v in metrics.items() if k != "per_class_top1"},
            "config": self.recipe,
            "classes": self.classes,
            "model_name": self.config.model,
            "provenance": self.provenance,
        }

    def _resume(self, path: Path) -> RunState:
        state = read_checkpoint(path)
        if state["model_name"] != self.config.model or list(state["classes"]) != self.classes:
            raise ValueError(f"{path} is a checkpoint of {state['model_name']} on other classes; cannot resume")
        previous = state.get("provenance", {}).get("global_batch_size", self.global_batch)
        if previous != self.global_batch:
            raise ValueError(
                f"{path} was trained with a global batch of {previous}; resuming with {self.global_batch} would "
                "shift its schedule (resume on any number of processes, with the same global batch)"
            )
        self.model.load_state_dict(state["model"])
        self.parts.optimizer.load_state_dict(state["optimizer"])
        self.parts.scheduler.load_state_dict(state["scheduler"])
        self.parts.scaler.load_state_dict(state["scaler"])
        best = state["best"]
        self._keep_metrics(state["epoch"])
        return RunState(state["epoch"], state.get("step", 0), best["top1"], best["top5"], best["epoch"])

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
        with self._signals():
            try:
                self._announce()
                self._build()
                resume = resume_checkpoint(self.output, self.config.resume)
                run = self._resume(resume) if resume else RunState()
                if not resume:
                    self._keep_metrics(0)
                self._write_config()
                self.training = True
                return self._loop(run)
            finally:
                distributed.teardown()

    def _loop(self, run: RunState) -> dict[str, Any]:
        config = self.config
        writer = self._writer()
        rates: list[float] = []
        metrics: dict[str, Any] = {}
        for epoch in range(run.start_epoch, config.epochs):
            first_step = run.start_step if epoch == run.start_epoch else 0
            lr = self.parts.optimizer.param_groups[0]["lr"]
            train = train_one_epoch(
                self.parts, self._train_loader(epoch, first_step), self.settings, epoch, first_step, self._should_stop
            )
            if train.stopped and train.steps < self.steps_per_epoch:
                self._stop(epoch, train.steps, run, metrics)
            distributed.broadcast_buffers(self.model)  # every process evaluates what rank 0 saves
            metrics = evaluate(self.eval_model, self.test_loader, self.settings, f"test {epoch + 1}")
            rates.append(train.images_per_s)
            improved = float(metrics["top1"]) > run.best_top1
            if improved:
                run.best_top1, run.best_top5, run.best_epoch = metrics["top1"], metrics["top5"], epoch + 1
            if self.main:
                state = self._state(epoch + 1, run, metrics)  # gathered once, written once or twice
                if improved:
                    save_checkpoint(state, self.checkpoints / "best.pt")
                save_checkpoint(state, self.checkpoints / "last.pt")
                self._log(writer, epoch + 1, lr, train, metrics)
            if train.stopped:
                self._stop(epoch + 1, 0, run, metrics, saved=True)
        summary = self._summary(run, metrics, rates)
        if self.main:
            (self.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            if writer is not None:
                writer.close()
        return summary

    def _stop(self, epoch: int, step: int, run: RunState, metrics: dict[str, Any], saved: bool = False) -> None:
        """Save the state after ``step`` optimizer steps of ``epoch`` (0-based), and end the run."""
        if self.main and not saved:
            save_checkpoint(self._state(epoch, run, metrics, step=step), self.checkpoints / "last.pt")
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

    def _log(self, writer, epoch: int, lr: float, train: EpochStats, test: dict[str, Any]) -> None:
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train.loss,
            "train_top1": train.top1,
            "train_images_per_s": train.images_per_s,
            "train_time_s": train.time_s,
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
            f"train loss {train.loss:.4f} top1 {train.top1:.2f}  "
            f"test loss {test['loss']:.4f} top1 {test['top1']:.2f} top5 {test['top5']:.2f}  "
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
            "best_top1": run.best_top1,
            "best_top5": run.best_top5,
            "best_epoch": run.best_epoch,
            "final_top1": metrics.get("top1"),
            "final_top5": metrics.get("top5"),
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


def fit(config: TrainConfig) -> dict[str, Any]:
    """Train and evaluate ``config``; returns the summary (also written to OUTPUT/summary.json).

    Raises ``RunInterrupted`` when SIGINT or SIGTERM ends the run (after saving, when it
    came during training)."""
    return Run(config).fit()
