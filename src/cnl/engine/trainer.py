"""``fit``: data, model, optimizer, the epoch loop, logs and checkpoints of one run."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
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
from torch.utils.data import DataLoader, Dataset

from cnl.data.datasets import detect_layout
from cnl.engine import distributed
from cnl.engine.builders import (
    build_datasets,
    build_model,
    build_parts,
    build_step_settings,
    class_names,
    set_determinism,
    steps_per_epoch,
)
from cnl.engine.checkpoint import CheckpointError, read_for_resume, remove_temporaries, save_checkpoint
from cnl.engine.config import RESUME_CHOICES, TrainConfig, model_overrides, resume_differences
from cnl.engine.features import CachedModel, cache_features
from cnl.engine.loaders import eval_loader, train_loader, usable_workers
from cnl.engine.logbook import Logbook
from cnl.engine.loop import EpochStats, StepSettings, TrainParts, evaluate, train_one_epoch
from cnl.engine.parallel import STOPPING
from cnl.engine.predictions import image_names, write_image_predictions
from cnl.engine.provenance import provenance
from cnl.engine.records import EpochRecord, Summary
from cnl.engine.runfolder import RunFolder
from cnl.engine.runlock import RunLock
from cnl.errors import InvalidValue, MissingFile, cut, excerpt, reason
from cnl.models import create_model
from cnl.models.registry import check_model


class RunInterrupted(KeyboardInterrupt):
    """A signal ended the run. A KeyboardInterrupt, so that no ``except Exception`` on the
    way (a weights reader, a data loader) can swallow it."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(f"{signal.Signals(number).name} {message}")
        self.number = number

    @property
    def exit_code(self) -> int:
        return 128 + self.number  # as a shell reports a process ended by that signal


def resume_checkpoint(output: str | Path, resume: str | None) -> Path | None:
    """The checkpoint a run into ``output`` continues from, or None for a fresh start.

    ``resume`` as ``TrainConfig.resume``: "yes", "auto", "no", or a checkpoint's path;
    None means "no", or "auto" in a group that torchrun restarted."""
    mode = resume or ("auto" if distributed.restarted() else "no")
    if mode not in RESUME_CHOICES:
        if not Path(mode).is_file():
            raise MissingFile(f"cannot resume: checkpoint {mode} does not exist")
        return Path(mode)
    path = RunFolder(output).last
    if mode == "yes" and not path.is_file():
        raise MissingFile(f"cannot resume: {path} does not exist (use --resume auto to start fresh then)")
    return path if mode != "no" and path.is_file() else None


