"""The ``cnl`` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from cnl.errors import InvalidValue, TrainingDiverged, UserError


def split_names(values: Sequence[str]) -> list[str]:
    """``["a,b", "c"] -> ["a", "b", "c"]``: lists may be given with commas or spaces."""
    return [name for value in values for name in value.split(",") if name]


def cmd_profile(args: argparse.Namespace) -> int:
    from cnl.analysis.profile import format_table, profile_model

    if args.placements:
        from cnl.analysis.profile import format_placements

        print("\n\n".join(format_placements(n, args.img_size, args.num_classes) for n in split_names(args.models)))
        return 0
    if args.receptive_fields:
        from cnl.analysis.receptive_field import format_fields
        from cnl.models import create_model

        print(
            "\n\n".join(
                format_fields(n, create_model(n, num_classes=args.num_classes)) for n in split_names(args.models)
            )
        )
        return 0
    profiles = [profile_model(name, args.img_size, args.num_classes) for name in split_names(args.models)]
    if args.json:
        print(json.dumps([p.to_json() for p in profiles], indent=2))
    else:
        print(format_table(profiles))
    return 0


def add_profile(subparsers: argparse._SubParsersAction) -> None:
    from cnl.analysis.table2 import TABLE2

    parser = subparsers.add_parser(
        "profile",
        help="parameters, MACs and attention memory beside the paper's Table 2",
        description="Count parameters, MACs (paper's convention and all), attention-map bytes per image.",
    )
    parser.add_argument("--models", nargs="+", default=list(TABLE2), help="model names (commas or spaces)")
    parser.add_argument("--img-size", type=int, default=448, help="square input size (default 448)")
    parser.add_argument("--num-classes", type=int, default=200, help="classes of the head (default 200, CUB)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument(
        "--receptive-fields", action="store_true", help="theoretical receptive field and stride of query and responses"
    )
    parser.add_argument(
        "--placements", action="store_true", help="the modules NL/CNL sit at, with their output shapes (any backbone)"
    )
    parser.set_defaults(func=cmd_profile)


def cmd_list_models(args: argparse.Namespace) -> int:
    from cnl.models import list_models

    print("\n".join(list_models(args.pattern)))
    print(
        "\nAny torchvision or timm classifier works too: tv:NAME or timm:NAME, plain or with _nl5 "
        "(five NL blocks) or _cnl5 (one CNL module), placed by the paper's rule on its stages, e.g. "
        "timm:convnext_tiny_cnl5, tv:efficientnet_b0_nl5; see cnl profile --placements MODEL."
    )
    return 0


def add_list_models(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list-models", help="our model names, and how to name any other")
    parser.add_argument("pattern", nargs="?", default="*", help="a shell-style pattern (default *)")
    parser.set_defaults(func=cmd_list_models)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from cnl.data.synth import SynthConfig, contact_sheet, generate

    config = SynthConfig(args.classes, args.train_per_class, args.test_per_class, args.image_size, args.seed)
    out = generate(args.out, config)
    print(
        f"wrote {config.classes * (config.train_per_class + config.test_per_class)} images "
        f"in the CUB-200-2011 layout to {out}"
    )
    if args.contact_sheet:
        print(f"wrote {contact_sheet(out, args.contact_sheet)}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from cnl.data.check import check_dataset, format_reports

    reports = check_dataset(args.dataset, args.root, tuple(split_names(args.splits)))
    print(format_reports(reports))
    return 0 if all(r.ok for r in reports) else 1


def add_data(subparsers: argparse._SubParsersAction) -> None:
    from cnl.data.synth import SynthConfig

    data = subparsers.add_parser("data", help="generate the synthetic benchmark, check a dataset")
    commands = data.add_subparsers(dest="data_command", required=True)
    defaults = SynthConfig()
    synth = commands.add_parser("synth", help="write the synthetic multi-scale fine-grained benchmark (CUB layout)")
    synth.add_argument("--out", required=True, help="folder to write")
    synth.add_argument("--classes", type=int, default=defaults.classes)
    synth.add_argument("--train-per-class", type=int, default=defaults.train_per_class)
    synth.add_argument("--test-per-class", type=int, default=defaults.test_per_class)
    synth.add_argument("--image-size", type=int, default=defaults.image_size, help="pixels per side")
    synth.add_argument("--seed", type=int, default=defaults.seed)
    synth.add_argument("--contact-sheet", help="also write a PNG of samples per class here")
    synth.set_defaults(func=cmd_data_synth)

    check = commands.add_parser("check", help="per-split counts and every missing or unreadable file")
    check.add_argument("--dataset", default="auto", help="cub, dogs, cars, aircraft, folder, list or auto")
    check.add_argument("--root", required=True, help="the dataset's folder")
    check.add_argument("--splits", nargs="+", default=["train", "test"])
    check.set_defaults(func=cmd_data_check)


def fraction_or_official(text: str) -> float | str:
    if text == "official":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.1, or 'official', got {text!r}") from None


TRAIN_FLAGS: list[tuple[str, dict]] = [
    ("--dataset", {"help": "cub, dogs, cars, aircraft, folder, list or auto (default auto)"}),
    ("--data-root", {"help": "the dataset's folder"}),
    ("--model", {"help": "a model name (cnl list-models); default resnet50_cnl5"}),
    ("--weights", {"help": "torchvision weights name (IMAGENET1K_V1) or a local .pth/.safetensors"}),
    ("--query", {"help": "CNL query layer override, e.g. layer4.2"}),
    ("--responses", {"nargs": "+", "help": "CNL response layers override"}),
    ("--nl-layers", {"nargs": "+", "help": "NL block placement override"}),
    ("--inner-channels", {"type": int, "help": "width c of the NL/CNL embeddings"}),
    ("--width", {"type": int, "help": "channels of the first ResNet stage (64; others train from scratch)"}),
    ("--val-split", {"type": fraction_or_official, "help": "FRACTION of each training class, or 'official'"}),
    ("--img-size", {"type": int, "help": "train and test crop (default 448)"}),
    ("--epochs", {"type": int, "help": "default 110"}),
    ("--warmup-epochs", {"type": float, "help": "linear warmup from lr/1000 (default 10)"}),
    ("--global-batch-size", {"type": int, "help": "over all processes and accumulation steps (default 64)"}),
    ("--batch-size", {"type": int, "help": "per process, instead of --global-batch-size"}),
    ("--lr", {"type": float, "help": "base learning rate (default 0.01)"}),
    ("--lr-steps", {"nargs": "+", "help": "epochs at which lr is multiplied by --lr-decay (default 50 70 90)"}),
    ("--lr-decay", {"type": float, "help": "default 0.1"}),
    ("--schedule", {"choices": ["step", "cosine"], "help": "after warmup: step decay (default, the paper) or cosine"}),
    ("--optimizer", {"choices": ["sgd", "adamw"], "help": "default sgd (the paper)"}),
    ("--momentum", {"type": float, "help": "SGD momentum (default 0.9)"}),
    ("--weight-decay", {"type": float, "help": "default 1e-4"}),
    ("--crop-scale", {"nargs": 2, "type": float, "help": "RandomResizedCrop area range (default 0.08 1.25)"}),
    ("--label-smoothing", {"type": float, "help": "cross-entropy label smoothing (default 0, off)"}),
    ("--clip-grad", {"type": float, "help": "clip the norm of all gradients to this (default off)"}),
    (
        "--ema",
        {"type": float, "help": "keep an EMA of the weights with this decay, e.g. 0.9998; it is evaluated and used"},
    ),
    ("--mixup", {"type": float, "help": "MixUp alpha (default 0, off)"}),
    ("--cutmix", {"type": float, "help": "CutMix alpha (default 0, off); with --mixup, one of the two per batch"}),
    ("--no-wd-norm-bias", {"action": "store_true", "default": None, "help": "no weight decay on norms and biases"}),
    ("--head-lr-mult", {"type": float, "help": "lr multiplier of the NL/CNL modules and the head (default 1)"}),
    ("--workers", {"type": int, "help": "data loading processes per training process (default 4)"}),
    ("--amp", {"choices": ["none", "bf16", "fp16"], "help": "mixed precision (default none)"}),
    ("--channels-last", {"action": "store_true", "default": None}),
    ("--compile", {"action": "store_true", "default": None, "help": "torch.compile the model"}),
    ("--accum-steps", {"type": int, "help": "micro-batches per optimizer step (default 1)"}),
    ("--seed", {"type": int}),
    ("--device", {"help": "auto, cpu or cuda"}),
    ("--deterministic", {"action": "store_true", "default": None, "help": "deterministic kernels only"}),
    ("--sync-bn", {"action": "store_true", "default": None, "help": "SyncBatchNorm across processes (CUDA)"}),
    ("--output", {"help": "run folder (default runs/train)"}),
]


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML file of settings; flags override it")
    for flag, options in TRAIN_FLAGS:
        parser.add_argument(flag, **options)


def flag_values(args: argparse.Namespace) -> dict:
    values = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, _ in TRAIN_FLAGS}
    if values["lr_steps"] is not None:
        values["lr_steps"] = [int(v) for v in split_names(values["lr_steps"])]
    for key in ("responses", "nl_layers"):
        if values[key] is not None:
            values[key] = split_names(values[key])
    return values


def resolve_train_config(args: argparse.Namespace):
    """Defaults < the checkpoint's config (when resuming) < --config file < flags."""
    from cnl.engine.checkpoint import read_for_resume
    from cnl.engine.config import TrainConfig, make_config, read_yaml
    from cnl.engine.trainer import resume_checkpoint

    layers = [read_yaml(args.config)] if args.config else []
    layers.append({**flag_values(args), "resume": getattr(args, "resume", None)})

    def latest(key: str, default: Any) -> Any:
        return next((layer[key] for layer in reversed(layers) if layer.get(key) is not None), default)

    previous = resume_checkpoint(latest("output", TrainConfig.output), latest("resume", None))
    if previous is not None:
        layers.insert(0, read_for_resume(previous)[0]["config"])
    return make_config(*layers)


