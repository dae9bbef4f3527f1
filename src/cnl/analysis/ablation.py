"""Table 2 as an experiment: the same recipe for each model, over one or more seeds.

Each model gets mean and standard deviation over seeds, and every model after the first
its comparison with the first, paired twice: by seed (the same seed gives the same initial
head, data order and crops) and, within a seed, image by image on the test split, read
from each run's ``predictions.csv`` (the tests are in ``cnl.analysis.paired``).

Run again over the same folder, an ablation keeps what it did: a finished run with the same
settings is reused, an interrupted one continues where it stopped (``--resume auto``), a
missing one is trained; a folder holding a run of other settings is refused, never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from cnl.analysis.paired import (
    SEEDS_FOR_INTERVAL,
    compare_over_seeds,
    compare_seed,
    mean_and_interval,
    p_number,
    verdict,
)
from cnl.analysis.profile import profile_model
from cnl.engine import distributed
from cnl.engine.checkpoint import read_for_resume
from cnl.engine.config import TrainConfig, model_overrides, recipe_differences
from cnl.engine.parallel import fit_each, thread_count
from cnl.engine.predictions import Answers, read_correct
from cnl.engine.records import Summary
from cnl.engine.runfolder import RunFolder
from cnl.engine.trainer import RunInterrupted, RunState, fit
from cnl.errors import DataError, InvalidValue, excerpt
from cnl.tables import Block, Table, markdown

PER_SEED = ("top1", "top5", "best_epoch", "final_top1", "train_images_per_s")


def run_folder(model: str, seed: int, seeds: list[int]) -> str:
    """``model`` for a single seed (a one-seed ablation: one folder per model), ``model/seed<k>`` for several."""
    return model if len(seeds) == 1 else f"{model}/seed{seed}"


def run_ablation(
    base: TrainConfig,
    models: list[str],
    output: str | Path,
    seeds: list[int] | None = None,
    jobs: int = 1,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Train each of ``models`` once per seed (``base.seed`` when none are given) into
    ``output/<model>[/seed<k>]``; returns the rows (see ``summarise``).

    ``jobs`` > 1 trains that many runs at once, each in a worker process with ``threads``
    threads (1 if None; ``cnl.engine.parallel``); a single process (``jobs`` 1, or inside
    torchrun) trains them in turn with ``threads`` threads (torch's own count if None).
    Writes ``output/ablation.json`` (every per-seed value) and ``output/ablation.md``.
    """
    output = Path(output)
    seeds = seeds or [base.seed]
    plan: dict[str, TrainConfig] = {}
    for seed in seeds:
        for name in models:
            folder = run_folder(name, seed, seeds)
            plan[folder] = dataclasses.replace(base, model=name, seed=seed, output=str(output / folder), resume="auto")
    for config in plan.values():  # a folder of other settings is refused before anything trains
        note = what_is_there(config)
        if note and distributed.is_main_process():
            print(note, flush=True)
    summaries: dict[str, dict[str, Any]] = {}
    try:
        if jobs > 1 and distributed.world_size() == 1:
            fit_each(list(plan.values()), jobs, threads or 1, lambda config: f"{config.model} seed {config.seed}")
        else:
            with thread_count(threads):
                for folder, config in plan.items():
                    summaries[folder] = fit(config)
    except RunInterrupted:
        write_ablation(summarise(base, collect(plan, summaries)), base, output, seeds)  # what finished is tabled
        raise
    rows = summarise(base, collect(plan, summaries))
    write_ablation(rows, base, output, seeds)
    return rows


