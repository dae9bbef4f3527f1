"""What README.md and docs/ show a command print is what it prints: regenerated here, checked in CI.

    python tools/docs_outputs.py            rewrite every checked block and generated section
    python tools/docs_outputs.py --check    print the differences and exit 1 if there are any
                                            (tests/test_docs.py runs this check)

A fenced ``console`` block that shows output is one of two kinds, said by the comment line
just above it:

- ``<!-- output: checked -->``: each ``$ cnl ...`` command in it is run, in order, in one
  scratch folder per page, and what it prints to standard output follows it. For commands
  that take seconds: data synth and check, profile, list-models.
- ``<!-- output: measured on MACHINE, DATE, commit COMMIT -->``: training output, too slow
  to run here; shown as it was printed that day, by that code.

A block of commands alone (no output lines) needs neither. Between ``<!-- generated: NAME -->``
and ``<!-- end: NAME -->`` a section is written from the parser: docs/guide.md's command
table and every ``--help``, so a command or flag cannot be left out.

Chosen over cog: the blocks stay plain Markdown, without embedded Python, and the same
reader serves the check of the kinds (tests/test_docs.py).
"""

from __future__ import annotations

import argparse
import difflib
import io
import os
import re
import shlex
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CHECKED = "<!-- output: checked -->"
MEASURED = re.compile(
    r"<!-- output: measured on (?P<machine>[^,]+), (?P<date>\d{4}-\d{2}-\d{2}), commit (?P<commit>[0-9a-f]{7,40}) -->"
)
GENERATED = re.compile(r"<!-- generated: (?P<name>[\w-]+) -->\n.*?<!-- end: (?P=name) -->", re.S)
FENCE = re.compile(r"^(?P<marker>[^\n]*)\n```console\n(?P<body>.*?)^```$", re.S | re.M)
WIDTH = "100"  # argparse wraps --help to COLUMNS: one width for every machine
if str(REPO / "src") not in sys.path:  # this checkout's cnl, installed or not
    sys.path.insert(0, str(REPO / "src"))

# Where each command is explained: the generated table names a page for every command.
GUIDE = {
    "profile": "[modules.md](modules.md#counting-cnl-profile), "
    "[figures.md](figures.md#receptive-fields-the-papers-fig-1-in-numbers)",
    "list-models": "[modules.md](modules.md#any-backbone-placement-by-module-name)",
    "data": "[datasets.md](datasets.md)",
    "train": "[training.md](training.md#train)",
    "eval": "[training.md](training.md#evaluate-load-predict)",
    "predict": "[training.md](training.md#evaluate-load-predict)",
    "ablate": "[training.md](training.md#ablation-and-demo)",
    "demo": "[training.md](training.md#ablation-and-demo), README",
    "bench": "[benchmarks.md](benchmarks.md)",
    "attention": "[figures.md](figures.md)",
    "report": "[figures.md](figures.md#reports)",
    "export": "[ecosystem.md](ecosystem.md)",
}


def blocks(text: str) -> list[re.Match]:
    """Every console block with the line above it."""
    return list(FENCE.finditer(text))


def commands(body: str) -> list[tuple[str, str]]:
    """Each ``$ `` command of a block: as the page writes it (continuation lines included),
    and as one line to run."""
    found: list[tuple[str, str]] = []
    lines = iter(body.splitlines())
    for line in lines:
        if line.startswith("$ "):
            written, command = [line], line[2:]
            while command.endswith("\\"):
                written.append(next(lines))
                command = command[:-1] + " " + written[-1].strip()
            found.append(("\n".join(written), command))
    return found


def shows_output(body: str) -> bool:
    return any(line.strip() and not line.startswith(("$ ", "  ", "#")) for line in body.splitlines())


def run(command: str, folder: Path) -> str:
    """What ``command`` prints to standard output, run by ``cnl``'s own ``main`` in this
    process from ``folder``: the code ``python -m cnl`` runs, without a new interpreter and
    its imports (4 s each on a 2-core machine) for every command. This process is the
    tool's own, never a test's, so no state of another caller reaches the commands."""
    words = shlex.split(command)
    if words[0] != "cnl":
        raise SystemExit(f"a checked block runs cnl commands only, got: {command}")
    from cnl.cli import main as cnl_main

    os.environ["COLUMNS"] = WIDTH
    out, err, previous = io.StringIO(), io.StringIO(), Path.cwd()
    os.chdir(folder)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = cnl_main(words[1:])
    except SystemExit as exit:  # argparse's own errors
        code = exit.code if isinstance(exit.code, int) else 2
    finally:
        os.chdir(previous)
    if code != 0:
        raise SystemExit(f"`{command}` failed ({code}):\n{err.getvalue()[-2000:]}")
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").splitlines())