def cmd_train(args: argparse.Namespace) -> int:
    from cnl.engine.trainer import fit

    summary = fit(resolve_train_config(args))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cnl.engine.inference import evaluate_checkpoint

    options = {"data_root": args.data_root, "workers": args.workers, "device": args.device}
    result = evaluate_checkpoint(args.checkpoint, args.batch_size, details=args.report is not None, **options)
    if args.report is not None:
        from cnl.analysis.evidence import write_report

        written = write_report(result, args.report) if result["is_main"] else []
        for detail in ("confusion", "per_image", "images", "classes"):
            result.pop(detail)
        result["report"] = [str(path) for path in written]
    if result.pop("is_main"):
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"{result['checkpoint']}: top1 {result['top1']:.2f}  top5 {result['top5']:.2f}  "
                f"loss {result['loss']:.4f}  ({result['count']} images)"
            )
            for written in result.get("report", []):
                print(f"wrote {written}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cnl.engine.inference import predict_batches, write_predictions

    options = {"batch_size": args.batch_size, "workers": args.workers}
    results = predict_batches(args.checkpoint, args.images, args.topk, args.device, **options)
    if args.out:
        print(f"wrote {write_predictions(results, args.out, args.topk)} rows to {args.out}")
        return 0
    if args.json:
        print(json.dumps(list(results), indent=2))
        return 0
    for result in results:
        if "error" in result:
            print(f"{result['image']}: error: {result['error']}")
            continue
        best = ", ".join(f"{p['class']} {p['probability']:.3f}" for p in result["predictions"])
        print(f"{result['image']}: {best}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from cnl.analysis.ablation import format_ablation, run_ablation

    config = resolve_train_config(args)
    output = args.output or "runs/ablation"
    seeds = [int(seed) for seed in split_names(args.seeds)] if args.seeds else [config.seed]
    rows = run_ablation(config, split_names(args.models), output, seeds)
    print(format_ablation(rows, config, seeds))
    print(f"\nwrote {output}/ablation.json and ablation.md")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cnl.demo import run_demo

    print(run_demo(args.output, quick=args.quick))
    return 0


def add_training(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train and evaluate a model with the paper's recipe")
    add_train_flags(train)
    train.add_argument(
        "--resume", nargs="?", const="yes", choices=["yes", "auto", "no"],
        help="continue from OUTPUT/checkpoints/last.pt; 'auto': when it exists (the default after torchrun restarts)",
    )  # fmt: skip
    train.set_defaults(func=cmd_train)

    evaluate = subparsers.add_parser("eval", help="top-1 and top-5 of a checkpoint on its test split")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--data-root", help="the dataset's folder, if it moved since training")
    evaluate.add_argument("--batch-size", type=int)
    evaluate.add_argument("--workers", type=int)
    evaluate.add_argument("--device", help="auto (default: the run's), cpu or cuda")
    evaluate.add_argument("--json", action="store_true", help="print an object with top1, top5, loss, count")
    evaluate.add_argument(
        "--report", help="a folder for per_class.csv, confusion.png and predictions.csv (cnl report shows RUN/eval)"
    )
    evaluate.set_defaults(func=cmd_eval)

    pred = subparsers.add_parser("predict", help="class names and probabilities for images")
    pred.add_argument("--checkpoint", required=True)
    pred.add_argument("images", nargs="+", help="image files, folders, glob patterns or .txt lists of paths")
    pred.add_argument("--topk", type=int, default=5)
    pred.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    pred.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    pred.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    pred.add_argument("--out", help="write one row per image to a .csv or .jsonl file")
    pred.add_argument("--json", action="store_true")
    pred.set_defaults(func=cmd_predict)

    ablate = subparsers.add_parser("ablate", help="train several models with one recipe and compare them (Table 2)")
    ablate.add_argument("--models", nargs="+", required=True, help="e.g. resnet50,resnet50_nl5,resnet50_cnl5")
    ablate.add_argument(
        "--seeds", nargs="+", help="train every model once per seed (e.g. 0,1,2): mean, sd and paired 95%% intervals"
    )
    add_train_flags(ablate)
    ablate.set_defaults(func=cmd_ablate)

    demo = subparsers.add_parser("demo", help="the synthetic benchmark and a small ablation, on a CPU in minutes")
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny data, 1 epoch)")
    demo.set_defaults(func=cmd_demo)


# Defaults of cnl bench per job: (models, image size, batch size).
BENCH_DEFAULTS = {"models": ("resnet50,resnet50_nl5,resnet50_cnl5", 448, 2), "predict": ("resnet18_cnl5", 64, 32)}
PREDICT_WIDTH = 16  # the demo's ResNets


def cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cnl.analysis import bench

    models, img_size, batch_size = BENCH_DEFAULTS["predict" if args.predict else "models"]
    names = split_names(args.models or [models])
    img_size, batch_size = args.img_size or img_size, args.batch_size or batch_size
    if args.module:
        rows = bench.bench_module(img_size, batch_size, args.device, args.repeats)
        print(json.dumps(rows, indent=2) if args.json else bench.format_module_rows(rows))
        return 0
    if args.predict:
        width = args.width or PREDICT_WIDTH
        rows = bench.bench_predict(names[0], img_size, batch_size, args.workers, device=args.device, width=width)
        print(json.dumps(rows, indent=2) if args.json else bench.format_predict_rows(rows, names[0], img_size, width))
        return 0
    if args.input:
        rows = bench.bench_input(img_size, repeats=args.repeats)
        print(json.dumps(rows, indent=2) if args.json else bench.format_input_rows(rows))
        return 0
    settings = {
        "img_size": img_size, "batch_size": batch_size, "device": args.device, "amp": args.amp,
        "channels_last": args.channels_last, "compile": args.compile, "repeats": args.repeats,
    }  # fmt: skip
    results = bench.bench_models(names, **settings)
    print(json.dumps([asdict(r) for r in results], indent=2) if args.json else bench.format_results(results, settings))
    return 0


def add_bench(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="train-step time, inference speed and peak memory, as ratios")
    parser.add_argument(
        "--models", nargs="+",
        help="names, optionally NAME:ORDER:KERNEL (order paper|reassociated|auto, kernel sdpa|bmm); "
        "default resnet50,resnet50_nl5,resnet50_cnl5 (--predict: resnet18_cnl5)",
    )  # fmt: skip
    parser.add_argument("--img-size", type=int, help="default 448 (--predict: 64)")
    parser.add_argument("--batch-size", type=int, help="default 2 (--predict: 32)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per model (median)")
    parser.add_argument("--module", action="store_true", help="time the attention paths alone on the paper's shapes")
    parser.add_argument("--input", action="store_true", help="decode + augment images/s, PIL against torchvision.io")
    parser.add_argument(
        "--predict", action="store_true", help="cnl predict's batched pipeline against one image at a time"
    )
    parser.add_argument("--workers", type=int, default=2, help="decoding processes for --predict (default 2)")
    parser.add_argument("--width", type=int, help=f"ResNet width for --predict (default {PREDICT_WIDTH}, the demo's)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_bench)


def cmd_attention(args: argparse.Namespace) -> int:
    from cnl.analysis.attention import NothingToShow, attention_rows, parse_queries, render
    from cnl.engine.checkpoint import load_model_with_info

    model, classes, info = load_model_with_info(args.checkpoint)
    img_size = args.img_size or info["img_size"]
    images = [*([args.image] if args.image else []), *args.images]
    if not images:
        raise InvalidValue("no image: give IMAGE... (or --image)")
    try:
        if args.html:
            from cnl.analysis.explorer import write_explorer

            title = f"{info['model']} ({args.checkpoint}): what the modules attend to"
            page = write_explorer(model, classes, images, img_size, args.html, title)
            print(f"wrote {page}: {len(images)} images, {page.stat().st_size / 2**20:.1f} MB")
            return 0
        rows = attention_rows(model, images[0], img_size, parse_queries(args.query), args.count)
    except NothingToShow as reason:
        print(f"nothing to show: {reason}")
        return 1
    print(f"wrote {render(rows, args.out)}: {len(rows.rows)} queries x {len(rows.rows[0])} maps")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cnl.analysis.report import build_report

    print(f"wrote {build_report(args.runs, args.out, args.images)}")
    return 0


def add_figures(subparsers: argparse._SubParsersAction) -> None:
    attention = subparsers.add_parser("attention", help="the paper's Fig. 3: attention maps of query positions")
    attention.add_argument("--checkpoint", required=True)
    attention.add_argument("images", nargs="*", metavar="IMAGE", help="images (the figure takes the first)")
    attention.add_argument("--image", help="an image (as IMAGE)")
    attention.add_argument("--html", help="write an interactive, self-contained explorer page of every IMAGE here")
    attention.add_argument("--query", nargs="+", default=["auto"], help="'auto' or ROW,COLUMN cells of the query grid")
    attention.add_argument("--count", type=int, default=3, help="query cells that 'auto' picks")
    attention.add_argument("--img-size", type=int, help="default: the checkpoint's")
    attention.add_argument("--out", default="attention.png")
    attention.set_defaults(func=cmd_attention)

    report = subparsers.add_parser("report", help="HTML + Markdown: curves, ablation table and chart, attention")
    report.add_argument("runs", nargs="+", help="run folders, or ablation folders (with ablation.json)")
    report.add_argument("--out", default="report")
    report.add_argument("--images", type=int, default=2, help="test images with attention figures per run")
    report.set_defaults(func=cmd_report)


def cmd_export(args: argparse.Namespace) -> int:
    from cnl.export import export

    for path in export(args.checkpoint, args.format, args.out):
        print(f"wrote {path}")
    return 0


def add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="a checkpoint as ONNX, TorchScript or safetensors + model card")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"])
    parser.add_argument("--out", required=True)
    parser.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnl", description="Cross-layer non-local networks for fine-grained recognition"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_profile(subparsers)
    add_list_models(subparsers)
    add_data(subparsers)
    add_training(subparsers)
    add_bench(subparsers)
    add_figures(subparsers)
    add_export(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt as interrupt:
        # RunInterrupted says which signal and what was saved; a bare Ctrl-C elsewhere, only that.
        print(f"cnl {args.command}: {interrupt or 'interrupted'}", file=sys.stderr)
        return getattr(interrupt, "exit_code", 130)
    except TrainingDiverged as error:
        print(f"cnl {args.command}: error: {error}", file=sys.stderr)
        return 3
    except (UserError, OSError) as error:  # OSError: a file the OS refused (missing, no permission, full disk)
        print(f"cnl {args.command}: error: {error}", file=sys.stderr)
        return 2
    # Anything else is a bug in cnl: it goes on, with its traceback, and the command exits 1.


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training run's own handling (imports, reading the config, after it): as Ctrl-C."""

    exit_code = 128 + signal.SIGTERM

    def __str__(self) -> str:
        return "SIGTERM: stopped"


def terminate(number: int, frame: object) -> None:
    raise Terminated


def run() -> None:
    """The ``cnl`` command: ``main``, then exit. After a signal ended it, exit at once: unloading
    torch would take another second, and everything worth keeping is already written."""
    signal.signal(signal.SIGTERM, terminate)
    code = main()
    if code >= 128:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
