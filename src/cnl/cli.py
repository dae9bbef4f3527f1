"""The ``cnl`` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def split_names(values: Sequence[str]) -> list[str]:
    """``["a,b", "c"] -> ["a", "b", "c"]``: lists may be given with commas or spaces."""
    return [name for value in values for name in value.split(",") if name]


def cmd_profile(args: argparse.Namespace) -> int:
    from cnl.analysis.profile import format_table, profile_model

    profiles = [profile_model(name, args.img_size, args.num_classes) for name in split_names(args.models)]
    if args.json:
        print(json.dumps([p.to_json() for p in profiles], indent=2))
    else:
        print(format_table(profiles))
    return 0


def add_profile(subparsers: argparse._SubParsersAction) -> None:
    from cnl.analysis.profile import TABLE2

    parser = subparsers.add_parser(
        "profile",
        help="parameters, MACs and attention memory beside the paper's Table 2",
        description="Count parameters, MACs (paper's convention and all), attention-map bytes per image.",
    )
    parser.add_argument("--models", nargs="+", default=list(TABLE2), help="model names (commas or spaces)")
    parser.add_argument("--img-size", type=int, default=448, help="square input size (default 448)")
    parser.add_argument("--num-classes", type=int, default=200, help="classes of the head (default 200, CUB)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=cmd_profile)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from cnl.data.synth import SynthConfig, contact_sheet, generate

    config = SynthConfig(args.classes, args.train_per_class, args.test_per_class, args.image_size, args.seed)
    out = generate(args.out, config)
    print(f"wrote {config.classes * (config.train_per_class + config.test_per_class)} images in the CUB-200-2011 layout to {out}")
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
    synth = commands.add_parser(
        "synth", help="write the synthetic multi-scale fine-grained benchmark (CUB layout)"
    )
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnl", description="Cross-layer non-local networks for fine-grained recognition")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_profile(subparsers)
    add_data(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"cnl {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
