"""``cnl demo``: the main job on the embedded default.

Generates the synthetic benchmark, then trains ResNet-18, ResNet-18 + 5NL and ResNet-18
+ 5CNL from scratch with one recipe and seed, and prints the comparison. Sized to finish
within 10 minutes on 2 CPU cores. The paper's recipe (448 px, ImageNet weights, SGD,
110 epochs) is for GPUs and pretrained backbones; from scratch on a CPU, AdamW learns in
the few hundred steps there is time for, so the demo keeps only the recipe's shape
(warmup, then step decay).
"""

from __future__ import annotations

import time
from pathlib import Path

from cnl.analysis.ablation import format_ablation, run_ablation
from cnl.analysis.report import build_report
from cnl.data.synth import SynthConfig, generate
from cnl.engine.config import make_config

MODELS = ["resnet18", "resnet18_nl5", "resnet18_cnl5"]
SEEDS = [0]  # one seed fits the 10 minutes; cnl ablate --seeds gives intervals
RECIPE = {
    "dataset": "cub",
    "img_size": 64,
    "epochs": 12,
    "warmup_epochs": 1,
    "global_batch_size": 32,
    "optimizer": "adamw",
    "lr": 0.003,
    "lr_steps": [8, 11],
    "weight_decay": 0.05,
    "crop_scale": [0.6, 1.0],
    "workers": 0,
    "device": "cpu",
    "deterministic": True,
}
QUICK = {"img_size": 32, "epochs": 1, "global_batch_size": 8, "lr_steps": [1]}
QUICK_DATA = SynthConfig(classes=4, train_per_class=4, test_per_class=2, image_size=48)


def run_demo(output: str | Path = "runs/demo", quick: bool = False) -> str:
    """Run the demo into ``output``; returns the Markdown table it also writes."""
    output = Path(output)
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
        f"{table}\n\nTraining images/s on this machine: {speed}.\n"
        f"Demo finished in {minutes:.1f} min; results in {output}/ablation, report in {report}."
    )
