"""Table 2 as an experiment: the same recipe for each model, over one or more seeds.

With several seeds each model gets mean and standard deviation over seeds, and every model
after the first its paired difference to the first (same seed, same data order and crops)
with a 95 % Student-t confidence interval over seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

from cnl.analysis.profile import profile_model
from cnl.engine.checkpoint import model_overrides
from cnl.engine.config import TrainConfig
from cnl.engine.trainer import RunInterrupted, fit

PER_SEED = ("top1", "top5", "best_epoch", "final_top1", "train_images_per_s")


def run_folder(model: str, seed: int, seeds: list[int]) -> str:
    """``model`` for a single seed (as before seeds existed), ``model/seed<k>`` for several."""
    return model if len(seeds) == 1 else f"{model}/seed{seed}"


def run_ablation(
    base: TrainConfig, models: list[str], output: str | Path, seeds: list[int] | None = None
) -> list[dict[str, Any]]:
    """Train each of ``models`` once per seed (``base.seed`` when none are given) into
    ``output/<model>[/seed<k>]``; returns the rows (see ``summarise``).

    Writes ``output/ablation.json`` (every per-seed value) and ``output/ablation.md``.
    """
    output = Path(output)
    seeds = seeds or [base.seed]
    results: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        for name in models:
            folder = run_folder(name, seed, seeds)
            try:
                summary = fit(dataclasses.replace(base, model=name, seed=seed, output=str(output / folder)))
            except RunInterrupted:
                write_ablation(summarise(base, results), base, output, seeds)  # what finished is still tabled
                raise
            results.setdefault(name, []).append(
                {
                    "seed": seed,
                    "run": folder,
                    "top1": summary["best_top1"],
                    "top5": summary["best_top5"],
                    "best_epoch": summary["best_epoch"],
                    "final_top1": summary["final_top1"],
                    "train_images_per_s": summary["train_images_per_s"],
                    "params": summary["params"],
                    "classes": summary["classes"],
                }
            )
    rows = summarise(base, results)
    write_ablation(rows, base, output, seeds)
    return rows


def mean_and_interval(values: list[float], confidence: float = 0.95) -> dict[str, float | None]:
    """Mean, sample standard deviation and the Student-t interval of the mean (None for one value)."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "std": None, "low": None, "high": None}
    std = statistics.stdev(values)
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * std / math.sqrt(len(values))
    return {"mean": mean, "std": std, "low": mean - half, "high": mean + half}


def summarise(base: TrainConfig, results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per model: ``top1``/``top5`` (means over seeds), their ``*_std``, the per-seed values,
    size and cost, and for every model after the first ``diff_top1``: the paired difference
    to the first model with its 95 % interval."""
    rows = []
    reference = next(iter(results.values()), [])
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
            paired = [r["top1"] - first["top1"] for r, first in zip(runs, reference)]
            row["diff_top1"] = mean_and_interval(paired)
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
    if diff["low"] is None:
        return f"{diff['mean']:+.2f}"
    return f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]"


def verdict(row: dict[str, Any], first: str) -> str:
    """One sentence: does ``row`` differ from the first model beyond its interval?"""
    diff = row["diff_top1"]
    if diff["low"] is None:
        return f"{row['model']}: {diff['mean']:+.2f} points against {first}; one seed, so no interval can be given."
    interval = f"{diff['mean']:+.2f} points [{diff['low']:+.2f}, {diff['high']:+.2f}]"
    if diff["low"] > 0 or diff["high"] < 0:
        side = "better" if diff["low"] > 0 else "worse"
        return f"{row['model']}: {interval} against {first}: {side}, beyond the 95 % interval."
    return f"{row['model']}: {interval} against {first}: the interval includes 0, no difference shown."


def selection(config: TrainConfig) -> str:
    """Which epoch the accuracies are of, in words."""
    what = "Top-1/top-5 (%) on the test split of"
    if config.val_split is None:
        return f"{what} the best test epoch (optimistic: chosen on the test split, as the paper)"
    return f"{what} the epoch with the best validation top-1 (val split {config.val_split})"


def format_ablation(
    rows: list[dict[str, Any]], config: TrainConfig, seeds: list[int] | None = None, timing: bool = True
) -> str:
    """Markdown: accuracy over seeds, the paired difference to the first model, size, cost,
    speed relative to the first (unless ``timing`` is False: a table that repeats exactly),
    then one verdict per model."""
    seeds = seeds or [config.seed]
    header = "| model | top-1 | top-5 | top-1 vs first [95% CI] | params (M) | GMACs layers | GMACs all |"
    lines = [header + (" train img/s | speed vs first |" if timing else ""), "|---" * (9 if timing else 7) + "|"]
    reference = rows[0]["train_images_per_s"] if rows else None
    for row in rows:
        line = (
            f"| {row['model']} | {_plus_minus(row['top1'], row.get('top1_std'))} | "
            f"{_plus_minus(row['top5'], row.get('top5_std'))} | {_difference(row)} | {row['params'] / 1e6:.2f} | "
            f"{row['macs'] / 1e9:.3f} | {row['macs_all'] / 1e9:.3f} |"
        )
        if timing:
            speed = row["train_images_per_s"]
            line += f" {speed:.1f} | {f'{speed / reference:.2f}x' if reference else '-'} |"
        lines.append(line)
    over = f"mean ± sd over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    lines += [
        "",
        f"{config.dataset} at {config.data_root}, {config.img_size}x{config.img_size}, {config.epochs} epochs, "
        f"{config.batch_description()}, lr {config.lr}; {over}. {selection(config)}; the difference to the "
        "first model is paired by seed, with a Student-t interval. GMACs per image ('layers' leaves out the "
        "attention products, as the paper's table).",
    ]
    if len(rows) > 1:
        lines += [""] + [verdict(row, rows[0]["model"]) for row in rows[1:]]
    return "\n".join(lines)
