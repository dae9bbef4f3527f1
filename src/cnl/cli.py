"""The ``cnl`` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cnl.errors import InvalidValue, as_user_error, excerpt, expect_file, printable, report


def split_names(values: Sequence[str]) -> list[str]:
    """``["a,b", "c"] -> ["a", "b", "c"]``: lists may be given with commas or spaces."""
    return [name for value in values for name in value.split(",") if name]


def listed(
    values: Sequence[str], flag: str, parse: Callable[[str], Any] = str, say: Callable[[Any], str] = excerpt
) -> list:
    """``split_names`` of a list flag, each item read by ``parse``: at least one, none twice
    once read (a run named twice would be trained once and counted twice; a split or model
    named twice checked or tabled twice)."""
    items = [parse(name) for name in split_names(values)]
    if not items:
        raise InvalidValue(f"{flag} names nothing: give one or more, separated by commas or spaces")
    twice = [item for index, item in enumerate(items) if item in items[:index]]
    if twice:
        raise InvalidValue(f"{flag} names {say(twice[0])} more than once")
    return items


def one_name(value: str, flag: str, what: str) -> str:
    """The one name a flag takes (``--model``): a list would be read as its first name and
    the rest dropped without a word, so nothing or several are one line."""
    names = split_names([value])
    if not names:
        raise InvalidValue(f"{flag} names nothing: give one {what}")
    if len(names) > 1:
        raise InvalidValue(f"{flag} takes one {what}, got {len(names)}: {excerpt(value)}")
    return names[0]


def seed(text: str) -> int:
    """One seed of ``--seeds``: a whole number in a seed's range (``0`` and ``00`` are one seed)."""
    try:
        value = int(text)
    except ValueError:
        raise InvalidValue(f"--seeds takes whole numbers such as 0,1,2, got {excerpt(text)}") from None
    if not 0 <= value < 2**63:
        raise InvalidValue(f"--seeds: a seed is a whole number in [0, 2**63), got {excerpt(value)}")
    return value


def seed_list(values: Sequence[str]) -> list[int]:
    return listed(values, "--seeds", parse=seed, say=lambda value: f"seed {value}")