def collect(plan: dict[str, TrainConfig], summaries: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each model's finished runs, in seed order: the summaries returned, else (runs trained by
    worker processes) the summary.json each finished run wrote."""
    results: dict[str, list[dict[str, Any]]] = {}
    for folder, config in plan.items():
        returned = summaries.get(folder)
        run = RunFolder(config.output)
        summary = Summary.checked(returned, folder) if returned is not None else run.read_summary()
        if summary is None or summary.epochs != config.epochs:
            continue  # not trained, or stopped before its end
        results.setdefault(config.model, []).append(
            {
                "seed": config.seed,
                "run": folder,
                "top1": summary.best_top1,
                "top5": summary.best_top5,
                "best_epoch": summary.best_epoch,
                "final_top1": summary.final_top1,
                "train_images_per_s": summary.train_images_per_s,
                "params": summary.params,
                "classes": summary.classes,
                "predictions": run.predictions,
            }
        )
    return results


def what_is_there(config: TrainConfig) -> str | None:
    """What an ablation does with the run folder ``config.output``: None when it holds no
    run (it is trained), else a line saying the run is reused or continued. A run of other
    settings there is an InvalidValue that names the settings: it is never trained over."""
    folder = RunFolder(config.output)
    if not folder.last.is_file():
        return None
    state, _, _ = read_for_resume(folder.last)
    _, global_batch = config.batch_plan(distributed.world_size())
    differences = recipe_differences(state.get("config", {}), config.recipe(global_batch))
    if state["model_name"] != config.model:
        differences.insert(0, f"model: {excerpt(state['model_name'])} there, {config.model} here")
    if differences:
        more = f" and {len(differences) - 2} more" if len(differences) > 2 else ""
        raise InvalidValue(
            f"{folder.root} holds a run of other settings ({'; '.join(differences[:2])}{more}): give another "
            "--output, or remove that folder to train it again"
        )
    run = RunState.of(state)
    if run.finished(config.epochs):
        return f"reusing {folder.root}: the same settings, finished at epoch {run.start_epoch}"
    return f"continuing {folder.root}: the same settings, stopped at epoch {run.start_epoch}, step {run.start_step}"


def paired_answers(first: tuple[Path, Answers], other: tuple[Path, Answers]) -> tuple[Any, Any]:
    """The two runs' top-1 correctness as two bool arrays in the same image order. Both must
    hold the same images (in any order); otherwise a DataError names both files."""
    import numpy as np

    (first_file, first_answers), (other_file, other_answers) = first, other
    if first_answers.keys() != other_answers.keys():
        only_first = sorted(first_answers.keys() - other_answers.keys())
        only_other = sorted(other_answers.keys() - first_answers.keys())
        example = excerpt((only_first or only_other)[0][1])
        raise DataError(
            f"{other_file} and {first_file} are of different test images: cannot pair them ({len(only_first)} only "
            f"in the second, {len(only_other)} only in the first, e.g. {example})"
        )
    keys = sorted(first_answers)
    return np.array([first_answers[k] for k in keys]), np.array([other_answers[k] for k in keys])


def paired_with(runs: list[dict[str, Any]], first_answers: dict[int, tuple[Path, Answers]]) -> dict[str, Any]:
    """``compare_over_seeds`` of ``runs`` against the first model's answers of the same seeds
    (``first_answers``: seed -> its predictions.csv and answers), image by image on the test
    split of each run's predictions.csv."""
    per_seed = []
    for run in runs:
        if run["seed"] not in first_answers:
            continue  # an interrupted ablation: the first model's run of this seed never finished
        first, other = paired_answers(
            first_answers[run["seed"]], (run["predictions"], read_correct(run["predictions"]))
        )
        per_seed.append(compare_seed(first, other, run["seed"]))
    return compare_over_seeds(per_seed)