def checked_body(body: str, folder: Path) -> str:
    """The block as the commands print today: each command as written, then its output."""
    parts = []
    for written, command in commands(body):
        parts.append(written)
        output = run(command, folder)
        if output:
            parts.append(output)
    return "\n".join(parts) + "\n"


def regenerate_blocks(text: str) -> str:
    with tempfile.TemporaryDirectory(prefix="cnl-docs-") as scratch:
        pieces, last = [], 0
        for block in blocks(text):
            if block["marker"].strip() != CHECKED:
                continue
            pieces += [text[last : block.start("body")], checked_body(block["body"], Path(scratch))]
            last = block.end("body")
        return "".join(pieces) + text[last:]


def parser_commands() -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, help, parser)`` of every command and subcommand, in the order of ``cnl --help``,
    each command followed by its subcommands."""
    os.environ["COLUMNS"] = WIDTH
    from cnl.cli import build_parser

    return list(_walk("", build_parser()))


def _walk(name: str, parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for sub, sub_parser in action.choices.items():
                full = f"{name} {sub}".strip()
                yield full, helps[sub], sub_parser
                yield from _walk(full, sub_parser)


def guide_table() -> str:
    rows = ["| command | what it does | explained in |", "|---|---|---|"]
    for name, help_text, _ in parser_commands():
        top = name.split()[0]
        if top not in GUIDE:
            raise SystemExit(f"cnl {top} has no page in tools/docs_outputs.py GUIDE: say where it is explained")
        anchor = "cnl-" + name.replace(" ", "-")
        rows.append(f"| [`cnl {name}`](#{anchor}) | {help_text} | {GUIDE[top]} |")
    return "\n".join(rows)


def guide_help() -> str:
    sections = []
    for name, _, parser in parser_commands():
        help_text = "\n".join(line.rstrip() for line in parser.format_help().rstrip().splitlines())
        sections.append(f"### cnl {name}\n\n```text\n$ cnl {name} --help\n{help_text}\n```")
    return "\n\n".join(sections)


def datasets_table() -> str:
    """docs/datasets.md's table of what ``cnl data get`` fetches, from the catalog's records."""
    from collections import Counter

    from cnl.data.catalog import CATALOG
    from cnl.data.check import SplitReport, compare_official
    from cnl.tables import Table

    rows = []
    for record in (r for r in CATALOG.values() if r.fetchable):
        files = ", ".join(f"`{a.file}`" for a in record.archives)
        if not record.archives:
            files = "none: its terms need a person; the command says where to ask and where to put it"
        elif all(a.url is None for a in record.archives):
            files = f"only with `--mirror`: {files}"
        else:
            files += f" ([{record.publisher}]({record.page}))"
        sizes = [a.size for a in record.archives]
        size = " + ".join(f"{n:,}" for n in sizes if n) if any(sizes) else ("not pinned" if sizes else "")
        assert record.splits is not None and record.classes is not None
        reports = [
            SplitReport(split, record.splits[split], [str(k) for k in range(record.classes)], Counter())
            for split in record.published
        ]
        (check,) = compare_official(record.name, reports)
        reads = f"`--dataset {record.name} --data-root ROOT/{record.folder}`"
        rows.append([f"`{record.name}`", files, size, record.pinned_by, reads, check])
    header = ["`cnl data get`", "publisher's files", "size (bytes, as pinned)", "digest pinned by", "reads with"]
    return Table.of([*header, "on a complete copy, `cnl data check` ends with"], rows).markdown()


SECTIONS = {"commands": guide_table, "help": guide_help, "datasets": datasets_table}


def regenerate_sections(text: str) -> str:
    def fill(match: re.Match) -> str:
        name = match["name"]
        return f"<!-- generated: {name} -->\n{SECTIONS[name]()}\n<!-- end: {name} -->"

    return GENERATED.sub(fill, text)


def regenerate(path: Path) -> str:
    return regenerate_sections(regenerate_blocks(path.read_text(encoding="utf-8")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="show differences and exit 1, write nothing")
    parser.add_argument("pages", nargs="*", type=lambda p: Path(p).resolve(), default=PAGES)
    args = parser.parse_args()
    differs = False
    for page in args.pages:
        before, after = page.read_text(encoding="utf-8"), regenerate(page)
        if before == after:
            continue
        differs = True
        if args.check:
            name = str(page.relative_to(REPO))
            sys.stdout.writelines(
                difflib.unified_diff(before.splitlines(True), after.splitlines(True), name, name + " (now)")
            )
        else:
            page.write_text(after, encoding="utf-8")
            print(f"rewrote {page.relative_to(REPO)}")
    return 1 if differs and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
