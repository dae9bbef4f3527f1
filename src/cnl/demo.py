"""``cnl demo``: the main job on the embedded default.

Generates the synthetic benchmark, then trains ResNet-18, ResNet-18 + 5NL and ResNet-18
+ 5CNL from scratch, each with two seeds and one recipe, and prints the comparison with
its intervals. Sized to finish within 10 minutes on 2 CPU cores: the ResNets are a
quarter as wide as torchvision's (16 channels in the first stage), which leaves time for
20 epochs, enough for test top-1 to flatten (docs/training.md gives the speeds measured).
The paper's recipe (448 px, ImageNet weights, SGD, 110 epochs) is for GPUs and pretrained
backbones; from scratch on a CPU, AdamW learns in the few hundred steps there is time
for, and a cosine schedule brings the rate to 0 so that the last epochs settle.
"""

from __future__ import annotations

import time
from pathlib import Path

from cnl.analysis.ablation import format_ablation, run_ablation
from cnl.analysis.report import build_report
from cnl.data.synth import SynthConfig, generate
from cnl.engine.config import make_config
from cnl.engine.runfolder import RunFolder

MODELS = ["resnet18", "resnet18_nl5", "resnet18_cnl5"]
SEEDS = [0, 1]
RECIPE = {
    "dataset": "cub",
    "width": 16,
    "img_size": 64,
    "epochs": 20,
    "warmup_epochs": 1,
    "global_batch_size": 32,
    "optimizer": "adamw",
    "lr": 0.003,
    "schedule": "cosine",
    "lr_steps": [],
    "weight_decay": 0.05,
    "crop_scale": [0.6, 1.0],
    "workers": 0,
    "device": "cpu",
    "deterministic": True,
}
QUICK = {"img_size": 32, "epochs": 1, "warmup_epochs": 0, "global_batch_size": 8}
FLAT = 2.0  # points: test top-1 of the last two epochs no further apart than this
QUICK_DATA = SynthConfig(classes=4, train_per_class=4, test_per_class=2, image_size=48)


def run_demo(output: str | Path = "runs/demo", quick: bool = False) -> str:
    """Run the demo into ``output`` (the quick run into ``output/quick``: an ablation keeps
    its runs, so the two must not share a folder); returns the Markdown table it also writes."""
    output = Path(output) / "quick" if quick else Path(output)
    started = time.perf_counter()
    synth = SynthConfig() if not quick else QUICK_DATA
    data = output / "data"
    if not (data / "synth.json").exists():
        generate(data, synth)
    config = make_config(RECIPE, QUICK if quick else {}, {"data_root": str(data), "output": str(output)})
    rows = run_ablation(config, MODELS, output / "ablation", SEEDS)
    table = format_ablation(rows, config, SEEDS, timing=False)  # the same on every run of the demo
    speed = ", ".join(f"{row['model']} {row['train_images_per_s']:.1f}" for row in rows)
    report = build_report([output / "ablation"], output / "report")
    minutes = (time.perf_counter() - started) / 60
    return (
        f"{table}\n\n{convergence(output / 'ablation', rows)}\n"
        f"Training images/s on this machine: {speed}.\n"
        f"Demo finished in {minutes:.1f} min; results in {output}/ablation, report in {report}."
    )


def last_epochs_change(run: Path) -> float | None:
    """How far test top-1 moved between the last two epochs of a run (points); None after one epoch."""
    top1 = [record["top1"] for record in RunFolder(run).read_metrics()]
    return abs(top1[-1] - top1[-2]) if len(top1) > 1 else None


def convergence(ablation: Path, rows: list[dict]) -> str:
    """One sentence: did every run's test top-1 flatten (the largest last-epoch change)?"""
    moved = {run: last_epochs_change(ablation / run) for row in rows for run in row["runs"]}
    changes = {run: change for run, change in moved.items() if change is not None}
    if not changes:
        return "One epoch per run: nothing to say of convergence."
    worst = max(changes, key=changes.__getitem__)
    state = "flattened" if changes[worst] <= FLAT else "still moving"
    return (
        f"Test top-1 over the last two epochs moved by at most {changes[worst]:.2f} points "
        f"({worst}): {state} (the demo asks for at most {FLAT:g})."
    )