def whole(low: int, high: int | None = None) -> Any:
    """An argparse type: a whole number from ``low`` to ``high``, else one line naming it."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be a whole number {bounds}, got {value}")
        return value

    return parse


def path(text: str) -> str:
    """An argparse type: a file or folder's name, never empty (what an unset shell variable
    gives, which would write into the current folder or be taken as no file at all)."""
    if not text:
        raise argparse.ArgumentTypeError("must name a file or folder, got ''")
    return text


# The img_size setting's range (cnl.engine.config, where reading it would load the settings
# for every --help): a ResNet needs 32 px.
IMG_SIZES = (32, 4096)
IMG_SIZE = whole(*IMG_SIZES)
POSITIVE = whole(1)
NON_NEGATIVE = whole(0)


def cmd_profile(args: argparse.Namespace) -> int:
    from cnl.analysis.profile import format_table, profile_model

    names = listed(args.models, "--models")
    if args.placements:
        from cnl.analysis.profile import format_placements

        print("\n\n".join(format_placements(n, args.img_size, args.num_classes) for n in names))
        return 0
    if args.receptive_fields:
        from cnl.analysis.receptive_field import format_fields
        from cnl.models import create_model

        print("\n\n".join(format_fields(n, create_model(n, num_classes=args.num_classes)) for n in names))
        return 0
    profiles = [profile_model(name, args.img_size, args.num_classes) for name in names]
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
    parser.add_argument("--img-size", type=IMG_SIZE, default=448, help="square input size (default 448)")
    parser.add_argument("--num-classes", type=POSITIVE, default=200, help="classes of the head (default 200, CUB)")
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
        "timm:convnext_tiny_cnl5, tv:efficientnet_b0_nl5; see cnl profile --placements --models MODEL."
    )
    return 0


def add_list_models(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list-models", help="our model names, and how to name any other")
    parser.add_argument("pattern", nargs="?", default="*", help="a shell-style pattern (default *)")
    parser.set_defaults(func=cmd_list_models)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from cnl.data.synth import SynthConfig, contact_sheet, generate

    if args.contact_sheet:  # before the images are written
        expect_file(args.contact_sheet, "--contact-sheet", (".png", ".jpg", ".jpeg"))
    config = SynthConfig(
        task=args.task, classes=args.classes, train_per_class=args.train_per_class,
        test_per_class=args.test_per_class, image_size=args.image_size, seed=args.seed,
    )  # fmt: skip
    out = generate(args.out, config)
    print(
        f"wrote {config.classes * (config.train_per_class + config.test_per_class)} images of the {config.task} "
        f"task in the CUB-200-2011 layout to {out}"
    )
    if args.contact_sheet:
        print(f"wrote {contact_sheet(out, args.contact_sheet)}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from cnl.data.check import check_dataset, format_reports

    name, reports = check_dataset(args.dataset, args.root, tuple(listed(args.splits, "--splits")))
    print(format_reports(reports, name, args.root))
    return 0 if all(r.ok for r in reports) else 1


def cmd_data_get(args: argparse.Namespace) -> int:
    from cnl.data.check import check_dataset, compare_official, published_splits
    from cnl.data.download import SOURCES, get_dataset

    fetcher = get_dataset(args.name, args.root, args.mirror, progress=sys.stderr.isatty())  # no bars in a log
    fetched = ", ".join(fetcher.fetched) or "nothing: every file was there and verified"
    print(f"downloaded {fetched}")
    source = SOURCES[args.name]
    splits = published_splits(source.dataset)
    _, reports = check_dataset(source.dataset, fetcher.folder, splits, decode=False)
    print("\n".join(compare_official(source.dataset, reports)))
    print(f"{source.title} is in {fetcher.folder}: --dataset {source.dataset} --data-root {fetcher.folder}")
    check = f"cnl data check --dataset {source.dataset} --root {fetcher.folder} --splits {' '.join(splits)}"
    print(f"{check} decodes every image")
    return 0


def add_data(subparsers: argparse._SubParsersAction) -> None:
    from cnl.data.catalog import CATALOG
    from cnl.data.synth import BENCHMARK, TASKS

    data = subparsers.add_parser("data", help="get a dataset, check one, or write the synthetic benchmark")
    commands = data.add_subparsers(dest="data_command", required=True)
    defaults = BENCHMARK
    synth = commands.add_parser("synth", help="write the synthetic multi-scale fine-grained benchmark (CUB layout)")
    synth.add_argument("--out", type=path, required=True, help="folder to write")
    synth.add_argument(
        "--task", choices=TASKS, default=defaults.task,
        help="skin_control: the class is the fine texture the body wears, plain blobs beside it (default, the "
        "demo's); skin: the same with the other textures on the blobs; shape: those scenes, the class in the body's "
        "shape, its texture at random; parts: a conjunction of a silhouette, a pattern and a mark (version 0.1.0's "
        "demo: --task parts --classes 12 --train-per-class 80 --test-per-class 25 --image-size 64 --seed 0); "
        "relation: the class is the mark at the body's head, among marks of every kind; control: the same with "
        "the head mark alone",
    )  # fmt: skip
    synth.add_argument("--classes", type=int, default=defaults.classes)
    synth.add_argument("--train-per-class", type=int, default=defaults.train_per_class)
    synth.add_argument("--test-per-class", type=int, default=defaults.test_per_class)
    synth.add_argument("--image-size", type=int, default=defaults.image_size, help="pixels per side")
    synth.add_argument("--seed", type=NON_NEGATIVE, default=defaults.seed)
    synth.add_argument("--contact-sheet", type=path, help="also write a PNG of samples per class here")
    synth.set_defaults(func=cmd_data_synth)

    get = commands.add_parser(
        "get", help="download, check and unpack a dataset from its publisher (resumable)",
        description="Download a dataset's archives into ROOT/downloads (continuing a broken download), check each "
        "against its published checksum, unpack it into the layout --dataset reads, and compare the splits with "
        "the published sizes. cars and nabirds cannot be fetched from an official host: they say what to do.",
    )  # fmt: skip
    get.add_argument("name", choices=[name for name, record in CATALOG.items() if record.fetchable])
    get.add_argument("--root", type=path, required=True, help="the folder to download and unpack into")
    get.add_argument(
        "--mirror", help="a URL to fetch each archive from by its own file name, instead of the official host"
    )
    get.set_defaults(func=cmd_data_get)

    check = commands.add_parser(
        "check", help="per-split counts against the published ones, and every missing or unreadable file"
    )
    check.add_argument(
        "--dataset", default="auto",
        help=f"{', '.join(CATALOG)} or auto (default auto)",
    )  # fmt: skip
    check.add_argument("--root", type=path, required=True, help="the dataset's folder")
    check.add_argument("--splits", nargs="+", default=["train", "test"], help="default train test")
    check.set_defaults(func=cmd_data_check)


def default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def add_train_flags(parser: argparse.ArgumentParser, resume: bool = True) -> None:
    """A flag for every field of TrainConfig, from the field's type, help and default: ``--x``
    / ``--no-x`` for booleans, several values (spaces or commas) for lists. Values stay text
    here and are typed by the config (``flag_values``), as YAML files and ``--set`` are."""
    import dataclasses

    from cnl.engine.config import HINTS, TrainConfig, flag_of, takes_list

    parser.add_argument("--config", help="a YAML file of settings (a preset in configs/); flags override it")
    for setting in dataclasses.fields(TrainConfig):
        if setting.name == "resume" and not resume:
            continue
        meta = dict(setting.metadata)
        help_text = meta.pop("help")
        rule = meta.pop("range", None)  # checked by validate, as every layer of settings is, not by argparse
        default = setting.default_factory() if callable(setting.default_factory) else setting.default
        shown = [f"default: {default_text(default)}"] if default is not None and default != "" else []
        shown += [rule.bounds()] if rule is not None and rule.bounds() else []
        if shown:
            help_text += f" ({'; '.join(shown)})"
        options: dict[str, Any] = {"help": help_text, "default": None, **meta}
        if HINTS[setting.name] is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif setting.name == "resume":
            options.update(nargs="?", const="yes")
        elif takes_list(setting.name):
            options.setdefault("nargs", "+")
        parser.add_argument(flag_of(setting.name), **options)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="set any setting, typed as in a config file (repeatable), e.g. --set lr=0.02 --set lr_steps=30,60",
    )  # fmt: skip


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (the others None), typed and checked as the config's fields."""
    from cnl.engine.config import FIELDS, flag_of, parse_text

    values = {}
    for name in sorted(FIELDS):
        given = getattr(args, name, None)
        values[name] = given if given is None or isinstance(given, bool) else parse_text(name, given, flag_of(name))
    return values


