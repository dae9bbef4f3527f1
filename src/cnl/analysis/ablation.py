"""Table 2 as an experiment: the same recipe and seed for each model, one comparison table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cnl.analysis.profile import profile_model
from cnl.engine.config import TrainConfig
from cnl.engine.trainer import RunInterrupted, fit


def run_ablation(base: TrainConfig, models: list[str], output: str | Path) -> list[dict[str, Any]]:
    """Train each of ``models`` with ``base``'s settings into ``output/<model>``; returns the rows.

    Writes ``output/ablation.json`` and ``output/ablation.md``.
    """
    output = Path(output)
    rows: list[dict[str, Any]] = []
    for name in models:
        try:
            summary = fit(dataclasses.replace(base, model=name, output=str(output / name)))
        except RunInterrupted:
            write_ablation(rows, base, output)  # what finished is still tabled
            raise
        profile = profile_model(name, base.img_size, summary["classes"])
        rows.append(
            {
                "model": name,
                "top1": summary["best_top1"],
                "top5": summary["best_top5"],
                "best_epoch": summary["best_epoch"],
                "final_top1": summary["final_top1"],
                "params": summary["params"],
                "macs": profile.macs,
                "macs_all": profile.macs_all,
                "train_images_per_s": summary["train_images_per_s"],
            }
        )
    write_ablation(rows, base, output)
    return rows


def write_ablation(rows: list[dict[str, Any]], base: TrainConfig, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "ablation.json").write_text(json.dumps({"config": base.to_dict(), "rows": rows}, indent=2) + "\n")
    (output / "ablation.md").write_text(format_ablation(rows, base) + "\n")


def format_ablation(rows: list[dict[str, Any]], config: TrainConfig) -> str:
    """Markdown: accuracy, size, cost and speed of each model, speed relative to the first."""
    lines = [
        "| model | top-1 | top-5 | params (M) | GMACs layers | GMACs all | train img/s | speed vs first |",
        "|---|---|---|---|---|---|---|---|",
    ]
    reference = rows[0]["train_images_per_s"] if rows else None
    for row in rows:
        speed = row["train_images_per_s"]
        relative = f"{speed / reference:.2f}x" if reference else "-"
        lines.append(
            f"| {row['model']} | {row['top1']:.2f} | {row['top5']:.2f} | {row['params'] / 1e6:.2f} | "
            f"{row['macs'] / 1e9:.3f} | {row['macs_all'] / 1e9:.3f} | {speed:.1f} | {relative} |"
        )
    lines += [
        "",
        f"{config.dataset} at {config.data_root}, {config.img_size}x{config.img_size}, {config.epochs} epochs, "
        f"{config.batch_description()}, lr {config.lr}, seed {config.seed}. Top-1/top-5 (%) of the best epoch on the "
        "test split; GMACs per image ('layers' leaves out the attention products, as the paper's table).",
    ]
    return "\n".join(lines)
