"""``cnl bench``: train-step time, inference throughput and peak memory, as ratios within one run.

A model is named as in ``create_model``, optionally with the attention path and
``+compile``: ``resnet50_cnl5:paper:bmm`` runs the paper's order with ``bmm`` + softmax
(the authors' arithmetic), ``resnet50_cnl5`` our default (``auto`` order, fused kernels),
``resnet50_cnl5+compile`` the default under ``torch.compile``, so that one run can time a
model with and without compiling it.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from cnl.engine.builders import freeze_backbone, frozen_modules
from cnl.engine.distributed import pick_device
from cnl.engine.loop import AMP_DTYPES, train_mode
from cnl.errors import InvalidValue
from cnl.models import create_model
from cnl.models.backbones import SOURCES
from cnl.nn import CrossLayerNonLocal, NonLocal2d, configure_attention
from cnl.tables import Table

KERNELS = {"sdpa": True, "bmm": False, "auto": None}
# The kernels that never store the attention map; the math kernel, which does, is left out.
FUSED_KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
COMPILED = "+compile"
FROZEN = "+frozen"  # --freeze backbone: only the NL/CNL modules and the head train
# What scaled_dot_product_attention raises when no allowed kernel takes the inputs.
REFUSALS = ("No available kernel", "No viable backend")


@dataclass
class BenchResult:
    """One model's timings and memory, with ratios to the first model of the run."""

    model: str
    train_step_s: float
    inference_images_per_s: float
    peak_memory_mb: float
    first_steps_s: tuple[float, float] = (0.0, 0.0)  # the first train and inference steps: compile, lazy set-up
    train_ratio: float = 1.0
    inference_ratio: float = 1.0
    memory_ratio: float = 1.0


class BenchSpec(NamedTuple):
    name: str
    order: str
    use_sdpa: bool | None
    compiled: bool
    frozen: bool = False


def parse_spec(spec: str) -> BenchSpec:
    """``"name[:order[:kernel]][+frozen][+compile]"``; order and kernel default to ``auto``.
    A name may carry its source (``timm:convnext_tiny_cnl5:paper``)."""
    compiled = spec.endswith(COMPILED)
    spec = spec.removesuffix(COMPILED)
    frozen = spec.endswith(FROZEN)
    parts = spec.removesuffix(FROZEN).split(":")
    source = parts.pop(0) + ":" if parts[0] in SOURCES and len(parts) > 1 else ""
    name, *rest = parts
    name = source + name
    order = rest[0] if rest else "auto"
    kernel = rest[1] if len(rest) > 1 else "auto"
    if kernel not in KERNELS:
        raise InvalidValue(f"unknown attention kernel {kernel!r} in {spec!r}; valid kernels: {', '.join(KERNELS)}")
    return BenchSpec(name, order, KERNELS[kernel], compiled, frozen)


def build(
    spec: BenchSpec, num_classes: int, device: torch.device, channels_last: bool, width: int | None = None
) -> nn.Module:
    model = create_model(spec.name, num_classes=num_classes, **({} if width is None else {"width": width}))
    if spec.frozen:
        freeze_backbone(model)
    model = configure_attention(model, spec.order, spec.use_sdpa).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], device: torch.device) -> float:
    synchronise(device)
    start = time.perf_counter()
    step()
    synchronise(device)
    return time.perf_counter() - start


def interleaved_medians(
    steps: list[Callable[[], None]], repeats: int, device: torch.device, warm_up: bool = True
) -> list[float]:
    """Median seconds of each step, timed in rounds (one of each per round) after a warm-up
    (``warm_up=False``: the steps have run already), so that drifts of the machine fall on
    every model alike."""
    if warm_up:
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for k, step in enumerate(steps):
            times[k].append(timed(step, device))
    return [statistics.median(t) for t in times]