class Unresolved(enum.Enum):
    YET = "the resume point is read by the run"


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues from, read once: the checkpoint asked for (``path``), the state
    read, the file it came from (last-prev.pt when last.pt is damaged) and why ``path`` was
    not used (None when it was)."""

    path: Path
    state: dict[str, Any]
    used: Path
    damage: str | None

    @classmethod
    def of(cls, output: str | Path, resume: str | None) -> ResumePoint | None:
        """The point a run into ``output`` with ``--resume resume`` continues from; None: a fresh start."""
        path = resume_checkpoint(output, resume)
        return cls(path, *read_for_resume(path)) if path is not None else None


def first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (``path`` itself, or one above
    it); None when ``path`` exists."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


@dataclass(kw_only=True)
class Built:
    """Everything a run trains with, built once from its config (``build_run``)."""

    train_set: Any
    val_set: Any  # None without a validation split
    test_set: Any
    classes: list[str]
    steps_per_epoch: int
    model: torch.nn.Module  # the weights that train (inside DDP and torch.compile when used)
    parts: TrainParts
    evaluated: torch.nn.Module  # what is evaluated, checkpointed and used afterwards: the EMA's when there is one
    eval_model: torch.nn.Module  # ``evaluated``, compiled when asked
    test_loader: DataLoader
    val_loader: DataLoader | None
    settings: StepSettings
    provenance: dict[str, Any]

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_run(
    config: TrainConfig,
    ctx: distributed.Context,
    output: Path,
    batch_size: int,
    global_batch: int,
    given_model: torch.nn.Module | None = None,
    given_sets: tuple[Dataset, Dataset] | None = None,
) -> Built:
    """The builders in order: data, model, what trains it, loaders, step settings."""
    output.mkdir(parents=True, exist_ok=True)
    set_determinism(config)
    if given_model is None:
        # Before any data is read: the model's name, layers, input size and weights.
        check_model(
            config.model, config.img_size, config.weights, config.eval_crop, **model_overrides(config.to_dict())
        )
    train_set: Any
    test_set: Any
    val_set: Any = None
    if given_sets is None:
        train_set, val_set, test_set = build_datasets(config, output)
    else:
        train_set, test_set = given_sets
    classes = class_names(train_set)
    if given_model is not None:
        check_named(config, given_model, len(classes))
    steps = steps_per_epoch(train_set, global_batch, config.data_root)
    model = build_model(config, classes, ctx, given_model)
    parts = build_parts(model, config, ctx, steps)
    evaluated = parts.ema.module if parts.ema is not None else model
    eval_model: torch.nn.Module = torch.compile(evaluated) if config.compile else evaluated  # type: ignore[assignment]
    settings = build_step_settings(config, ctx, len(classes), global_batch)
    read: dict[str, Any] = {"train": train_set, "val": val_set, "test": test_set}  # what the loaders read
    if config.cache_features:
        if ctx.distributed:
            raise InvalidValue("--cache-features runs on one process: start it without torchrun")
        folder = RunFolder(output).features
        cached, read = cache_features(model, read, folder, batch_size, usable_workers(config.workers), ctx.device)
        parts.model, eval_model = cached, CachedModel(evaluated, cached.cut, cached.shapes)
        settings = dataclasses.replace(settings, channels_last=False)  # flat rows, not images
    test_loader = eval_loader(read["test"], batch_size, config.workers, ctx)
    val_loader = None if val_set is None else eval_loader(read["val"], batch_size, config.workers, ctx)
    return Built(
        train_set=read["train"], val_set=val_set, test_set=test_set, classes=classes, steps_per_epoch=steps,
        model=model, parts=parts, evaluated=evaluated, eval_model=eval_model, test_loader=test_loader,
        val_loader=val_loader, settings=settings,
        provenance=provenance(ctx, batch_size, global_batch, config.accum_steps),
    )  # fmt: skip


def check_named(config: TrainConfig, model: torch.nn.Module, num_classes: int) -> None:
    """A model handed to ``fit`` must be what ``config.model`` builds (same tensors, same
    shapes): a checkpoint names its model, and cnl eval, predict, export and load_model build
    it again by that name."""
    overrides = model_overrides(config.to_dict())
    try:
        with torch.device("meta"):
            named = create_model(config.model, num_classes=num_classes, img_size=config.img_size, **overrides)
    except InvalidValue:
        named = None
    given = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if named is None or {key: tuple(value.shape) for key, value in named.state_dict().items()} != given:
        raise InvalidValue(
            f"fit was given a model that is not what config.model ({config.model}) builds: name yours with "
            "cnl.register_model and set config.model to that name, so that its checkpoints can be evaluated, "
            "exported and loaded"
        )


@dataclass
class Stopped:
    """A signal stopped the loop; ``where`` says at which step and what was saved."""

    where: str


@dataclass
class RunState:
    """What a checkpoint restores besides the weights."""

    start_epoch: int = 0
    start_step: int = 0  # optimizer steps of start_epoch already trained (an interrupted epoch)
    best_epoch: int = 0
    best: dict[str, float] = field(default_factory=dict)  # top1, top5 (test) and val_top1, val_top5 of best_epoch
    final: dict[str, float] = field(default_factory=dict)  # the same of the last finished epoch
    rates: list[float] = field(default_factory=list)  # training images/s of each finished epoch
    kept: list[tuple[float, int]] = field(default_factory=list)  # (selection top-1, epoch) of best-eNNN.pt files

    @classmethod
    def of(cls, state: dict[str, Any]) -> RunState:
        """The run state a checkpoint holds (as ``read_checkpoint`` gives it: every entry there)."""
        best = dict(state["best"])
        best_epoch = int(best.pop("epoch"))
        kept = [(float(value), int(epoch)) for value, epoch in state["kept"]]
        return cls(state["epoch"], state["step"], best_epoch, best, dict(state["final"]), list(state["rates"]), kept)

    def finished(self, epochs: int) -> bool:
        return self.start_epoch >= epochs and self.start_step == 0


def same_shape(stored: Any, fresh: Any) -> bool:
    """Whether ``stored`` (read from a checkpoint) has the structure of ``fresh``, what a
    newly built part gives: the same types, a number where a float is, lists of the same
    length, and the entries that both mappings have alike (a torch version may add or drop
    some). None in ``fresh`` takes anything."""
    if fresh is None:
        return True
    if isinstance(fresh, dict):
        return isinstance(stored, dict) and all(
            same_shape(stored[key], fresh[key]) for key in stored.keys() & fresh.keys()
        )
    if isinstance(fresh, list | tuple):
        return isinstance(stored, list | tuple) and len(stored) == len(fresh) and all(map(same_shape, stored, fresh))
    if isinstance(fresh, float):
        return isinstance(stored, int | float) and not isinstance(stored, bool)
    if isinstance(fresh, torch.Tensor):
        return isinstance(stored, torch.Tensor) and stored.shape == fresh.shape
    return type(stored) is type(fresh)


def restore(part: Any, stored: dict[str, Any], entry: str, path: Path) -> None:
    """Load a checkpoint's ``entry`` into a newly built ``part`` (model, optimizer, scheduler,
    loss scaler); one that does not fit it is a CheckpointError naming the file and entry,
    before any training, never an error at the first step."""
    fresh = part.state_dict()
    # An entry the fresh state lacks may be a torch version's own; one naming an attribute of
    # the part (a scheduler's "optimizer") would replace it (schedulers load by __dict__.update).
    if not same_shape(stored, fresh) or any(hasattr(part, key) for key in stored.keys() - fresh.keys()):
        raise CheckpointError(f"{path}: its {entry} state does not fit this run (another structure than this run's)")
    try:
        part.load_state_dict(stored)
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError) as error:
        raise CheckpointError(f"{path}: its {entry} state does not fit this run ({reason(error, 120)})") from None


def check_optimizer_state(optimizer: torch.optim.Optimizer, stored: dict[str, Any], path: Path) -> None:
    """Every tensor of the stored per-parameter state (momentum, moments) has its parameter's
    shape, or is a scalar (a step count): torch loads any, and fails only at the next step."""
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    per_parameter = stored.get("state", {})
    if not isinstance(per_parameter, dict):
        raise CheckpointError(f"{path}: its optimizer state is not a mapping of parameters ({excerpt(per_parameter)})")
    for index, values in per_parameter.items():
        fits = isinstance(index, int) and 0 <= index < len(parameters) and isinstance(values, dict)
        if fits:
            tensors = [value for value in values.values() if isinstance(value, torch.Tensor)]
            fits = all(tensor.dim() == 0 or tensor.shape == parameters[index].shape for tensor in tensors)
        if not fits:
            raise CheckpointError(
                f"{path}: its optimizer state of parameter {excerpt(index, 20)} does not fit this run"
            )


class Run:
    """One training run: ``Run(config).fit()`` returns the summary written to summary.json."""

    def __init__(
        self,
        config: TrainConfig,
        model: torch.nn.Module | None = None,
        train_set: Dataset | None = None,
        test_set: Dataset | None = None,
        point: ResumePoint | None | Unresolved = Unresolved.YET,
    ) -> None:
        """``point``: where to continue from, when the caller has read it (``cnl train`` does,
        for the stored settings); else ``config.resume`` is resolved and read here."""
        if (train_set is None) != (test_set is None):
            raise InvalidValue("give both train_set and test_set, or neither (then config.data_root is read)")
        config.validate(data_root=train_set is None)  # a config built by hand is checked as one from flags
        self.given_model = model
        self.point = point
        self.given_sets = (train_set, test_set) if train_set is not None and test_set is not None else None
        self.config = config
        self.output = Path(config.output)
        self.folder = RunFolder(self.output)
        self.ctx = distributed.setup(config.device)
        self.main = self.ctx.is_main
        self.batch_size, self.global_batch = config.batch_plan(self.ctx.world_size)
        if config.sync_bn and self.ctx.distributed and self.ctx.device.type != "cuda":
            raise InvalidValue(
                "--sync-bn needs CUDA devices (SyncBatchNorm runs on GPUs only); on the CPU every process "
                "already evaluates rank 0's BatchNorm statistics"
            )
        self.recipe = config.recipe(self.global_batch)
        self.training = False  # set-up, until every process is ready: a signal then ends the run at once
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
            for note in config.cautions():
                print(f"cnl train: warning: {note}", file=sys.stderr, flush=True)

    # --- checkpoints ---------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.folder.checkpoints

    def _state(self, epoch: int, run: RunState, metrics: dict[str, Any], step: int = 0) -> dict[str, Any]:
        return {
            "step": step,
            "model": self.built.model.state_dict(),
            **({"model_ema": self.built.parts.ema.module.state_dict()} if self.built.parts.ema is not None else {}),
            "optimizer": self.built.parts.optimizer.state_dict(),
            "scheduler": self.built.parts.scheduler.state_dict(),
            "scaler": self.built.parts.scaler.state_dict(),
            "epoch": epoch,
            "best": {**run.best, "epoch": run.best_epoch},
            "final": run.final,
            "rates": run.rates,
            "kept": run.kept,
            "metrics": {k: v for k, v in metrics.items() if k not in ("per_class_top1", "per_image")},
            "config": self.recipe,
            "classes": self.built.classes,
            "model_name": self.config.model,
            "provenance": self.built.provenance,
        }

    def _resume(self, point: ResumePoint) -> RunState:
        """Load what ``point`` holds into the built run."""
        path, state, used, damage = point.path, point.state, point.used, point.damage
        if damage is not None:
            distributed.barrier()  # every process has read what it resumes from
            if self.main:
                # Kept for inspection, and out of the way: the next save must not rotate it into last-prev.pt.
                path.rename(path.with_name(f"{path.name}.damaged"))
                print(f"cnl train: warning: {damage}; resuming from {used} (kept it as {path.name}.damaged)",
                      file=sys.stderr, flush=True)  # fmt: skip
        if list(state["classes"]) != self.built.classes:
            raise InvalidValue(
                f"{path} was trained on other classes ({len(state['classes'])}) than {self.config.data_root} holds "
                f"({len(self.built.classes)}); cannot resume"
            )
        previous = state.get("provenance", {}).get("global_batch_size", self.global_batch)
        if type(previous) is not int or previous != self.global_batch:
            raise InvalidValue(
                f"{path} was trained with a global batch of {excerpt(previous)}; resuming with {self.global_batch} "
                "would shift its schedule (resume on any number of processes, with the same global batch)"
            )
        parts = self.built.parts
        restore(self.built.model, state["model"], "model", path)
        if parts.ema is not None:
            restore(parts.ema.module, state.get("model_ema", state["model"]), "model_ema", path)
        check_optimizer_state(parts.optimizer, state["optimizer"], path)
        for part, entry in ((parts.optimizer, "optimizer"), (parts.scheduler, "scheduler"), (parts.scaler, "scaler")):
            restore(part, state[entry], entry, path)
        self._keep_metrics(state["epoch"])
        return RunState.of(state)

    def _keep_metrics(self, completed: int) -> None:
        """Drop log lines of epochs past ``completed``: they will be run again."""
        if self.main:
            self.folder.keep_epochs(completed)

    def _write_config(self) -> None:
        if self.main:
            header = (
                f"# The settings of {self.output}, written by: {self.built.provenance['command']}\n"
                f"# cnl train --config {self.output / 'config.yaml'} --output NEW_FOLDER trains the same run again.\n"
            )
            text = yaml.safe_dump(self.recipe, sort_keys=False)
            self.folder.config.write_text(header + text, encoding="utf-8")

    # --- signals -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM: during set-up, or a second time, they end the run at once;
        the first during training asks the loop to stop after the current step and save."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, self._on_signal) for number in STOPPING}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _on_signal(self, number: int, frame: object) -> None:
        if self.training and self.stop_signal is None:
            self.stop_signal = number
            if self.main:
                # os.write, not print: the handler may run inside a write to sys.stderr (a
                # progress bar), and a buffered stream refuses a reentrant call; a closed
                # stderr must not turn the stop into a traceback.
                name = signal.Signals(number).name
                notice = f"cnl train: {name} received: stopping after this step; send it again to stop at once\n"
                with contextlib.suppress(OSError):
                    os.write(2, notice.encode())
            return
        if self.training:
            raise RunInterrupted(number, "again: stopped at once; checkpoints/last.pt is the last complete one")
        raise RunInterrupted(number, "during set-up: stopped; no checkpoint was written")

    def _should_stop(self) -> bool:
        flag = torch.tensor([float(self.stop_signal is not None)], device=self.ctx.device)
        return bool(distributed.all_reduce_sum(flag).item() > 0)  # every process stops at the same step

    # --- the loop --------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train; the summary. A signal ends the loop through its return (``Stopped``), after
        which this raises ``RunInterrupted``: to the caller a stopped run must not look like a
        finished one, and a KeyboardInterrupt is what a Ctrl-C would have raised there."""
        point = ResumePoint.of(self.output, self.config.resume) if self.point is Unresolved.YET else self.point
        if point is not None:
            self._check_resumable(point.state, point.path)
        done = self._already_done(point)
        if done is not None:
            return done
        made = first_missing(self.output) if self.main else None  # a failed start leaves no folder behind
        lock = RunLock(self.output)
        configured = False
        with self._signals():
            try:
                self._announce()
                if self.main:
                    ended = lock.acquire()
                    if ended is not None:
                        print(f"cnl train: taking over the lock of process {ended}, which has ended",
                              file=sys.stderr, flush=True)  # fmt: skip
                    remove_temporaries(self.checkpoints)  # of a run killed while it wrote
                self.built = build_run(
                    self.config, self.ctx, self.output, self.batch_size, self.global_batch, self.given_model,
                    self.given_sets,
                )  # fmt: skip
                run = self._resume(point) if point is not None else RunState()
                if point is None:
                    self._keep_metrics(0)
                # Every process is set up before config.yaml is written: from its writing on,
                # a signal to any of them stops them all after one step.
                self.training = True
                distributed.barrier()
                self._write_config()
                configured = True
                result = self._loop(run)
            finally:
                lock.release()
                if made is not None and not configured:
                    self._clear_failed_start(made)
                distributed.teardown(self.ctx)
        if isinstance(result, Stopped):
            raise RunInterrupted(self.stop_signal or signal.SIGTERM, f"received: stopped at {result.where}")
        return result

    def _check_resumable(self, state: dict[str, Any], path: Path | None) -> None:
        """Before any work: a resume asked to change the model or the recipe is refused."""
        if state["model_name"] != self.config.model:
            raise InvalidValue(
                f"{path} is a checkpoint of {cut(state['model_name'])}, not of {self.config.model}; cannot resume "
                "(train another model into another --output)"
            )
        problems = resume_differences(state.get("config", {}), self.config, state["epoch"])
        if problems:
            more = f" and {len(problems) - 2} more" if len(problems) > 2 else ""
            raise InvalidValue(
                f"{path} cannot resume with other settings ({'; '.join(problems[:2])}{more}): a resumed run keeps "
                "its recipe; only more epochs (step schedule), workers, device, data_root, compile, channels_last and "
                "deterministic may change; train into another --output"
            )

    def _clear_failed_start(self, made: Path) -> None:
        """Remove what a start that failed before training made: the lock file, an empty list
        of skipped images, and the folders up to ``made`` where they are empty. Anything else
        stays."""
        self.folder.lock.unlink(missing_ok=True)
        if self.folder.skipped.exists() and not self.folder.skipped.stat().st_size:
            self.folder.skipped.unlink()
        folder = self.output
        while True:
            try:
                folder.rmdir()
            except OSError:  # not empty: something else is there
                return
            if folder == made:
                return
            folder = folder.parent

    def _already_done(self, point: ResumePoint | None) -> dict[str, Any] | None:
        """The summary of a finished run that resuming would not change (its checkpoint has
        every epoch of this config, its summary.json is written): nothing is built, trained or
        written. None when there is something to do (a summary that a kill kept from being
        written is written by the resumed run, which trains nothing)."""
        if point is None:
            return None
        state, path, damage = point.state, point.used, point.damage
        summary = self.folder.read_summary() if damage is None else None
        if state["model_name"] != self.config.model or not RunState.of(state).finished(self.config.epochs):
            return None
        if summary is None or summary.epochs != self.config.epochs:
            return None
        if self.main:
            print(f"{path}: finished at epoch {state['epoch']} of {self.config.epochs}: nothing to do", flush=True)
        distributed.teardown(self.ctx)
        return summary.to_json()

    def _loop(self, run: RunState) -> dict[str, Any] | Stopped:
        """Epochs from where ``run`` left off; the summary, or where a signal stopped it."""
        config, built = self.config, self.built
        with Logbook(self.folder, config.epochs, self.main) as logbook:
            for epoch in range(run.start_epoch, config.epochs):
                first_step = run.start_step if epoch == run.start_epoch else 0
                lr = built.parts.optimizer.param_groups[0]["lr"]
                loader = train_loader(
                    built.train_set, config.seed, epoch, first_step, self.global_batch, self.batch_size,
                    config.workers, self.ctx,
                )  # fmt: skip
                train = train_one_epoch(built.parts, loader, built.settings, epoch, first_step, self._should_stop)
                if train.stopped and train.steps < built.steps_per_epoch:
                    return self._save_stop(epoch, train.steps, run)
                self._end_epoch(epoch, run, train, lr, logbook)
                if train.stopped:
                    return self._stopped(f"the end of epoch {epoch + 1}")
            summary = self._summary(run)
            logbook.summary(summary)
        return summary.to_json()

    def _end_epoch(self, epoch: int, run: RunState, train: EpochStats, lr: float, logbook: Logbook) -> None:
        """Evaluate (validation, test), keep the best epoch, save best.pt and last.pt, log."""
        built = self.built
        distributed.broadcast_buffers(built.evaluated)  # every process evaluates what rank 0 saves
        val = {}
        if built.val_loader is not None:
            val = evaluate(built.eval_model, built.val_loader, built.settings, f"val {epoch + 1}", per_image=True)
        metrics = evaluate(built.eval_model, built.test_loader, built.settings, f"test {epoch + 1}", per_image=True)
        current = {"top1": metrics["top1"], "top5": metrics["top5"]}
        current.update({"val_top1": val["top1"], "val_top5": val["top5"]} if val else {})
        chosen_on = "val_top1" if val else "top1"  # without a validation set, the paper's optimistic choice
        improved = current[chosen_on] > run.best.get(chosen_on, -1.0)
        if improved:
            run.best, run.best_epoch = current, epoch + 1
        run.final = current
        run.rates.append(train.images_per_s)
        dropped = self._rank(run, current[chosen_on], epoch + 1)
        if self.main:
            state = self._state(epoch + 1, run, metrics)  # gathered once, written once or more
            if improved:
                save_checkpoint(state, self.folder.best)
                self._write_predictions(metrics, val)
            if (current[chosen_on], epoch + 1) in run.kept:
                save_checkpoint(state, self.folder.kept(epoch + 1))
            for gone in dropped:
                self.folder.kept(gone).unlink(missing_ok=True)
            save_checkpoint(state, self.folder.last, keep_previous=True)
        logbook.epoch(epoch_record(epoch + 1, lr, train, metrics, val))

    def _rank(self, run: RunState, value: float, epoch: int) -> list[int]:
        """``--keep-best N``: the N best epochs by the selection metric (the earlier first on a
        tie) into ``run.kept``; the epochs that fall out of them, whose best-eNNN.pt goes."""
        if self.config.keep_best < 2:
            return []
        ranked = sorted([*run.kept, (value, epoch)], key=lambda item: (-item[0], item[1]))
        run.kept = ranked[: self.config.keep_best]
        return [gone for _, gone in ranked[self.config.keep_best :]]

    def _write_predictions(self, test: dict[str, Any], val: dict[str, Any]) -> None:
        """predictions.csv of the epoch kept as best.pt: the test split, and the validation split when there is one."""
        splits = {"test": (image_names(self.built.test_set), test["per_image"])}
        if val:
            splits["val"] = (image_names(self.built.val_set), val["per_image"])
        write_image_predictions(self.folder.predictions, splits, self.built.classes)

    def _save_stop(self, epoch: int, step: int, run: RunState) -> Stopped:
        """Save the state after ``step`` optimizer steps of ``epoch`` (0-based)."""
        if self.main:
            state = self._state(epoch, run, {}, step=step)
            save_checkpoint(state, self.folder.last, keep_previous=True)
        return self._stopped(f"epoch {epoch + 1}, step {step}")

    def _stopped(self, where: str) -> Stopped:
        assert self.stop_signal is not None or not self.main
        return Stopped(f"{where}; saved {self.folder.last}; continue with --resume")

    def _layout(self) -> str:
        """The layout the data were read in: ``dataset``, or the one ``auto`` found."""
        if self.given_sets is not None or self.config.dataset != "auto":
            return self.config.dataset
        return detect_layout(self.config.data_root)

    def _summary(self, run: RunState) -> Summary:
        """The run's results: its best epoch, its last one, and how it was trained (every
        figure from ``run``, which a checkpoint restores: a resumed run sums up the whole run)."""
        log = self.folder.skipped
        skipped = sorted({line.split("\t")[0] for line in log.read_text().splitlines()}) if log.exists() else []
        return Summary(
            model=self.config.model,
            dataset=self._layout(),
            classes=len(self.built.classes),
            epochs=self.config.epochs,
            selection="val" if self.built.val_set is not None else "test (optimistic)",
            best_epoch=run.best_epoch,
            best_top1=run.best.get("top1"),
            best_top5=run.best.get("top5"),
            final_top1=run.final.get("top1"),
            final_top5=run.final.get("top5"),
            best_val_top1=run.best.get("val_top1"),
            best_val_top5=run.best.get("val_top5"),
            final_val_top1=run.final.get("val_top1"),
            final_val_top5=run.final.get("val_top5"),
            params=self.built.params,
            train_images_per_s=float(np.mean(run.rates)) if run.rates else None,
            world_size=self.ctx.world_size,
            batch_size=self.batch_size,
            accum_steps=self.config.accum_steps,
            global_batch_size=self.global_batch,
            lr=self.config.lr,
            skipped_images=len(skipped),
            provenance=self.built.provenance,
            replicas_identical=distributed.replicas_identical(self.built.model) if self.ctx.distributed else None,
        )


def epoch_record(epoch: int, lr: float, train: EpochStats, test: dict[str, Any], val: dict[str, Any]) -> EpochRecord:
    """An epoch's record: its training figures, and ``evaluate``'s of the test (and validation) split."""
    return EpochRecord(
        epoch=epoch,
        lr=lr,
        train_loss=train.loss,
        train_top1=train.top1,
        train_images_per_s=train.images_per_s,
        train_time_s=train.time_s,
        **({"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]} if val else {}),
        test_loss=test["loss"],
        top1=test["top1"],
        top5=test["top5"],
        test_count=test["count"],
        per_class_top1=test["per_class_top1"],
    )


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
