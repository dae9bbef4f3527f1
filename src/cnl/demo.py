"""``cnl demo``: the main job on the embedded default, or on real photos.

Generates the synthetic benchmark (``cnl.data.synth.BENCHMARK``: four classes told apart by
the fine texture the object wears, 96 px), then trains ResNet-18, ResNet-18 + 5NL and
ResNet-18 + 5CNL from scratch, each with two seeds and one recipe, and prints the
comparison with its paired tests. ``--dataset NAME`` runs the same comparison on a small
balanced subset of a real dataset (``cnl.data.subset``), fetched first with ``cnl data get``
where it can be.

The synthetic demo is sized to finish within about 6 minutes on 2 CPU cores: the ResNets
are a quarter as wide as torchvision's (16 channels in the first stage) and train two at a
time, one thread each, which leaves time for 20 epochs of 640 images. A fifth of the
training images is held out, and each run's test top-1 is read at the epoch of its best
validation top-1: nothing is chosen by looking at the test images.
The paper's recipe (448 px, ImageNet weights, SGD, 110 epochs) is for GPUs and pretrained
backbones; from scratch on a CPU, AdamW learns in the few hundred steps there is time
for, and a cosine schedule brings the rate to 0 so that the last epochs settle.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from cnl.analysis.ablation import format_ablation, run_ablation
from cnl.analysis.report import build_report
from cnl.data.synth import BENCHMARK, generate
from cnl.engine.config import TrainConfig, make_config
from cnl.engine.runfolder import RunFolder
from cnl.errors import InvalidValue
from cnl.models.names import NO_WEIGHTS

MODELS = ["resnet18", "resnet18_nl5", "resnet18_cnl5"]
SEEDS = [0, 1]
RECIPE = {
    "dataset": "cub",
    "width": 16,
    "img_size": BENCHMARK.image_size,
    "epochs": 20,
    "warmup_epochs": 1,
    "global_batch_size": 32,
    "optimizer": "adamw",
    "lr": 0.003,
    "schedule": "cosine",
    "lr_steps": [],
    "weight_decay": 0.05,
    "crop_scale": [0.6, 1.0],
    "val_split": 0.2,
    "workers": 0,
    "device": "cpu",
    "deterministic": True,
}
# Two runs side by side, one thread each: at this size a second thread barely shortens an
# epoch, a second run doubles the work done (cnl.engine.parallel). One thread a run also
# makes the table the same on machines that differ only in their number of cores.
JOBS = 2
QUICK = {"img_size": 32, "epochs": 1, "warmup_epochs": 0, "global_batch_size": 8}
FLAT = 2.0  # points: test top-1 of the last two epochs no further apart than this
SYNTHETIC_LIMITS = (
    "Why this task, its control (classes told by the coarse shape) and what else was tried: docs/synthetic.md; "
    "the same comparison on real photos: cnl demo --dataset flowers102."
)
QUICK_DATA = dataclasses.replace(BENCHMARK, train_per_class=4, test_per_class=2, image_size=48)
# Real photos from scratch: ResNet-18 at torchvision's width, 128 px, SGD stepped down
# twice (README gives the time an epoch took on a 2-core CPU).
PHOTO_RECIPE = {
    "dataset": "folder",
    "width": None,
    "img_size": 128,
    "epochs": 12,
    "warmup_epochs": 0,
    "global_batch_size": 32,
    "optimizer": "sgd",
    "lr": 0.1,
    "schedule": "step",
    "lr_steps": [8, 11],
    "weight_decay": 1e-4,
    "crop_scale": [0.35, 1.0],
    "workers": 0,
    "device": "auto",
    "deterministic": True,
}
PRETRAINED = {"lr": 0.01, "width": None}  # from ImageNet weights the paper's base rate, at their width
QUICK_PHOTOS = {"width": 16, "img_size": 32, "epochs": 1, "lr_steps": [], "global_batch_size": 4, "device": "cpu"}


@dataclasses.dataclass(frozen=True)
class Photos:
    """The real-photo demo: a dataset (a ``build_dataset`` name) in ``data_root``, or, where
    that is None, fetched by ``cnl data get`` into ``root`` (from ``mirror`` when given); the
    starting weights; and the subset's classes and images a class."""

    dataset: str
    data_root: str | None = None
    root: str = "data"
    mirror: str | None = None
    weights: str = NO_WEIGHTS
    classes: int = 12
    train_per_class: int = 60
    test_per_class: int = 20

    def __post_init__(self) -> None:
        wanted = {"--classes": (self.classes, 2), "--train-per-class": (self.train_per_class, 1)}
        wanted["--test-per-class"] = (self.test_per_class, 1)
        for flag, (value, least) in wanted.items():
            if value < least:
                raise InvalidValue(f"{flag} must be at least {least}, got {value}")


