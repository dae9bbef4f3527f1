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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnl", description="Cross-layer non-local networks for fine-grained recognition")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_profile(subparsers)
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