def summarise(base: TrainConfig, results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per model: ``top1``/``top5`` (means over seeds), their ``*_std``, the per-seed values,
    size and cost, and for every model after the first ``diff_top1``: its comparison with the
    first model (see ``paired_with``)."""
    rows = []
    reference = next(iter(results.values()), [])
    first_answers = {run["seed"]: (run["predictions"], read_correct(run["predictions"])) for run in reference}
    for name, runs in results.items():
        top1 = mean_and_interval([r["top1"] for r in runs])
        top5 = mean_and_interval([r["top5"] for r in runs])
        profile = profile_model(name, base.img_size, runs[0]["classes"], **model_overrides(base.to_dict()))
        row: dict[str, Any] = {
            "model": name,
            "top1": top1["mean"],
            "top1_std": top1["std"],
            "top5": top5["mean"],
            "top5_std": top5["std"],
            "best_epoch": statistics.fmean(r["best_epoch"] for r in runs),
            "final_top1": statistics.fmean(r["final_top1"] for r in runs),
            "params": runs[0]["params"],
            "macs": profile.macs,
            "macs_all": profile.macs_all,
            "train_images_per_s": statistics.fmean(r["train_images_per_s"] for r in runs),
            "per_seed": [{k: r[k] for k in ("seed", "run", *PER_SEED)} for r in runs],
            "runs": [r["run"] for r in runs],
        }
        if runs is not reference:
            comparison = paired_with(runs, first_answers)
            if comparison["per_seed"]:
                row["diff_top1"] = comparison
        rows.append(row)
    return rows


def write_ablation(rows: list[dict[str, Any]], base: TrainConfig, output: Path, seeds: list[int]) -> None:
    output.mkdir(parents=True, exist_ok=True)
    record = {"config": base.to_dict(), "seeds": seeds, "rows": rows}
    (output / "ablation.json").write_text(json.dumps(record, indent=2) + "\n")
    (output / "ablation.md").write_text(format_ablation(rows, base, seeds) + "\n")


def _plus_minus(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _difference(row: dict[str, Any]) -> str:
    diff = row.get("diff_top1")
    if diff is None:
        return "-"
    text = f"{diff['mean']:+.2f}" if diff["std"] is None else f"{diff['mean']:+.2f} ± {diff['std']:.2f}"
    return text if diff["low"] is None else f"{text} [{diff['low']:+.2f}, {diff['high']:+.2f}]"


def paired_table(rows: list[dict[str, Any]]) -> Table:
    """Per model and seed, the per-image comparison with the first model; per model over
    seeds, the stratified test."""
    first = rows[0]["model"]
    header = ["model", "seed", f"top-1 vs {first}", "paired bootstrap 95%", "only this right"]
    header += [f"only {first} right", "McNemar p"]
    lines: list[list[Any]] = []
    for row in rows[1:]:
        diff = row.get("diff_top1")
        if diff is None:
            continue
        for seed in diff["per_seed"]:
            lines.append(
                [row["model"], seed["seed"], f"{seed['diff']:+.2f}", f"[{seed['low']:+.2f}, {seed['high']:+.2f}]",
                 seed["only_other"], seed["only_first"], p_number(seed["p"])]
            )  # fmt: skip
        if len(diff["per_seed"]) > 1:
            lines.append(
                [row["model"], f"all: better in {diff['better']}, worse in {diff['worse']}", f"{diff['mean']:+.2f}",
                 "", diff["only_other"], diff["only_first"], f"{p_number(diff['stratified_p'])} (stratified)"]
            )  # fmt: skip
    return Table.of(header, lines)


def selection(config: TrainConfig) -> str:
    """Which epoch the accuracies are of, in words."""
    what = "Top-1/top-5 (%) on the test split of"
    if config.val_split is None:
        return f"{what} the best test epoch (optimistic: chosen on the test split, as the paper)"
    return f"{what} the epoch with the best validation top-1 (val split {config.val_split})"


def ablation_blocks(
    rows: list[dict[str, Any]],
    config: TrainConfig,
    seeds: list[int] | None = None,
    timing: bool = True,
    tests: bool = True,
) -> list[Block]:
    """Accuracy over seeds, the paired difference to the first model, size, cost, speed
    relative to the first (unless ``timing`` is False: a table that repeats exactly), how it
    was measured, then (unless ``tests`` is False) the per-image tests and one verdict per model."""
    seeds = seeds or [config.seed]
    header = ["model", "top-1", "top-5", "top-1 vs first", "params (M)", "GMACs layers", "GMACs all"]
    reference = rows[0]["train_images_per_s"] if rows else None
    lines = []
    for row in rows:
        line = [
            row["model"],
            _plus_minus(row["top1"], row.get("top1_std")),
            _plus_minus(row["top5"], row.get("top5_std")),
        ]
        line += [
            _difference(row),
            f"{row['params'] / 1e6:.2f}",
            f"{row['macs'] / 1e9:.3f}",
            f"{row['macs_all'] / 1e9:.3f}",
        ]
        if timing:
            speed = row["train_images_per_s"]
            line += [f"{speed:.1f}", f"{speed / reference:.2f}x" if reference else "-"]
        lines.append(line)
    over = f"mean ± sd over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    blocks: list[Block] = [
        Table.of(header + (["train img/s", "speed vs first"] if timing else []), lines),
        f"{config.dataset} at {config.data_root}, {config.img_size}x{config.img_size}, {config.epochs} epochs, "
        f"{config.batch_description()}, lr {config.lr}; {over}. {selection(config)}. The difference to the "
        f"first model is paired by seed (mean ± sd, with a Student-t 95 % interval from {SEEDS_FOR_INTERVAL} "
        "seeds on) and, within each seed, image by image on the test split (below). GMACs per image ('layers' "
        "leaves out the attention products, as the paper's table).",
    ]
    if compared(rows) and tests:
        blocks += [paired_table(rows), verdicts(rows)]
    return blocks


def compared(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows after the first that carry a comparison with it."""
    return [row for row in rows[1:] if row.get("diff_top1")]


def verdicts(rows: list[dict[str, Any]]) -> str:
    """One verdict sentence a line, for each model compared with the first."""
    return "\n".join(verdict(row["model"], rows[0]["model"], row["diff_top1"]) for row in compared(rows))


def format_ablation(
    rows: list[dict[str, Any]], config: TrainConfig, seeds: list[int] | None = None, timing: bool = True
) -> str:
    """``ablation_blocks`` as Markdown."""
    return markdown(ablation_blocks(rows, config, seeds, timing))