def run_demo(output: str | Path = "runs/demo", quick: bool = False, photos: Photos | None = None) -> str:
    """Run the demo into ``output`` (the quick run into ``output/quick``: an ablation keeps
    its runs, so the two must not share a folder; real photos into ``output/DATASET``);
    returns the Markdown table it also writes."""
    output = Path(output) / "quick" if quick else Path(output)
    started = time.perf_counter()
    if photos is None:
        config = synthetic_config(output, quick)
    else:
        output = output / photos.dataset
        config = photo_config(photos, output, quick)
    jobs, threads = (1, None) if photos else (JOBS, 1)
    rows = run_ablation(config, MODELS, output / "ablation", SEEDS, jobs, threads)
    table = format_ablation(rows, config, SEEDS, timing=False)  # the same on every run on one machine
    speed = ", ".join(f"{row['model']} {row['train_images_per_s']:.1f}" for row in rows)
    report = build_report([output / "ablation"], output / "report")
    minutes = (time.perf_counter() - started) / 60
    where = "" if photos else f"{SYNTHETIC_LIMITS}\n"
    return (
        f"{table}\n\n{convergence(output / 'ablation', rows)}\n{where}"
        f"Training images/s on this machine: {speed}.\n"
        f"Machine: {machine(config, threads, jobs)}; it prints the same table on every run, "
        "another processor may not (README).\n"
        f"Demo finished in {minutes:.1f} min; results in {output}/ablation, report in {report}."
    )


def machine(config: TrainConfig, threads: int | None = None, jobs: int = 1) -> str:
    """The device the demo trained on, with what makes a CPU's sums its own (``threads`` a
    run, ``jobs`` runs at a time)."""
    import torch

    from cnl.engine.provenance import cpu_kernels

    on_gpu = config.device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        return torch.cuda.get_device_name()
    return cpu_kernels(threads) + (f" a run, {jobs} runs at a time" if jobs > 1 else "")


def synthetic_config(output: Path, quick: bool) -> TrainConfig:
    """The synthetic benchmark written into ``output/data`` (once), and the demo's recipe on it."""
    data = output / "data"
    if not (data / "synth.json").exists():
        generate(data, QUICK_DATA if quick else BENCHMARK)
    return make_config(RECIPE, QUICK if quick else {}, {"data_root": str(data), "output": str(output)})


def photo_config(photos: Photos, output: Path, quick: bool) -> TrainConfig:
    """The dataset found or fetched, its subset written into ``output/data`` (once), and the photo recipe."""
    from cnl.data.subset import SubsetSpec, write_subset

    root = photos.data_root or fetched_folder(photos)
    spec = SubsetSpec(photos.dataset, str(root), photos.classes, photos.train_per_class, photos.test_per_class)
    if quick:
        spec = dataclasses.replace(spec, classes=min(3, photos.classes), train=2, test=1)
    data = write_subset(spec, output / "data")
    pretrained = PRETRAINED if photos.weights != NO_WEIGHTS else {}
    layers = (PHOTO_RECIPE, QUICK_PHOTOS if quick else {}, pretrained)
    return make_config(*layers, {"data_root": str(data), "output": str(output), "weights": photos.weights})


def fetched_folder(photos: Photos) -> Path:
    """The folder ``cnl data get`` fetches ``photos.dataset`` into (nothing downloaded twice)."""
    from cnl.data.catalog import CATALOG
    from cnl.data.download import get_dataset

    downloadable = [name for name, record in CATALOG.items() if record.downloadable]
    if photos.dataset not in downloadable:
        known = photos.dataset in CATALOG and CATALOG[photos.dataset].fetchable
        how = f"cnl data get {photos.dataset} says where to get it; " if known else ""
        raise InvalidValue(
            f"cnl data get cannot fetch {photos.dataset!r} (it fetches {', '.join(downloadable)}): {how}"
            "give the dataset's folder with --data-root DIR"
        )
    return get_dataset(photos.dataset, photos.root, photos.mirror, progress=sys.stderr.isatty()).folder


def last_epochs_change(run: Path) -> float | None:
    """How far test top-1 moved between the last two epochs of a run (points); None after one epoch."""
    top1 = [record.top1 for record in RunFolder(run).read_metrics()]
    return abs(top1[-1] - top1[-2]) if len(top1) > 1 else None


def convergence(ablation: Path, rows: list[dict]) -> str:
    """One sentence: did every run's test top-1 flatten (the largest last-epoch change)?"""
    moved = {run: last_epochs_change(ablation / run) for row in rows for run in row["runs"]}
    changes = {run: change for run, change in moved.items() if change is not None}
    if not changes:
        return "One epoch per run: nothing to say of convergence."
    worst = max(changes, key=changes.__getitem__)
    state = "flattened" if round(changes[worst], 2) <= FLAT else "still moving"  # as printed: 2.00 is 2
    return (
        f"Test top-1 over the last two epochs moved by at most {changes[worst]:.2f} points "
        f"({worst}): {state} (the demo asks for at most {FLAT:g})."
    )
