"""Every command and every Python block that README.md and docs/ show works as written.

Commands: each ``cnl ...`` written anywhere (console blocks, inline code, prose) is parsed
by the real parser, its training settings typed as a run would type them. Python blocks:
each page's blocks run in order in one namespace, in a folder holding what they name
(a tiny dataset at ``data/CUB_200_2011``, a trained checkpoint at the paths the pages use,
an exported Hub folder). Two things are replaced, and only these (``STANDS_IN``): named
ImageNet or timm weights by random ones (tests download nothing), and a path or Hub
name that exists only on the reader's machine by the local folder that stands for it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from cnl.cli import build_parser, flag_values, main, upgrade_argv
from cnl.engine.config import parse_assignments

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
STANDS_IN = {
    'weights="IMAGENET1K_V1"': 'weights="none"',  # random weights: no download
    'weights="pretrained"': 'weights="none"',
    '"/path/to/cnl"': repr(str(REPO)),  # torch.hub.load of this checkout
    '"hf-hub:YOUR_ORG/cub-resnet50-cnl5"': '"runs/x/hub"',  # the Hub folder, read locally
}
CNL = re.compile(r"(?:^|\s)(?:\S*/)?(?:cnl|python3? -m cnl|-m cnl)\s+(?=[a-z-])")


def commands(text: str) -> list[tuple[str, bool]]:
    """Each ``cnl`` command in a page, and whether it is a whole one: ``$`` lines of console
    blocks (continued lines joined) and lines of bash blocks are; inline code in prose may
    only mention a command or a flag (`cnl eval`, `cnl eval --report`)."""
    found = []
    for block in re.finditer(r"```(console|bash|sh|text)\n(.*?)```", text, re.S):
        lines = block.group(2).replace("\\\n", " ").splitlines()
        found += [line[2:] if line.startswith("$ ") else line for line in lines if block.group(1) != "text"]
        found += [line[2:] for line in lines if block.group(1) == "text" and line.startswith("$ cnl ")]
    whole = [(c, True) for c in found if CNL.search(c)]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", prose)  # inline code, pair by pair
    return whole + [(c, False) for c in spans if re.match(rf"(?:\S*/)?cnl (?:{'|'.join(SUBCOMMANDS)})(?:\s|$)", c)]


SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


MENTION = ("the following arguments are required", "expected one argument")  # prose may leave these out
PLACEHOLDER = re.compile(r"invalid (?:int|float) value: '([A-Z][A-Z_0-9]*)'")  # --img-size SIZE


def parse(parser, argv: list[str]) -> tuple[object | None, str]:
    """The parsed arguments, or None and argparse's message; an upper-case placeholder where a
    number goes stands for a number."""
    while True:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                return parser.parse_args(argv), ""
        except SystemExit as exit:
            if exit.code == 0:  # --help
                return None, ""
            message = err.getvalue().strip().splitlines()[-1]
            placeholder = PLACEHOLDER.search(message)
            if placeholder is None:
                return None, message
            argv = ["64" if word == placeholder.group(1) else word for word in argv]  # in every range


def arguments(command: str) -> list[str]:
    """The words after ``cnl`` (or ``-m cnl``), without a trailing comment or pipe, and
    without ``...`` (the docs' "and the other flags")."""
    start = CNL.search(command)
    assert start is not None
    rest = command[start.end() :].split(" # ")[0].split(" | ")[0].split(" && ")[0]
    return [word for word in shlex.split(rest) if word != "..."]


def test_the_pages_show_commands():
    every = [c for page in PAGES for c, _ in commands(page.read_text(encoding="utf-8"))]
    assert len(every) > 80 and any("profile --placements --models" in c for c in every)
    parser = build_parser()
    assert parse(parser, ["profile", "--placements", "MODEL"])[1].endswith("unrecognized arguments: MODEL")


def alternatives(argv: list[str]) -> list[list[str]]:
    """``cnl data get cub|dogs --root DIR``: one command per alternative the docs offer."""
    choice = next((k for k, word in enumerate(argv) if "|" in word and not word.startswith("-")), None)
    if choice is None:
        return [argv]
    return [argv[:choice] + [option] + argv[choice + 1 :] for option in argv[choice].split("|")]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_command_in_the_docs_parses(page):
    parser = build_parser()
    for command, whole in commands(page.read_text(encoding="utf-8")):
        for argv in alternatives(upgrade_argv(arguments(command))):
            check_command(parser, page, command, whole, argv)


def check_command(parser, page: Path, command: str, whole: bool, argv: list[str]) -> None:
    """``argv`` parses (a mention in prose may leave out what is required), and its training
    settings are typed as the run would type them."""
    args, message = parse(parser, argv)
    if message:
        mention = not whole and any(allowed in message for allowed in MENTION)
        assert mention, f"{page.name}: `{command}` does not parse: {message}"
    elif args is not None and args.command in ("train", "ablate"):
        flag_values(args)
        parse_assignments(args.set)


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with what the pages' Python names: data, a trained run, its Hub folder."""
    from cnl.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("workspace")
    data = generate(root / "data" / "CUB_200_2011", SynthConfig(classes=3, train_per_class=3, test_per_class=1,
                                                                image_size=40))  # fmt: skip
    run = root / "runs" / "demo" / "ablation" / "resnet18_cnl5" / "seed0"
    assert main(["train", "--data-root", str(data), "--model", "resnet18_cnl5", "--width", "8", "--img-size", "32",
                 "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "3", "--set", "lr_steps=[]",
                 "--workers", "0", "--device", "cpu", "--output", str(run)]) == 0  # fmt: skip
    shutil.copytree(run / "checkpoints", root / "runs" / "birds" / "checkpoints")
    assert main(["export", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--format", "hf",
                 "--out", str(root / "runs" / "x" / "hub")]) == 0  # fmt: skip
    return root


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda page: page.name)
def test_every_python_block_runs(page, workspace, monkeypatch):
    from cnl.models import registry

    monkeypatch.chdir(workspace)
    monkeypatch.setattr(registry, "_YOURS", {})  # a model a page registers is forgotten after it
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(python_blocks(page), 1):
        code = block
        for written, instead in STANDS_IN.items():
            code = code.replace(written, instead)
        try:
            exec(compile(code, f"{page.name}, Python block {number}", "exec"), namespace)  # noqa: S102 - our docs
        except Exception as error:
            pytest.fail(f"{page.name}, Python block {number} fails: {type(error).__name__}: {error}")
    assert os.getcwd() == str(workspace)