def median_time(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    return interleaved_medians([step], repeats, device)[0]


def allocated_mb(device: torch.device) -> float:
    """Bytes the CUDA allocator holds for tensors now; 0 elsewhere."""
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def peak_memory_mb(model: nn.Module, step: Callable[[], None], device: torch.device, held_before: float = 0.0) -> float:
    """Peak MB of the tensors of one train step: the model's parameters, gradients,
    optimizer state, inputs, activations and temporaries.

    CUDA: the allocator's peak during the step less ``held_before``, what was allocated
    before this model was built (the models built before it), so that each model's figure
    is its own. CPU: torch's MemTracker, which follows the model's and optimizer's tensors
    and every tensor made during the step (the inputs, made before, are not counted).
    """
    if device.type == "cuda":
        synchronise(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronise(device)
        return torch.cuda.max_memory_allocated(device) / 2**20 - held_before
    from torch.distributed._tools.mem_tracker import MemTracker

    if not all(p.requires_grad for p in model.parameters()):
        step()  # MemTracker hooks every parameter's gradient, which a frozen one has not
        return math.nan
    optimizer = getattr(step, "optimizer", None)
    tracker = MemTracker()
    tracker.track_external(model, *([optimizer] if optimizer is not None else []))
    with tracker:
        step()
    return tracker.get_tracker_snapshot("peak")[device]["Total"] / 2**20


def make_shared_workspaces(device: torch.device) -> None:
    """cuBLAS keeps a workspace per stream from its first call on; made here, before the
    first model, it is held before every model alike instead of counted in the first's peak."""
    if device.type != "cuda":
        return
    weight = torch.ones(8, 8, device=device, requires_grad=True)
    for dtype in (torch.float32, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            nn.functional.linear(torch.ones(8, 8, device=device), weight, torch.ones(8, device=device)).sum().backward()
    synchronise(device)


MEMORY_METHODS = {
    "cuda": "CUDA allocator peak of a train step less what the models built before it hold",
    "cpu": "MemTracker peak of a train step (nan with a frozen backbone, which MemTracker cannot follow)",
}


def _setup(
    spec: str,
    img_size: int = 448,
    batch_size: int = 2,
    device: str = "auto",
    amp: str = "none",
    channels_last: bool = False,
    compile: bool = False,
    num_classes: int = 200,
    width: int | None = None,
) -> tuple[nn.Module, Callable[[], None], Callable[[], None]]:
    """The model (a ResNet ``width`` channels wide in its first stage, if given) and its train
    and inference steps on random data."""
    target = pick_device(device)
    torch.manual_seed(0)
    parsed = parse_spec(spec)
    model = build(parsed, num_classes, target, channels_last, width)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(batch_size, 3, img_size, img_size, device=target).to(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch_size,), device=target)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    frozen = frozen_modules(model) if parsed.frozen else []
    runner = torch.compile(model) if compile or parsed.compiled else model
    dtype = AMP_DTYPES.get(amp, torch.bfloat16)

    def train_step() -> None:
        train_mode(model, frozen)  # as the trainer runs it
        with torch.autocast(target.type, dtype=dtype, enabled=amp != "none"):
            loss = nn.functional.cross_entropy(runner(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_step.optimizer = optimizer  # type: ignore[attr-defined]

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        with torch.autocast(target.type, dtype=dtype, enabled=amp != "none"):
            runner(images)

    return model, train_step, infer


def bench_models(specs: list[str], repeats: int = 3, **settings) -> list[BenchResult]:
    """Median train-step time, inference images/s and peak train-step memory of each model,
    and each one's ratio to the first.

    Each model's first train and inference steps are timed (they compile under
    ``+compile``) and its memory is taken in the next train step, as it is built, before the
    next model exists; the medians are then taken in interleaved rounds, those steps having
    been the warm-up."""
    target = pick_device(settings.get("device", "auto"))
    make_shared_workspaces(target)
    setups, memories, first_steps = [], [], []
    for spec in specs:
        held_before = allocated_mb(target)
        model, train, infer = _setup(spec, **settings)
        first_steps.append((timed(train, target), timed(infer, target)))
        memories.append(peak_memory_mb(model, train, target, held_before))
        setups.append((train, infer))
    step_times = interleaved_medians([train for train, _ in setups], repeats, target, warm_up=False)
    infer_times = interleaved_medians([infer for _, infer in setups], repeats, target, warm_up=False)
    batch = settings.get("batch_size", 2)
    results = [
        BenchResult(s, t, batch / i, m, f)
        for s, t, i, m, f in zip(specs, step_times, infer_times, memories, first_steps)
    ]
    first = results[0]
    for r in results:
        r.train_ratio = r.train_step_s / first.train_step_s
        r.inference_ratio = r.inference_images_per_s / first.inference_images_per_s
        r.memory_ratio = r.peak_memory_mb / first.peak_memory_mb
    return results


def format_results(results: list[BenchResult], settings: dict) -> str:
    header = ["model", "train step (s)", "vs first", "inference img/s", "vs first", "peak memory (MB)", "vs first"]
    table = Table.of(
        [*header, "first train + inference step (s)"],
        [
            [r.model, f"{r.train_step_s:.3f}", f"{r.train_ratio:.2f}x", f"{r.inference_images_per_s:.2f}",
             f"{r.inference_ratio:.2f}x", f"{r.peak_memory_mb:.0f}", f"{r.memory_ratio:.2f}x",
             f"{r.first_steps_s[0]:.2f} + {r.first_steps_s[1]:.2f}"]
            for r in results
        ],
    )  # fmt: skip
    lines = [table.markdown()]
    described = ", ".join(f"{k}={v}" for k, v in settings.items())
    memory = MEMORY_METHODS["cuda" if pick_device(settings.get("device", "auto")).type == "cuda" else "cpu"]
    lines += [
        "",
        f"Median of {settings.get('repeats', 3)} interleaved rounds after one warm-up; memory: {memory}; "
        f"{described}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads.",
    ]
    return "\n".join(lines)


# --- the attention module alone on the paper's shapes ------------------------------------


def paper_shapes(img_size: int) -> dict[str, Any]:
    """ResNet-50's CNL and one NL block of res3 at ``img_size``: (query, responses) shapes."""
    s = img_size // 32
    return {
        "query": (2048, s, s),
        "responses": [(512, 4 * s, 4 * s)] * 2 + [(1024, 2 * s, 2 * s)] * 3,
        "nl": (512, 4 * s, 4 * s),
    }


def bench_module(img_size: int = 448, batch_size: int = 2, device: str = "auto", repeats: int = 3) -> list[dict]:
    """Forward + backward time of every attention path, CNL (ResNet-50's) and one res3 NL block."""
    target = pick_device(device)
    shapes = paper_shapes(img_size)
    torch.manual_seed(0)
    query = torch.randn(batch_size, *shapes["query"], device=target, requires_grad=True)
    responses = [torch.randn(batch_size, *r, device=target, requires_grad=True) for r in shapes["responses"]]
    nl_input = torch.randn(batch_size, *shapes["nl"], device=target, requires_grad=True)
    cnl = CrossLayerNonLocal(2048, [r[0] for r in shapes["responses"]]).to(target)
    nl = NonLocal2d(shapes["nl"][0]).to(target)
    rows = []
    for order in ("paper", "reassociated"):
        for kernel, use_sdpa in (("sdpa", True), ("bmm", False)):
            for name, module, run in (
                ("CNL (res3+res4 -> res5)", cnl, lambda: cnl(query, responses)),
                ("NL (one res3 block)", nl, lambda: nl(nl_input)),
            ):
                configure_attention(module, order, use_sdpa)
                step = lambda run=run: run().sum().backward()  # noqa: E731
                ran = kernel_that_runs(step) if use_sdpa else "bmm + softmax"
                seconds = median_time(step, repeats, target)  # type: ignore[arg-type]
                row = {"module": name, "order": order, "kernel": kernel, "ran": ran}
                rows.append({**row, "forward_backward_s": seconds})
    return rows


def kernel_that_runs(step: Callable[[], None]) -> str:
    """Which kernel ``scaled_dot_product_attention`` takes in ``step``: ``flash`` or
    ``efficient`` (fused, the map never stored), else ``math``, the fallback PyTorch takes
    silently when the fused kernels refuse the inputs (their layout, dtype or sizes)."""
    for name, backend in FUSED_KERNELS.items():
        try:
            with warnings.catch_warnings(), sdpa_kernel([backend]):
                warnings.simplefilter("ignore")  # each refusal warns why; the answer is the name
                step()
            return name
        except RuntimeError as error:
            if not any(refusal in str(error) for refusal in REFUSALS):
                raise
    return "math"


def format_module_rows(rows: list[dict]) -> str:
    header = ["module", "order", "kernel", "ran", "forward + backward (ms)"]
    cells = [[r["module"], r["order"], r["kernel"], r["ran"], f"{1000 * r['forward_backward_s']:.1f}"] for r in rows]
    return Table.of(header, cells).markdown()


# --- the input pipeline -----------------------------------------------------------------


def write_sample_jpegs(folder, count: int = 48, size: tuple[int, int] = (500, 375), seed: int = 0) -> list:
    """CUB-like JPEGs: 500x375, textured, quality 90."""
    import numpy as np
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        noise = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        image = Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.DETAIL)
        path = folder / f"{k:03d}.jpg"
        image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def bench_input(img_size: int = 448, count: int = 48, repeats: int = 3) -> list[dict]:
    """Decode + the training transform, images/s in one process, for each decoder."""
    import tempfile
    from pathlib import Path

    from cnl.data.images import DECODERS
    from cnl.data.transforms import train_transform

    transform = train_transform(img_size)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        paths = write_sample_jpegs(Path(folder), count)
        for name, decode in DECODERS.items():

            def run(decode: Callable = decode) -> None:
                for path in paths:
                    transform(decode(path))

            seconds = median_time(run, repeats, torch.device("cpu"))
            rows.append({"decoder": name, "images_per_s": count / seconds})
    return rows


def format_input_rows(rows: list[dict]) -> str:
    header = ["decoder", "decode + augment (img/s, one process)"]
    return Table.of(header, [[r["decoder"], f"{r['images_per_s']:.1f}"] for r in rows]).markdown()


def bench_predict(
    model_name: str = "resnet18_cnl5",
    img_size: int = 64,
    batch_size: int = 32,
    workers: int = 2,
    count: int = 960,
    device: str = "auto",
    width: int = 64,
) -> list[dict]:
    """Images/s of ``cnl predict``'s pipeline (decode in ``workers`` processes, ``batch_size``
    images per forward) against one image at a time (batch 1, no workers), on the same
    500x375 JPEGs and model (a ResNet of ``width`` channels in its first stage)."""
    import tempfile

    from cnl.engine.prediction import predict_with

    target = pick_device(device)
    model = create_model(model_name, num_classes=200, width=width).to(target).eval()
    classes = [f"class {k}" for k in range(200)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        paths = write_sample_jpegs(Path(folder), count=count)
        for name, batch, processes in (("one at a time", 1, 0), (f"batch {batch_size}", batch_size, workers)):
            list(predict_with(model, classes, img_size, paths[:batch], 5, batch, processes))  # warm-up
            start = time.perf_counter()
            results = list(predict_with(model, classes, img_size, paths, 5, batch, processes))
            elapsed = time.perf_counter() - start
            assert len(results) == count and all("predictions" in r for r in results)
            rows.append({"mode": name, "workers": processes, "images_per_s": count / elapsed})
    for row in rows:
        row["vs_first"] = row["images_per_s"] / rows[0]["images_per_s"]
    return rows


def format_predict_rows(rows: list[dict], model_name: str, img_size: int, width: int = 64) -> str:
    header = ["predict", "workers", "images/s", "vs one at a time"]
    cells = [[r["mode"], r["workers"], f"{r['images_per_s']:.1f}", f"{r['vs_first']:.2f}x"] for r in rows]
    lines = [Table.of(header, cells).markdown()]
    lines += [
        "",
        f"{model_name} (width {width}) at {img_size}x{img_size}, 500x375 JPEGs decoded and resized "
        "as cnl predict does.",
    ]
    return "\n".join(lines)