def resolve_train_config(args: argparse.Namespace, default_output: str | None = None, preflight: bool = False):
    """Defaults < the checkpoint's config (when resuming) < --config file < flags < --set.
    The output folder: as given, else the resumed checkpoint's run folder, else ``default_output``."""
    return resolve_run(args, default_output, preflight)[0]


def resolve_run(args: argparse.Namespace, default_output: str | None = None, preflight: bool = False):
    """``(config, resume point)``: the settings (``resolve_train_config``) and the checkpoint
    they continue, read once (None: a fresh start). ``preflight``: a fresh start's settings
    and data root are checked before torch is imported (``cnl train`` and ``cnl ablate``)."""
    from cnl.data.catalog import dataset_root
    from cnl.engine.config import TrainConfig, make_config, parse_assignments, read_yaml
    from cnl.engine.runfolder import run_folder_of

    layers = [read_yaml(args.config)] if args.config else []
    layers += [flag_values(args), parse_assignments(args.set)]

    def latest(key: str, default: Any) -> Any:
        return next((layer[key] for layer in reversed(layers) if layer.get(key) is not None), default)

    resume = latest("resume", None)
    output = latest("output", None) or run_folder_of(resume) or default_output or TrainConfig.output
    layers.insert(0, {"output": output})
    if preflight and resume is None:
        # A fresh start (or torchrun's restart of one): every setting is in these layers, so a
        # mistake is told now, in one line, and not after torch has loaded (seconds).
        dataset_root(make_config(*layers, data_root=True).data_root)
    from cnl.engine.trainer import ResumePoint

    point = ResumePoint.of(output, resume)
    if point is not None:
        layers.insert(0, point.state["config"])
    return make_config(*layers), point


def cmd_train(args: argparse.Namespace) -> int:
    config, point = resolve_run(args, preflight=True)
    from cnl.engine.trainer import Run

    summary = Run(config, point=point).fit()
    print(json.dumps(summary, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cnl.engine.distributed import is_main_process
    from cnl.engine.evaluation import evaluate_checkpoint

    options = {"data_root": args.data_root, "workers": args.workers, "device": args.device}
    result = evaluate_checkpoint(
        args.checkpoint, args.batch_size, details=args.report is not None, tta=args.tta, **options
    )
    if args.report is not None:
        from cnl.analysis.evidence import write_report

        written = write_report(result, args.report) if is_main_process() else []
        for detail in ("confusion", "per_image", "images", "classes"):
            result.pop(detail)
        result["report"] = [str(path) for path in written]
    if is_main_process():  # under torchrun, one process prints
        if args.json:
            print(json.dumps(result))
        else:
            views = "" if result["tta"] == "none" else f", {result['tta']} test-time augmentation"
            print(
                f"{result['checkpoint']}: top1 {result['top1']:.2f}  top5 {result['top5']:.2f}  "
                f"loss {result['loss']:.4f}  ({result['count']} images{views})"
            )
            for written in result.get("report", []):
                print(f"wrote {written}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cnl.engine.prediction import predict_batches, write_predictions

    options = {"batch_size": args.batch_size, "workers": args.workers}
    results = predict_batches(args.checkpoint, args.images, args.topk, args.device, **options)
    if args.out:
        print(f"wrote {write_predictions(results, args.out, args.topk)} rows to {args.out}")
        return 0
    if args.json:
        print(json.dumps(list(results), indent=2))
        return 0
    for result in results:
        image = printable(result["image"])  # a line an image, whatever its name holds
        if "error" in result:
            print(f"{image}: error: {printable(result['error'])}")
            continue
        best = ", ".join(f"{printable(p['class'])} {p['probability']:.3f}" for p in result["predictions"])
        print(f"{image}: {best}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    if args.jobs > 1:
        from cnl.engine import distributed

        if distributed.world_size() > 1:
            raise InvalidValue(
                "--jobs trains runs side by side in one launch; under torchrun each run takes every process"
            )
    models = listed(args.models, "--models")
    given_seeds = seed_list(args.seeds) if args.seeds is not None else None
    config = resolve_train_config(args, default_output="runs/ablation", preflight=True)
    output = config.output
    seeds = given_seeds or [config.seed]
    from cnl.analysis.ablation import format_ablation, run_ablation

    rows = run_ablation(config, models, output, seeds, args.jobs, 1 if args.jobs > 1 else None)
    print(format_ablation(rows, config, seeds))
    print(f"\nwrote {output}/ablation.json and ablation.md")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cnl.demo import Photos, run_demo

    photos = None
    if args.dataset != "synth":
        photos = Photos(
            args.dataset, args.data_root, args.root, args.mirror, args.weights, args.classes,
            args.train_per_class, args.test_per_class,
        )  # fmt: skip
    print(run_demo(args.output, quick=args.quick, photos=photos))
    return 0


def add_training(subparsers: argparse._SubParsersAction) -> None:
    from cnl.data.catalog import CATALOG
    from cnl.data.policies import TTA_MODES

    train = subparsers.add_parser("train", help="train and evaluate a model with the paper's recipe")
    add_train_flags(train)
    train.set_defaults(func=cmd_train)

    evaluate = subparsers.add_parser("eval", help="top-1 and top-5 of a checkpoint on its test split")
    evaluate.add_argument("--checkpoint", type=path, required=True)
    evaluate.add_argument("--data-root", help="the dataset's folder, if it moved since training")
    evaluate.add_argument("--batch-size", type=POSITIVE)
    evaluate.add_argument("--workers", type=NON_NEGATIVE)
    evaluate.add_argument("--device", default="auto", help="auto (default: cuda when there is one), cpu or cuda")
    evaluate.add_argument("--json", action="store_true", help="print an object with top1, top5, loss, count, tta")
    evaluate.add_argument(
        "--tta", choices=TTA_MODES, default="none",
        help="test-time augmentation: flip (the image and its mirror), flip+crops (five crops of the evaluation "
        "resize and their mirrors); the mean of the views' probabilities; said beside every figure (default none)",
    )  # fmt: skip
    evaluate.add_argument(
        "--report",
        type=path,
        help="a folder for per_class.csv, confusion.png and predictions.csv (cnl report shows RUN/eval)",
    )
    evaluate.set_defaults(func=cmd_eval)

    pred = subparsers.add_parser("predict", help="class names and probabilities for images")
    pred.add_argument("--checkpoint", type=path, required=True)
    pred.add_argument("images", nargs="+", help="image files, folders, glob patterns or .txt lists of paths")
    pred.add_argument("--topk", type=POSITIVE, default=5)
    pred.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    pred.add_argument("--batch-size", type=POSITIVE, default=32, help="images per forward pass (default 32)")
    pred.add_argument("--workers", type=NON_NEGATIVE, default=2, help="decoding processes (default 2)")
    pred.add_argument("--out", type=path, help="write one row per image to a .csv or .jsonl file")
    pred.add_argument("--json", action="store_true")
    pred.set_defaults(func=cmd_predict)

    ablate = subparsers.add_parser("ablate", help="train several models with one recipe and compare them (Table 2)")
    ablate.add_argument("--models", nargs="+", required=True, help="e.g. resnet50,resnet50_nl5,resnet50_cnl5")
    ablate.add_argument(
        "--seeds", nargs="+", help="train every model once per seed (e.g. 0,1,2): mean, sd and paired 95%% intervals"
    )
    ablate.add_argument(
        "--jobs", type=whole(1, os.cpu_count() or 1), default=1,
        help="train this many runs at a time, each in its own process on one thread (at most the cores; cnl demo "
        "trains 2); the default trains them in turn on torch's threads",
    )  # fmt: skip
    add_train_flags(ablate, resume=False)
    ablate.set_defaults(func=cmd_ablate)

    demo = subparsers.add_parser(
        "demo", help="the synthetic benchmark and a small ablation, on a CPU in minutes",
        description="Train ResNet-18, +5NL and +5CNL with two seeds each and compare them, paired by seed and image "
        "by image: on the synthetic benchmark (default), or on a balanced subset of real photos (--dataset).",
    )  # fmt: skip
    demo.add_argument(
        "--output", type=path, default="runs/demo", help="default runs/demo (real photos: OUTPUT/DATASET)"
    )
    demo.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny data, into OUTPUT/quick)")
    photos = demo.add_argument_group("real photos")
    fetched = [name for name, record in CATALOG.items() if record.downloadable]
    photos.add_argument(
        "--dataset", default="synth",
        help=f"synth (default), or a dataset to take a subset of: {', '.join(fetched)} (fetched by cnl data get when "
        f"--data-root is not given), {', '.join(n for n in CATALOG if n not in fetched)} or auto (with --data-root)",
    )  # fmt: skip
    photos.add_argument("--data-root", help="the dataset's folder (default: fetch it into --root)")
    photos.add_argument("--root", type=path, default="data", help="where cnl data get puts the dataset (default data)")
    photos.add_argument("--mirror", help="as cnl data get --mirror")
    photos.add_argument(
        "--weights", default="none", help="none (default: from scratch) or IMAGENET1K_V1 (lr 0.01 then)"
    )
    photos.add_argument("--classes", type=int, default=12, help="classes of the subset (default 12)")
    photos.add_argument("--train-per-class", type=int, default=60, help="training images a class (default 60)")
    photos.add_argument("--test-per-class", type=int, default=20, help="test images a class (default 20)")
    demo.set_defaults(func=cmd_demo)


def cmd_bench_model(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cnl.analysis import bench

    settings = {
        "img_size": args.img_size, "batch_size": args.batch_size, "device": args.device, "amp": args.amp,
        "channels_last": args.channels_last, "compile": args.compile, "repeats": args.repeats,
    }  # fmt: skip
    if args.width is not None:
        settings["width"] = args.width
    results = bench.bench_models(listed(args.models, "--models"), **settings)
    print(json.dumps([asdict(r) for r in results], indent=2) if args.json else bench.format_results(results, settings))
    return 0


def cmd_bench_module(args: argparse.Namespace) -> int:
    from cnl.analysis import bench

    rows = bench.bench_module(args.img_size, args.batch_size, args.device, args.repeats)
    print(json.dumps(rows, indent=2) if args.json else bench.format_module_rows(rows))
    return 0


def cmd_bench_input(args: argparse.Namespace) -> int:
    from cnl.analysis import bench

    rows = bench.bench_input(args.img_size, repeats=args.repeats)
    print(json.dumps(rows, indent=2) if args.json else bench.format_input_rows(rows))
    return 0


def cmd_bench_predict(args: argparse.Namespace) -> int:
    from cnl.analysis import bench

    name = one_name(args.model, "--model", "model name")
    rows = bench.bench_predict(name, args.img_size, args.batch_size, args.workers, device=args.device, width=args.width)
    print(json.dumps(rows, indent=2) if args.json else bench.format_predict_rows(rows, name, args.img_size, args.width))
    return 0


def add_bench(subparsers: argparse._SubParsersAction) -> None:
    from cnl.engine.config import AMP_CHOICES

    parser = subparsers.add_parser("bench", help="train-step time, inference speed and peak memory, as ratios")
    jobs = parser.add_subparsers(dest="bench_command", required=True, metavar="{model,module,input,predict}")

    def job(name: str, help_text: str, img_size: int, batch_size: int | None, func) -> argparse.ArgumentParser:
        command = jobs.add_parser(name, help=help_text, description=help_text)
        command.add_argument(
            "--img-size", type=IMG_SIZE, default=img_size, help=f"square input size (default {img_size})"
        )
        if batch_size is not None:
            command.add_argument("--batch-size", type=POSITIVE, default=batch_size, help=f"default {batch_size}")
        command.add_argument("--json", action="store_true", help="print JSON instead of a table")
        command.set_defaults(func=func)
        return command

    model = job("model", "train-step time, inference throughput and peak memory of models, as ratios to the first",
                448, 2, cmd_bench_model)  # fmt: skip
    model.add_argument(
        "--models", nargs="+", default=["resnet50,resnet50_nl5,resnet50_cnl5"],
        help="names, optionally NAME:ORDER:KERNEL (order paper|reassociated|auto, kernel sdpa|bmm) and "
        "+compile (that model under torch.compile); default resnet50,resnet50_nl5,resnet50_cnl5",
    )  # fmt: skip
    model.add_argument("--amp", choices=AMP_CHOICES, default="none", help="mixed precision (default none)")
    model.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    model.add_argument("--compile", action="store_true", help="torch.compile each model")
    model.add_argument(
        "--width", type=whole(1, 1024), default=None, help="channels of a ResNet's first stage (default: its own, 64)"
    )
    module = job("module", "the attention paths alone (paper, reassociated; sdpa, bmm) on the paper's shapes",
                 448, 2, cmd_bench_module)  # fmt: skip
    source = job("input", "decode + augment images/s: PIL against torchvision.io", 448, None, cmd_bench_input)
    predict = job("predict", "cnl predict's batched pipeline against one image at a time", 64, 32, cmd_bench_predict)
    predict.add_argument("--model", default="resnet18_cnl5", help="default resnet18_cnl5")
    predict.add_argument("--width", type=POSITIVE, default=16, help="ResNet width (default 16, the demo's)")
    predict.add_argument("--workers", type=NON_NEGATIVE, default=2, help="decoding processes (default 2)")
    for command in (model, module, predict):
        command.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    for command in (model, module, source):
        command.add_argument("--repeats", type=POSITIVE, default=3, help="timed steps (median; default 3)")


# ``cnl bench --module`` and friends before the jobs were subcommands.
OLD_BENCH_FLAGS = {"--module": "module", "--input": "input", "--predict": "predict"}


def upgrade_argv(argv: list[str]) -> list[str]:
    """Old spellings: ``cnl bench --models ...`` is ``cnl bench model --models ...``; the old
    job flags are an error that names the subcommand."""
    if argv[:1] != ["bench"] or (len(argv) > 1 and not argv[1].startswith("-")) or argv[1:2] in (["-h"], ["--help"]):
        return argv
    for flag, job in OLD_BENCH_FLAGS.items():
        if flag in argv:
            raise InvalidValue(f"cnl bench {flag} is now a subcommand: cnl bench {job} (see cnl bench {job} --help)")
    return ["bench", "model", *argv[1:]]


def cmd_attention(args: argparse.Namespace) -> int:
    from cnl.analysis.attention import FIGURE_SUFFIXES, attention_rows, parse_queries, render
    from cnl.engine.modelfile import load_model_with_info

    if args.html:
        expect_file(args.html, "--html", (".html", ".htm"))
    else:
        expect_file(args.out, "--out", FIGURE_SUFFIXES)
    model, classes, info = load_model_with_info(args.checkpoint)
    img_size = args.img_size or info.img_size
    images = [*([args.image] if args.image else []), *args.images]
    if not images:
        raise InvalidValue("no image: give IMAGE... (or --image)")
    if args.html:
        from cnl.analysis.explorer import write_explorer

        title = f"{info.model} ({args.checkpoint}): what the modules attend to"
        page = write_explorer(model, classes, images, img_size, args.html, title)
        print(f"wrote {page}: {len(images)} images, {page.stat().st_size / 2**20:.1f} MB")
        return 0
    rows = attention_rows(model, images[0], img_size, parse_queries(args.query), args.count)  # NothingToShow: exit 2
    print(f"wrote {render(rows, args.out)}: {len(rows.rows)} queries x {len(rows.rows[0])} maps")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cnl.analysis.report import build_report

    print(f"wrote {build_report(args.runs, args.out, args.images)}")
    return 0


def add_figures(subparsers: argparse._SubParsersAction) -> None:
    attention = subparsers.add_parser("attention", help="the paper's Fig. 3: attention maps of query positions")
    attention.add_argument("--checkpoint", type=path, required=True)
    attention.add_argument("images", nargs="*", metavar="IMAGE", help="images (the figure takes the first)")
    attention.add_argument("--image", help="an image (as IMAGE)")
    attention.add_argument(
        "--html", type=path, help="write an interactive, self-contained explorer page of every IMAGE here"
    )
    attention.add_argument("--query", nargs="+", default=["auto"], help="'auto' or ROW,COLUMN cells of the query grid")
    attention.add_argument("--count", type=POSITIVE, default=3, help="query cells that 'auto' picks")
    attention.add_argument("--img-size", type=IMG_SIZE, help="default: the checkpoint's")
    attention.add_argument("--out", type=path, default="attention.png")
    attention.set_defaults(func=cmd_attention)

    report = subparsers.add_parser("report", help="HTML + Markdown: curves, ablation table and chart, attention")
    report.add_argument("runs", nargs="+", help="run folders, or ablation folders (with ablation.json)")
    report.add_argument("--out", type=path, default="report")
    report.add_argument("--images", type=NON_NEGATIVE, default=2, help="test images with attention figures per run")
    report.set_defaults(func=cmd_report)


def cmd_export(args: argparse.Namespace) -> int:
    from cnl.export import export

    if args.format != "hf":  # hf writes a folder
        expect_file(args.out, "--out")
    for path in export(args.checkpoint, args.format, args.out):
        print(f"wrote {path}")
    return 0


def add_export(subparsers: argparse._SubParsersAction) -> None:
    from cnl.export import FORMATS

    parser = subparsers.add_parser(
        "export", help="a checkpoint as ONNX, TorchScript, safetensors + model card, or a Hugging Face Hub folder"
    )
    parser.add_argument("--checkpoint", type=path, required=True)
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument(
        "--out", type=path, required=True, help="a file; for hf, a folder (config.json, model.safetensors, README.md)"
    )
    parser.set_defaults(func=cmd_export)


# The commands that build a model by its name: each takes --import, for a model of the user's own.
BUILDS_MODELS = ("train", "ablate", "eval", "predict", "attention", "report", "export")


def add_imports(subparsers: argparse._SubParsersAction) -> None:
    for name in BUILDS_MODELS:
        subparsers.choices[name].add_argument(
            "--import", dest="imports", action="append", default=[], metavar="MODULE",
            help="a Python module (dotted name or .py file) to import first: one that registers a model of your "
            "own with cnl.register_model (repeatable)",
        )  # fmt: skip


def import_modules(names: list[str]) -> None:
    """``--import``: each module named on the command line (never one a file names)."""
    import importlib
    import importlib.util

    for name in names:
        try:
            if name.endswith(".py"):
                spec = importlib.util.spec_from_file_location(Path(name).stem, name)
                if spec is None or spec.loader is None or not Path(name).is_file():
                    raise InvalidValue(f"--import {name}: no such file")
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
            elif all(part.isidentifier() for part in name.split(".")):
                importlib.import_module(name)
            else:  # importlib reads '' and '..x' as relative imports, and fails outside any package
                raise InvalidValue(f"--import takes a module name such as my_models or a .py file, got {excerpt(name)}")
        except ImportError as error:
            raise InvalidValue(f"--import {name}: {error}") from None


class Parser(argparse.ArgumentParser):
    """argparse's parser, saying a mistyped flag in one line and exit 2, as cnl says every
    other mistake (the usage is one ``--help`` away); subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A word that starts with a minus and a digit is a value (--lr -1e-3, --query -1,0), which
        # its flag then judges, not an unknown flag: no flag of cnl starts so. Python 3.13's rule;
        # 3.11's took only plain numbers (-1, -0.5) and said "expected one argument".
        self._negative_number_matcher = re.compile(r"-\.?\d")

    def error(self, message: str) -> NoReturn:
        self.exit(2, printable(f"{self.prog}: error: {message}") + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cnl", description="Cross-layer non-local networks for fine-grained recognition")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_profile(subparsers)
    add_list_models(subparsers)
    add_data(subparsers)
    add_training(subparsers)
    add_bench(subparsers)
    add_figures(subparsers)
    add_export(subparsers)
    add_imports(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = upgrade_argv(argv)
    except InvalidValue as error:
        print(f"cnl bench: error: {error}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        import_modules(getattr(args, "imports", []))
        return args.func(args)
    except BrokenPipeError:  # the reader went away (| head): end quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere, not to a traceback
        return 128 + signal.SIGPIPE
    except (KeyboardInterrupt, Exception) as error:
        users = as_user_error(error)
        if users is None:  # a bug in cnl: it goes on, with its traceback, and the command exits 1
            raise
        return report(f"cnl {args.command}", users)


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
