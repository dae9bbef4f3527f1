"""Every place where input enters holds: settings as people type them, files from elsewhere
(presets, Hub folders, prediction tables, archives), URLs.

Each boundary has its cases (what users and hostile files were seen to send) and a
property-based test that feeds generated input to the real entry point. The only outcomes
allowed: a valid result, or a ``UserError`` that ``cnl`` prints as one line of at most 300
characters with exit 2; never a traceback, a long wait, or a file written outside the
target. Hypothesis runs derandomized in CI (tests/conftest.py); HYPOTHESIS_PROFILE=long draws
many more inputs.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pickle
import shutil
import tarfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import cnl
from cnl.cli import build_parser, main, resolve_train_config
from cnl.data.download import SOURCES, Archive, Fetcher, Source, check_url
from cnl.engine.config import FIELD_INFO, FIELDS, TrainConfig, make_config, out_of_range, read_yaml
from cnl.engine.hub import CONFIG, WEIGHTS, hub_config
from cnl.engine.modelinfo import ModelInfo
from cnl.engine.predictions import COLUMNS, read_correct, write_image_predictions
from cnl.errors import UserError, printable
from runs import epoch_line, tiny_run_args

ONE_LINE = 300


def one_line_error(code: int, err: str, command: str) -> str:
    """The line ``cnl COMMAND`` printed for a user error (and that it is one, short)."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not breaking(lines[0]), lines[0]  # a file's bytes quoted in it are escaped
    assert lines[0].startswith(f"cnl {command}: error: ") and len(lines[0]) <= ONE_LINE, lines[0]
    return lines[0]


def breaking(text: str) -> list[str]:
    """The characters of ``text`` that break a line or drive a terminal."""
    return [char for char in text if not char.isprintable()]


@given(st.text())
def test_printable_escapes_what_breaks_a_line_and_leaves_the_rest(text):
    shown = printable(text)
    assert not breaking(shown)
    assert printable(text, keep="\n").count("\n") == text.count("\n")
    if not breaking(text):
        assert shown == text


def train(capsys, tmp_path: Path, *argv: str) -> tuple[int, str]:
    """``cnl train`` with a data root that does not exist: a valid config ends at the data."""
    code = main(["train", "--data-root", str(tmp_path / "no-data"), "--output", str(tmp_path / "run"), *argv])
    return code, capsys.readouterr().err


# --- numbers as people type them ---------------------------------------------------------------


def parse(*argv: str) -> TrainConfig:
    return resolve_train_config(build_parser().parse_args(["train", "--data-root", "x", *argv]))


@pytest.mark.parametrize(
    "argv, name, value",
    [
        (["--lr", "1e-3"], "lr", 1e-3),
        (["--weight-decay", "5e-4"], "weight_decay", 5e-4),
        (["--ema", "1e-4"], "ema", 1e-4),
        (["--set", "lr=1E-3"], "lr", 1e-3),
        (["--lr", "1e3"], "lr", 1e3),
        (["--set", "momentum=9e-1"], "momentum", 0.9),
        (["--crop-scale", "8e-2", "1.25E0"], "crop_scale", [0.08, 1.25]),
        (["--set", "warmup_epochs=5e0"], "warmup_epochs", 5.0),
        (["--lr", ".5"], "lr", 0.5),
    ],
)
def test_floats_are_read_as_people_write_them(argv, name, value):
    assert getattr(parse(*argv), name) == value


def test_a_preset_and_a_stored_config_take_them_too(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 1e-3\nweight_decay: 5E-4\nema: 1e-4\nlr_decay: 1e-1\n")
    config = make_config(read_yaml(preset), {"data_root": "x"})
    assert (config.lr, config.weight_decay, config.ema, config.lr_decay) == (1e-3, 5e-4, 1e-4, 0.1)
    assert make_config({"data_root": "x", "lr": "1e-3"}).lr == 1e-3  # a config a checkpoint stored as text


def test_a_negative_number_in_e_notation_is_a_number_and_its_range_is_said(capsys, tmp_path):
    line = one_line_error(*train(capsys, tmp_path, "--set", "mixup=-1e-2"), "train")
    assert line.endswith("mixup must be a finite number >= 0, got -0.01")
    # Given to its flag: a value, which the flag judges ("expected one argument" before).
    line = one_line_error(*train(capsys, tmp_path, "--lr", "-1e-3"), "train")
    assert line.endswith("lr must be a finite number > 0, got -0.001")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "lr=.nan"], "lr must be a finite number > 0, got nan"),
        (["--set", "warmup_epochs=.nan"], "warmup_epochs must be a finite number >= 0, got nan"),
        (["--set", "mixup=.nan"], "mixup must be a finite number >= 0, got nan"),
        (["--set", "lr=1.0e+400"], "lr must be a finite number > 0, got inf"),
        (["--set", "momentum=1.5"], r"momentum must be a finite number in \[0, 1\), got 1.5"),
        (["--set", "width=-1"], r"width must be an integer in \[1, 1024\], got -1"),
        (["--set", "inner_channels=-1"], "inner_channels must be an integer >= 1, got -1"),
        (["--set", "lr_steps=-1"], r"lr_steps must be a list of integers >= 1, increasing, got \[-1\]"),
        (["--lr-steps", "70", "50"], r"lr_steps must be a list of integers >= 1, increasing, got \[70, 50\]"),
        (["--set", "seed=-3"], r"seed must be an integer in \[0, 2\*\*63\), got -3"),
        (["--set", "lr=null"], "lr must be a number, got None"),
        (["--set", f"lr={10**400}"], "lr must be a finite number > 0, got 1000"),
    ],
)
def test_values_no_recipe_can_mean_are_refused_before_the_run_folder_exists(argv, message, capsys, tmp_path):
    import re

    line = one_line_error(*train(capsys, tmp_path, *argv), "train")
    assert re.search(message, line), line
    assert not (tmp_path / "run").exists()


def test_a_preset_with_infinity_is_refused_naming_the_key(capsys, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 1.0e+400\n")
    line = one_line_error(*train(capsys, tmp_path, "--config", str(preset)), "train")
    assert line.endswith("lr must be a finite number > 0, got inf")


def test_every_numeric_setting_declares_its_range():
    for name, setting in FIELD_INFO.items():
        numeric = str(setting.type).replace("list[", "").startswith(("int", "float"))
        if numeric and name != "val_split":  # a fraction or 'official': validate checks it by itself
            assert "range" in setting.metadata, name


SETTING_TEXT = st.one_of(
    st.text(max_size=30),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: f"{x:e}"),
    st.floats().map(repr),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.lists(st.integers(-5, 200), max_size=4).map(lambda items: ",".join(map(str, items))),
    st.sampled_from(["1e-3", "5E-4", "-1e-2", ".nan", ".inf", "-.inf", "1.0e+400", "null", "[1, [2]]", "&a [*a]",
                     "{a: 1}", "yes", "0x10", "1_000", "!!python/object:os.system", "'", "[", "\x00"]),
)  # fmt: skip
GENERATED_KEYS = sorted(FIELDS - {"output", "data_root", "resume", "weights"})  # paths: where the test writes/reads


@given(key=st.sampled_from(GENERATED_KEYS), text=SETTING_TEXT)
def test_any_typed_value_of_any_setting_is_valid_or_one_line(key, text, capsys, tmp_path):
    assume("\x00" not in text or key not in ("dataset", "model"))  # argv cannot hold NUL; --set can
    try:
        config = parse("--set", f"{key}={text}")
    except UserError as error:
        assert len(str(error)) <= ONE_LINE and "\n" not in str(error), str(error)
    else:
        config.validate()  # accepted: every value in its range
        for name in FIELDS:
            assert out_of_range(FIELD_INFO[name], getattr(config, name)) is None
    code, err = train(capsys, tmp_path, "--set", f"{key}={text}")
    one_line_error(code, err, "train")  # the data root does not exist: a valid config stops there
    assert not (tmp_path / "run").exists()


DEMO_FLAGS = ["--dataset", "--classes", "--train-per-class", "--test-per-class", "--weights", "--root", "--mirror"]


@given(flag=st.sampled_from(DEMO_FLAGS), text=SETTING_TEXT)
def test_any_value_of_a_demo_flag_is_valid_or_one_line(flag, text, capsys, tmp_path):
    """cnl demo --dataset's flags, typed anyhow: argparse's mistakes are one line too, and a value
    that parses ends at the data root that does not exist, before any download or training."""
    assume("\x00" not in text and not (flag == "--dataset" and text == "synth"))  # synth: the synthetic demo
    argv = ["demo", "--dataset", "folder", "--data-root", str(tmp_path / "no-data"), "--output", str(tmp_path / "run")]
    try:
        code = main([*argv, f"{flag}={text}"])
    except SystemExit as refused:
        code = int(refused.code or 0)
    one_line_error(code, capsys.readouterr().err, "demo")
    assert not (tmp_path / "run").exists()


@given(flag=st.sampled_from(["--seeds", "--models"]), text=SETTING_TEXT)
@example(flag="--seeds", text="0 1")  # one word: spaces part the words a shell gives, not a word
@example(flag="--models", text="resnet18 resnet18")
def test_any_list_of_seeds_or_models_of_an_ablation_is_runs_or_one_line(flag, text, capsys, tmp_path):
    """cnl ablate's lists: nothing, a seed that is no whole number or out of range, and a run
    named twice (which would be trained once and counted twice) are one line each; a list
    that names runs ends at an unknown model or at the data root that does not exist."""
    assume("\x00" not in text)
    argv = ["ablate", "--data-root", str(tmp_path / "no-data"), "--output", str(tmp_path / "run")]
    try:
        code = main([*argv, *(["--models", "resnet18"] if flag == "--seeds" else []), f"{flag}={text}"])
    except SystemExit as refused:
        code = int(refused.code or 0)
    line = one_line_error(code, capsys.readouterr().err, "ablate")
    items = [item for item in text.split(",") if item]
    if flag == "--seeds":  # a seed is a whole number as Python reads one (1_000, +1), in [0, 2**63)
        seeds = [whole_number(item) for item in items]
        runs = None not in seeds and len(set(seeds)) == len(seeds) > 0 and 0 <= min(seeds) <= max(seeds) < 2**63
        assert ("dataset root" in line) == runs, line
    else:  # names that are runs end at the first unknown model, or at the data root
        assert ("--models names" in line) == (len(set(items)) != len(items) or not items), line
    assert not (tmp_path / "run").exists()


# The list flags of the other commands: (argv before the flag, flag). The data root of
# `data check` is missing, so that a list of real split names ends there.
NAME_LISTS = [
    (["profile"], "--models"), (["profile", "--placements"], "--models"),
    (["profile", "--receptive-fields"], "--models"), (["bench", "model", "--img-size", "32"], "--models"),
    (["bench", "predict"], "--model"), (["data", "check", "--root", "no-data"], "--splits"),
]  # fmt: skip


@given(case=st.sampled_from(NAME_LISTS), text=SETTING_TEXT | st.sampled_from(["", ",", " , ,", "a,a", "train,train"]))
@example(case=(["bench", "predict"], "--model"), text="a,b")  # the second name was dropped without a word
def test_any_list_of_names_is_each_name_once_or_one_line(case, text, capsys):
    """``cnl profile --models ,`` and ``bench model --models ''`` stopped in an IndexError, and
    ``data check --splits ,`` checked nothing and said all was well: a list that names nothing
    or a name twice is one line, like ablate's; names that are no model end there.
    ``bench predict --model a,b`` benched ``a`` and dropped ``b``: a flag of one name takes one."""
    from cnl.models import list_models

    argv, flag = case
    items = [item for item in text.split(",") if item]
    assume("\x00" not in text and not set(items) & set(list_models()) and not any(":" in item for item in items))
    try:
        code = main([*argv, f"{flag}={text}"])
    except SystemExit as refused:
        code = int(refused.code or 0)
    line = one_line_error(code, capsys.readouterr().err, argv[0])
    if not items:
        assert f"{flag} names nothing" in line, line
    elif flag == "--model" and len(items) > 1:  # a flag of one name
        assert f"--model takes one model name, got {len(items)}" in line, line
    elif len(set(items)) < len(items):
        assert f"{flag} names " in line and "more than once" in line, line
    else:
        assert ("unknown model" if flag != "--splits" else "no-data") in line, line


@given(name=st.text(max_size=30) | st.sampled_from(["", ".", "..", "../..", ".x", "a..b", "a.", "1a", "a-b", "x.py"]))
def test_any_module_name_to_import_is_imported_or_one_line(name, tmp_path, capsys):
    """``--import ''`` and ``--import ../..`` ended in importlib's ValueError and TypeError
    (it reads them as relative imports): a name that is no module is one line."""
    import importlib.util

    top = name.split(".")[0]
    assume("\x00" not in name and not (top.isidentifier() and importlib.util.find_spec(top)))  # nothing runs
    try:
        code = main(["eval", "--checkpoint", str(tmp_path / "missing.pt"), f"--import={name}"])
    except SystemExit as refused:
        code = int(refused.code or 0)
    line = one_line_error(code, capsys.readouterr().err, "eval")
    assert "--import" in line, line


def whole_number(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0,00"], "--seeds names seed 0 more than once"),
        (["--seeds", "0", "0"], "--seeds names seed 0 more than once"),  # the same words, however written
        (["--seeds", "a,a"], "--seeds takes whole numbers such as 0,1,2, got 'a'"),
        (["--seeds", "a"], "--seeds takes whole numbers such as 0,1,2, got 'a'"),
        (["--seeds", ",,"], "--seeds names nothing"),
        (["--models", "resnet18,resnet18"], "--models names 'resnet18' more than once"),
    ],
)
def test_an_ablation_names_each_run_once(argv, message, capsys, tmp_path):
    argv = ["--models", "resnet18", *argv]
    code = main(["ablate", "--data-root", str(tmp_path / "no-data"), "--output", str(tmp_path / "run"), *argv])
    assert message in one_line_error(code, capsys.readouterr().err, "ablate")


# Whole-number flags of the commands that are not settings: (argv before the flag, flag, lowest, highest).
COUNT_FLAGS = [
    (["profile"], "--img-size", 32, 4096), (["profile"], "--num-classes", 1, None),
    (["eval", "--checkpoint", "x"], "--batch-size", 1, None), (["eval", "--checkpoint", "x"], "--workers", 0, None),
    (["predict", "--checkpoint", "x", "a.jpg"], "--topk", 1, None),
    (["predict", "--checkpoint", "x", "a.jpg"], "--batch-size", 1, None),
    (["bench", "model"], "--img-size", 32, 4096), (["bench", "model"], "--batch-size", 1, None),
    (["bench", "model"], "--width", 1, 1024),
    (["bench", "module"], "--repeats", 1, None), (["bench", "predict"], "--workers", 0, None),
    (["attention", "--checkpoint", "x"], "--count", 1, None),
    (["attention", "--checkpoint", "x"], "--img-size", 32, 4096),
    (["report", "r"], "--images", 0, None),
    (["ablate", "--models", "resnet18"], "--jobs", 1, os.cpu_count()),
    (["data", "synth", "--out", "x"], "--seed", 0, None),
]  # fmt: skip


@given(flag=st.sampled_from(COUNT_FLAGS), text=SETTING_TEXT | st.integers(-10, 10**6).map(str))
def test_any_value_of_a_count_flag_parses_in_its_range_or_is_one_line(flag, text, capsys):
    """``profile --img-size 0`` stopped in a convolution, ``bench --repeats -1`` in statistics,
    ``bench --batch-size 0`` dividing by zero: each such flag takes its range or says so."""
    argv, name, low, high = flag
    try:
        args = build_parser().parse_args([*argv, f"{name}={text}"])
    except SystemExit as exit:
        one_line_error(
            exit.code, capsys.readouterr().err, " ".join(argv[:2]) if argv[0] in ("bench", "data") else argv[0]
        )
    else:
        value = getattr(args, name[2:].replace("-", "_"))
        assert isinstance(value, int) and value >= low and (high is None or value <= high)


# Commands and the flag that names a file or folder: (argv before the path, argv after it).
PATH_ARGUMENTS = [
    (["eval", "--checkpoint"], []), (["predict", "--checkpoint"], ["a.jpg"]), (["report"], []),
    (["attention", "--checkpoint"], []), (["export", "--checkpoint"], []), (["data", "check", "--root"], []),
    (["train", "--epochs", "1", "--warmup-epochs", "0", "--set", "lr_steps=[]", "--data-root"], []),
]  # fmt: skip


@given(case=st.sampled_from(PATH_ARGUMENTS), name=st.text(st.characters(blacklist_characters="/"), min_size=1))
def test_any_name_of_a_missing_file_is_one_line(case, name, tmp_path, capsys):
    """``cnl eval --checkpoint $'x\\ny'`` printed its error on two lines: a name holding a line
    break or a control character is quoted escaped, whatever command and flag it came by."""
    before, after = case
    path = str(tmp_path / "missing" / name)
    try:
        code = main(
            [*before, path, *after, "--output", str(tmp_path / "out")]
            if before[0] == "train"
            else [*before, path, *after]
        )
    except SystemExit as refused:
        code = int(refused.code or 0)
    one_line_error(code, capsys.readouterr().err, before[0])


def path_flags(parser, argv=()):
    """(the subcommand's argv, flag) of every flag of ``parser`` and its subcommands that names a file or folder."""
    from cnl.cli import path

    for action in parser._actions:
        if action.type is path and action.option_strings:
            yield list(argv), action.option_strings[0]
        for name, sub in (action.choices or {}).items() if isinstance(action, argparse._SubParsersAction) else ():
            yield from path_flags(sub, (*argv, name))


def test_an_empty_file_or_folder_name_is_one_line(tmp_path, capsys, monkeypatch):
    """``--out "$OUT"`` with OUT unset wrote the synthetic benchmark (and a run, a report, a
    demo) into the current folder: every flag that names a file or folder, and the output
    setting, refuse '' in one line before anything is written."""
    monkeypatch.chdir(tmp_path)
    flags = list(path_flags(build_parser()))
    assert {"--out", "--output", "--checkpoint", "--root", "--report", "--html"} <= {flag for _, flag in flags}
    for argv, flag in flags:
        with pytest.raises(SystemExit) as refused:
            main([*argv, flag, ""])
        code = refused.value.code
        line = one_line_error(code, capsys.readouterr().err, " ".join(argv))
        assert line.endswith(f"argument {flag}: must name a file or folder, got ''"), line
    for command in ("train", "ablate --models resnet18"):
        line = one_line_error(
            main([*command.split(), "--data-root", "d", "--output", ""]), capsys.readouterr().err, command.split()[0]
        )
        assert line.endswith("output must name the run's folder, got ''"), line
    assert not list(tmp_path.iterdir())


# A file a command writes, named wrongly: (argv before the name, the name, the line's end).
FILE_OUTPUTS = [
    (["attention", "--checkpoint", "gone.pt", "a.jpg", "--out"], "a.bmpx",
     "--out a.bmpx: expected a .png or .pdf or .svg or .jpg or .jpeg file"),
    (["attention", "--checkpoint", "gone.pt", "a.jpg", "--out"], "figures",
     "--out figures is a folder: expected the name of a .png or .pdf or .svg or .jpg or .jpeg file"),
    (["attention", "--checkpoint", "gone.pt", "a.jpg", "--html"], "page.png",
     "--html page.png: expected a .html or .htm file"),
    (["export", "--checkpoint", "gone.pt", "--format", "onnx", "--out"], "figures",
     "--out figures is a folder: expected the name of a new file"),
    (["predict", "--checkpoint", "gone.pt", "a.jpg", "--out"], "figures",
     "--out figures is a folder: expected the name of a .csv or .jsonl file"),
    (["data", "synth", "--out", "s", "--contact-sheet"], "s.sheet",
     "--contact-sheet s.sheet: expected a .png or .jpg or .jpeg file"),
]  # fmt: skip


@pytest.mark.parametrize("argv, name, end", FILE_OUTPUTS)
def test_a_file_to_write_is_checked_before_any_work(argv, name, end, tmp_path, capsys, monkeypatch):
    """``cnl attention --out a.bmpx`` drew the figure and ended in matplotlib's traceback, ``--out
    DIR`` wrote DIR.png and said it wrote DIR, ``--contact-sheet x.sheet`` wrote every image
    first: a file's name is checked before the checkpoint is read (here it does not exist) or
    anything is written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figures").mkdir()
    line = one_line_error(main([*argv, name]), capsys.readouterr().err, argv[0])
    assert line.endswith(end), line
    assert [path.name for path in tmp_path.iterdir()] == ["figures"] and not any((tmp_path / "figures").iterdir())


def test_jobs_under_torchrun_is_one_line(monkeypatch, tmp_path, capsys):
    """Under torchrun every run takes every process: runs side by side as well would be
    asked twice, so ``--jobs`` is refused before anything trains."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["ablate", "--models", "resnet18", "--jobs", "2", "--output", str(tmp_path / "a")]
    line = one_line_error(main(argv), capsys.readouterr().err, "ablate")
    assert line.endswith("--jobs trains runs side by side in one launch; under torchrun each run takes every process")
    assert not (tmp_path / "a").exists()


def test_the_image_sizes_flags_take_are_the_img_size_settings():
    from cnl.cli import IMG_SIZES

    taken = FIELD_INFO["img_size"].metadata["range"]
    assert (taken.low, taken.high) == IMG_SIZES


def test_sizes_in_range_that_the_machine_cannot_hold_are_one_line(capsys, monkeypatch):
    """A batch of 10^9 images of 4096 px (134 PB: no machine's address space holds it) is
    refused by torch's CPU allocator; a GPU's refusal is torch.OutOfMemoryError. Both are
    one line naming the fix, not a traceback."""
    from cnl.analysis import bench

    argv = ["bench", "module", "--img-size", "4096", "--batch-size", "1000000000", "--device", "cpu"]
    line = one_line_error(main(argv), capsys.readouterr().err, "bench")
    assert "out of memory (DefaultCPUAllocator: can't allocate memory: you tried to allocate " in line
    assert line.endswith("): try a smaller --batch-size or --img-size")

    def refused(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity")

    monkeypatch.setattr(bench, "bench_module", refused)
    line = one_line_error(main(argv), capsys.readouterr().err, "bench")
    assert line.startswith("cnl bench: error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB.")

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(bench, "bench_module", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError stays a bug, with its traceback
        main(argv)


@given(folder=st.text(min_size=1, max_size=120).map(lambda name: "/" + name))
def test_any_temporary_folder_gives_loader_workers_or_one_line(folder):
    """TMPDIR as anyone may set it: loader workers are allowed, or refused in one line that
    names the folder escaped (a line break in it does not break the line)."""
    import tempfile

    from cnl.engine.loaders import SOCKET_NAME, SOCKET_PATH_MAX, usable_workers
    from cnl.errors import cut, report

    saved, tempfile.tempdir = tempfile.tempdir, folder
    try:
        assert usable_workers(1) == 1
        assert len(os.fsencode(folder)) <= SOCKET_PATH_MAX - SOCKET_NAME
    except UserError as error:
        err = io.StringIO()
        with redirect_stderr(err):
            code = report("cnl train", error)
        line = one_line_error(code, err.getvalue(), "train")
        assert line.startswith(f"cnl train: error: the temporary folder {cut(folder)} is a path of ")
    finally:
        tempfile.tempdir = saved


# --- presets: files from elsewhere are data ------------------------------------------------------


def test_base_takes_a_relative_settings_file_and_refuses_the_rest(tmp_path, capsys):
    (tmp_path / "presets").mkdir()
    (tmp_path / "recipe.yaml").write_text("lr: 0.5\n")
    (tmp_path / "presets" / "mine.yaml").write_text("base: ../recipe.yaml\nepochs: 3\n")
    assert make_config(read_yaml(tmp_path / "presets" / "mine.yaml"), {"data_root": "x"}).lr == 0.5
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$SECRETHASH:20228:0:99999:7:::\n_apt:*:20228:0:99999:7:::\n")
    for base, said in [
        (str(secret), "is not a relative path"),
        ("../../../../../../../../etc/shadow", "is not a .yaml or .yml file"),
        ("../shadow", "is not a .yaml or .yml file"),
        ("~/x.yaml", "is not a relative path"),
        ("[1, 2]", "base must be the relative path of another settings file"),
    ]:
        preset = tmp_path / "presets" / "p.yaml"
        preset.write_text(yaml.safe_dump({"base": yaml.safe_load(base) if base.startswith("[") else base}))
        line = one_line_error(*train(capsys, tmp_path, "--config", str(preset)), "train")
        assert said in line and "SECRET" not in line and "_apt" not in line, line


def test_a_file_that_is_not_settings_is_named_and_not_quoted(tmp_path, capsys):
    secret = tmp_path / "leak.yaml"
    secret.write_text("".join(f"user{k}:SECRET{k}:20228:0:99999:7:::\n" for k in range(5)))
    line = one_line_error(*train(capsys, tmp_path, "--config", str(secret)), "train")
    assert "is not a settings file" in line and "SECRET" not in line and "user" not in line
    (tmp_path / "mapping.yaml").write_text("".join(f"user{k}: SECRET{k}\n" for k in range(5)))
    line = one_line_error(*train(capsys, tmp_path, "--config", str(tmp_path / "mapping.yaml")), "train")
    assert "none of its 5 keys is a setting" in line and "SECRET" not in line
    (tmp_path / "typo.yaml").write_text("epoch: 3\nlearning_rate: 0.1\n")
    line = one_line_error(*train(capsys, tmp_path, "--config", str(tmp_path / "typo.yaml")), "train")
    assert line.endswith("unknown settings 'epoch', 'learning_rate'; did you mean epochs, lr?")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe lr: 1\n")
    assert "not UTF-8 text" in one_line_error(
        *train(capsys, tmp_path, "--config", str(tmp_path / "binary.yaml")), "train"
    )
    long = "x" * 5000
    (tmp_path / "long.yaml").write_text(f"lr: {long}\n")
    line = one_line_error(*train(capsys, tmp_path, "--config", str(tmp_path / "long.yaml")), "train")
    assert "lr must be a number, got 'xxx" in line


def test_yaml_aliases_are_refused_before_they_expand(tmp_path, capsys):
    levels = ["&a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"&a{k} [{', '.join([f'*a{k - 1}'] * 10)}]" for k in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text(f"lr: [{', '.join(levels)}]\n")  # 10^9 items if expanded
    assert (tmp_path / "bomb.yaml").stat().st_size < 600
    started = time.monotonic()
    line = one_line_error(*train(capsys, tmp_path, "--config", str(tmp_path / "bomb.yaml")), "train")
    assert "anchors and aliases (&, *) are not accepted" in line and time.monotonic() - started < 5
    (tmp_path / "deep.yaml").write_text("lr: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested more than" in one_line_error(
        *train(capsys, tmp_path, "--config", str(tmp_path / "deep.yaml")), "train"
    )
    started = time.monotonic()
    line = one_line_error(*train(capsys, tmp_path, "--set", "lr=&a [*a]"), "train")
    assert "lr must be a number, got '&a [*a]'" in line and time.monotonic() - started < 5


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
YAML_DOCUMENTS = st.one_of(
    st.dictionaries(st.sampled_from(sorted(FIELDS | {"base", "bogus", "lr-steps"})), YAML_VALUES, max_size=5).map(
        lambda mapping: yaml.safe_dump(mapping)
    ),
    YAML_VALUES.map(lambda value: yaml.safe_dump(value)),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda data: data.decode("latin-1")),
)


@given(document=YAML_DOCUMENTS)
def test_any_yaml_document_as_a_preset_is_valid_or_one_line(document, tmp_path, capsys):
    preset = tmp_path / "preset.yaml"
    preset.write_text(document, encoding="utf-8", errors="surrogateescape")
    try:
        make_config(read_yaml(preset), {"data_root": "x", "output": str(tmp_path / "run")})
    except UserError as error:
        assert len(str(error)) <= ONE_LINE and "\n" not in str(error), str(error)
    code, err = train(capsys, tmp_path, "--config", str(preset))
    one_line_error(code, err, "train")
    assert not (tmp_path / "run").exists()


# --- Hub folders: checked field by field -----------------------------------------------------


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """A Hub folder as ``cnl export --format hf`` writes it, of a tiny resnet18_cnl5."""
    from cnl.export import save_weights

    folder = tmp_path_factory.mktemp("hub")
    model = cnl.create_model("resnet18_cnl5", num_classes=3, width=4)
    info = ModelInfo(model="resnet18_cnl5", classes=["a", "b", "c"], img_size=32, overrides={"width": 4})
    (folder / CONFIG).write_text(json.dumps(hub_config(info, "fc", None), indent=2))
    save_weights(model, folder / WEIGHTS)
    return folder


def copy_of(folder: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, WEIGHTS):
        (into / name).write_bytes((folder / name).read_bytes())
    return into


def damaged_config(folder: Path, change) -> None:
    config = json.loads((folder / CONFIG).read_text())
    change(config)
    (folder / CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda f: (f / CONFIG).write_text("{not json"), "config.json is damaged: not JSON"),
        (lambda f: damaged_config(f, lambda c: c.pop("label_names")), "label_names must be a non-empty list"),
        (lambda f: damaged_config(f, lambda c: c.update(label_names=42)), "label_names must be a non-empty list"),
        (lambda f: damaged_config(f, lambda c: c.update(label_names=["a", 2, "c"])), "must hold class names"),
        (lambda f: damaged_config(f, lambda c: c.update(num_classes=5)), "num_classes is 5 but label_names names 3"),
        (lambda f: damaged_config(f, lambda c: c["cnl"].update(img_size=-1)), r"img_size must be an integer in \[32"),
        (lambda f: damaged_config(f, lambda c: c["cnl"].update(overrides={"width": "x"})), "width must be"),
        (lambda f: damaged_config(f, lambda c: c["cnl"].update(overrides={"eval": 1})), "overrides may name"),
        (lambda f: damaged_config(f, lambda c: c["pretrained_cfg"].update(std=[0, 1, 1])), "std must be three"),
        (lambda f: damaged_config(f, lambda c: c["pretrained_cfg"].update(input_size=[3, 9, 9])), "input_size is"),
        (
            lambda f: damaged_config(f, lambda c: c.update(label_names=["a", "b"], num_classes=2)),
            "the head fc has 3 rows",
        ),
        (lambda f: (f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:500]), "not a readable safetensors file"),
        (lambda f: (f / WEIGHTS).write_bytes(b""), "not a readable safetensors file"),
        (lambda f: torch.save({"x": torch.ones(1)}, f / WEIGHTS), "not a readable safetensors file"),
    ],
)
def test_a_damaged_hub_folder_is_one_line_naming_the_file_and_field(damage, said, hub_folder, tmp_path, capsys):
    import re

    folder = copy_of(hub_folder, tmp_path / "model")
    assert cnl.load_model(folder)[1] == ["a", "b", "c"]
    damage(folder)
    with pytest.raises(UserError, match=said):
        cnl.load_model(folder)
    code = main(["predict", "--checkpoint", str(folder), str(tmp_path / "nothing.jpg"), "--device", "cpu"])
    line = one_line_error(code, capsys.readouterr().err, "predict")
    assert re.search(said, line) and str(folder) in line


def test_timm_reads_a_damaged_hub_folder_into_the_same_error(hub_folder, tmp_path):
    import timm

    folder = copy_of(hub_folder, tmp_path / "model")
    damaged_config(folder, lambda c: c["cnl"].update(img_size=-1))
    with pytest.raises(UserError, match=r"img_size must be an integer in \[32"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    folder = copy_of(hub_folder, tmp_path / "other")
    (folder / WEIGHTS).write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
CONFIG_PATHS = [
    ("architecture",), ("num_classes",), ("label_names",), ("model_args",), ("pretrained_cfg",),
    ("pretrained_cfg", "input_size"), ("pretrained_cfg", "mean"), ("pretrained_cfg", "std"),
    ("pretrained_cfg", "classifier"), ("cnl",), ("cnl", "model"), ("cnl", "img_size"), ("cnl", "overrides"),
    ("cnl", "overrides", "width"), ("cnl", "config"),
]  # fmt: skip


def put(document: dict, path: tuple, value) -> None:
    """Set the entry at ``path`` of a nested mapping to ``value``, or remove it ("<delete>")."""
    holder = document
    for key in path[:-1]:
        holder = holder[key]
    if value == "<delete>":
        holder.pop(path[-1], None)
    else:
        holder[path[-1]] = value


@given(path=st.sampled_from(CONFIG_PATHS), value=JSON_VALUES | st.just("<delete>"), cut=st.integers(0, 3000))
def test_any_config_json_is_a_model_or_one_line(path, value, cut, hub_folder, tmp_path):
    folder = copy_of(hub_folder, tmp_path / "model")
    config = json.loads((folder / CONFIG).read_text())
    put(config, path, value)
    (folder / CONFIG).write_text(json.dumps(config))
    if cut % 3 == 0:  # and, a third of the time, weights cut short
        (folder / WEIGHTS).write_bytes((folder / WEIGHTS).read_bytes()[:cut])
    try:
        model, classes = cnl.load_model(folder)
    except UserError as error:
        assert len(str(error)) <= ONE_LINE + len(str(folder)) and "\n" not in str(error), str(error)
    else:
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, len(classes))


# --- training checkpoints: a colleague's, a damaged copy, a crafted one ------------------------


@pytest.fixture(scope="module")
def one_epoch_run(synth, tmp_path_factory):
    """A finished one-epoch run of a tiny resnet18_cnl5 (12 images of 32 px)."""
    from cnl.data.synth import SynthConfig

    data = synth(SynthConfig(classes=3, train_per_class=4, test_per_class=2, image_size=32))
    output = tmp_path_factory.mktemp("checkpoint") / "run"
    with redirect_stdout(io.StringIO()):  # width 4: each example of the tests below may train an epoch
        assert main(tiny_run_args(data, output, "resnet18_cnl5", "--set", "width=4", "--warmup-epochs", "0")) == 0
    return output


ENTRY_PATHS = [
    ("model_name",), ("model",), ("model", "fc.weight"), ("config",), ("config", "img_size"), ("config", "width"),
    ("config", "responses"), ("config", "mixup"), ("classes",), ("epoch",), ("step",), ("best",), ("best", "top1"),
    ("best", "epoch"), ("final",), ("metrics",), ("rates",), ("kept",), ("optimizer",), ("optimizer", "state"),
    ("optimizer", "param_groups"), ("scheduler",), ("scheduler", "last_epoch"), ("scheduler", "base_lrs"),
    ("scheduler", "optimizer"), ("scaler",), ("scaler", "scale"), ("provenance",), ("provenance", "global_batch_size"),
]  # fmt: skip
TENSORS = st.builds(torch.zeros, st.lists(st.integers(0, 3), max_size=2).map(tuple))


@given(
    path=st.sampled_from(ENTRY_PATHS),
    value=JSON_VALUES
    | TENSORS
    | st.dictionaries(st.integers(0, 90), st.dictionaries(st.text(max_size=3), TENSORS))
    | st.just("<delete>"),
    resealed=st.booleans(),
)
def test_any_checkpoint_entry_loads_and_resumes_or_is_one_line(path, value, resealed, one_epoch_run, tmp_path_factory):
    """A checkpoint whose entry holds anything: ``cnl predict`` and ``--resume`` load it, or say
    in one line what does not fit, before any training (never a traceback, then or at a step).
    ``resealed``: its checksum made again, as a crafted file would carry."""
    from cnl.engine.checkpoint import content_digest

    run = tmp_path_factory.mktemp("resume") / "run"
    shutil.copytree(one_epoch_run, run)
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    put(state, path, value)
    if resealed:
        state.pop("checksum")
        state["checksum"] = content_digest(state)
    torch.save(state, last)
    (run / "checkpoints" / "last-prev.pt").unlink(missing_ok=True)
    try:
        model, classes = cnl.load_model(last)
    except UserError as error:
        assert "\n" not in str(error) and len(str(error)) <= ONE_LINE + len(str(last)), str(error)
    else:
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, len(classes))
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(["train", "--resume", "--output", str(run), "--epochs", "2"])
    said = [line for line in err.getvalue().splitlines() if not line.startswith("cnl train: warning: ")]
    if code == 0:
        assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    else:
        assert code == 2 and len(said) == 1 and "Traceback" not in err.getvalue(), err.getvalue()[-3000:]
        assert said[0].startswith("cnl train: error: ") and len(said[0]) <= ONE_LINE + len(str(last)), said[0]


@given(
    content=st.binary(max_size=300)
    | st.sampled_from([b"hello\n", b"PK\x03\x04", pickle.dumps({"model": {}}), pickle.dumps([1, 2])]),
    cut_at=st.integers(0, 4000),
)
def test_any_bytes_as_a_checkpoint_are_one_line(content, cut_at, one_epoch_run, tmp_path, capsys):
    """A file that is no checkpoint (a text file began the unpickler on a memo lookup: KeyError
    traceback), random bytes, a pickle, a real checkpoint cut short: one line, exit 2, for
    ``--checkpoint`` as for ``--resume``."""
    path = tmp_path / "given.pt"
    path.write_bytes(content + (one_epoch_run / "checkpoints" / "last.pt").read_bytes()[:cut_at] * (not content))
    one_line_error(main(["eval", "--checkpoint", str(path)]), capsys.readouterr().err, "eval")


def test_an_integer_where_a_float_setting_is_trains(one_epoch_run, tmp_path):
    """``mixup: 1`` in a preset, ``--set cutmix=1``: as 1.0 (torch's Beta distribution refuses
    an integer tensor; it stopped the first step with a traceback)."""
    config = yaml.safe_load((one_epoch_run / "config.yaml").read_text())
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({**config, "mixup": 1, "epochs": 1}))
    with redirect_stdout(io.StringIO()):
        assert main(["train", "--config", str(preset), "--set", "cutmix=1", "--output", str(tmp_path / "run")]) == 0
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (written["mixup"], written["cutmix"]) == (1.0, 1.0) and isinstance(written["mixup"], float)


# --- images and lists to predict ---------------------------------------------------------------


@given(
    images=st.lists(st.binary(max_size=400) | st.sampled_from(["photo", "photo cut"]), min_size=1, max_size=3),
    listed=st.none() | st.binary(max_size=80) | st.lists(st.text(max_size=12), max_size=4).map("\n".join),
    as_json=st.booleans(),
)
def test_any_images_and_lists_predict_each_or_are_one_line(images, listed, as_json, one_epoch_run, tmp_path_factory):
    """Files of any bytes named as images, a list file of any bytes or lines: ``cnl predict``
    answers every image (its classes, or why it cannot be read), or says in one line why the
    inputs cannot be read at all."""
    folder = tmp_path_factory.mktemp("predict")
    photo = next((Path(yaml.safe_load((one_epoch_run / "config.yaml").read_text())["data_root"])).rglob("*.jpg"))
    inputs = []
    for k, content in enumerate(images):
        path = folder / f"image {k}.jpg"
        if isinstance(content, str):
            whole = photo.read_bytes()
            content = whole if content == "photo" else whole[: len(whole) // 2]
        path.write_bytes(content)
        inputs.append(str(path))
    if listed is not None:
        (folder / "list.txt").write_bytes(listed if isinstance(listed, bytes) else listed.encode())
        inputs.append(str(folder / "list.txt"))
    out, err = io.StringIO(), io.StringIO()
    argv = ["predict", "--checkpoint", str(one_epoch_run / "checkpoints" / "best.pt"), *inputs, "--device", "cpu"]
    with redirect_stdout(out), redirect_stderr(err):
        code = main([*argv, *(["--json"] if as_json else [])])
    if code == 2:
        one_line_error(code, err.getvalue(), "predict")
        return
    assert code == 0, err.getvalue()[-3000:]
    answers = json.loads(out.getvalue()) if as_json else out.getvalue().splitlines()
    assert len(answers) >= len(images)  # every image given, then each the list names
    if not as_json:  # a line an image, whatever the list names
        assert not breaking(out.getvalue().replace("\n", "")) and len(answers) == out.getvalue().count("\n")


def test_inputs_without_an_image_are_one_line(one_epoch_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.md").write_text("no image here")
    best = str(one_epoch_run / "checkpoints" / "best.pt")
    for inputs in ([str(tmp_path / "empty")], [str(tmp_path / "*.md")]):
        line = one_line_error(main(["predict", "--checkpoint", best, *inputs]), capsys.readouterr().err, "predict")
        assert "no image files in" in line and inputs[0] in line


# --- weights files (--weights FILE): the user's own, a download, another framework's ------------


@pytest.fixture(scope="module")
def plain_weights():
    """A tiny plain resnet18's state dict: what the weights of a ResNet-18 backbone hold."""
    return cnl.create_model("resnet18", num_classes=3, width=4).state_dict()


def test_weights_saved_from_distributed_data_parallel_load_as_they_are(plain_weights, tmp_path):
    """Every key under ``module.`` (a model saved while wrapped): as timm reads them."""
    torch.save({"state_dict": {f"module.{k}": v for k, v in plain_weights.items()}}, tmp_path / "ddp.pth")
    model = cnl.create_model("resnet18_cnl5", num_classes=3, width=4, weights=tmp_path / "ddp.pth")
    torch.testing.assert_close(model.conv1.weight, plain_weights["conv1.weight"])


@given(
    keep=st.integers(0, 200),
    extra=st.dictionaries(st.text(max_size=12) | st.integers(), TENSORS | JSON_VALUES, max_size=3),
    wrap=st.sampled_from([None, "model", "state_dict", "module."]),
    suffix=st.sampled_from([".pth", ".safetensors"]),
    cut=st.none() | st.integers(0, 5000),
)
def test_any_weights_file_loads_or_is_one_line(keep, extra, wrap, suffix, cut, plain_weights, tmp_path_factory):
    """Part of a ResNet's weights, entries of any name and value, wrapped as checkpoints wrap
    them, in either format, cut short: the model is built with them, or one line says why."""
    from safetensors.torch import save_file

    state = {**dict(list(plain_weights.items())[:keep]), **extra}
    if wrap == "module.":
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path_factory.mktemp("weights") / f"weights{suffix}"
    if suffix == ".safetensors":
        assume(all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()))
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({wrap: state} if wrap in ("model", "state_dict") else state, path)
    if cut is not None:
        path.write_bytes(path.read_bytes()[:cut])
    try:
        model = cnl.create_model("resnet18_cnl5", num_classes=3, width=4, weights=path).eval()
    except UserError as error:
        assert "\n" not in str(error) and len(str(error)) <= ONE_LINE + len(str(path)), str(error)
    else:
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


# --- prediction tables --------------------------------------------------------------------------


def predictions_text(correct: list[bool], labels: list[int] | None = None) -> list[list[str]]:
    rows = []
    for index, right in enumerate(correct):
        label = (labels or [index % 3] * len(correct))[index]
        predicted = label if right else (label + 1) % 3
        rows.append(["test", str(index), f"img{index}.jpg", str(label), f"c{label}", str(predicted), f"c{predicted}",
                     str(int(right)), f"{predicted} {label}", "0.5"])  # fmt: skip
    return rows


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return path


def test_damaged_predictions_are_named_by_file_and_line(tmp_path):
    from cnl.analysis.ablation import paired_answers

    rows = predictions_text([True, False, True, False, True, True])
    first = write_rows(tmp_path / "first.csv", rows)
    all_right = [row[:7] + ["1"] + row[8:] for row in rows]
    with pytest.raises(UserError, match=r"all_right.csv, line 3: correct is 1 but label 1 and predicted 2"):
        read_correct(write_rows(tmp_path / "all_right.csv", all_right))
    with pytest.raises(UserError, match=r"twice.csv, line 8: image 'img0.jpg' \(0\) again"):
        read_correct(write_rows(tmp_path / "twice.csv", rows + rows))
    with pytest.raises(UserError, match="yes.csv, line 2: correct must be 0 or 1, got 'yes'"):
        read_correct(write_rows(tmp_path / "yes.csv", [rows[0][:7] + ["yes"] + rows[0][8:]]))
    (tmp_path / "latin.csv").write_bytes(first.read_bytes().replace(b"img1", b"im\xe91"))
    with pytest.raises(UserError, match="latin.csv is damaged: not UTF-8 text"):
        read_correct(tmp_path / "latin.csv")
    shuffled = write_rows(tmp_path / "shuffled.csv", rows[::-1])  # another order: the same images
    a, b = paired_answers((first, read_correct(first)), (shuffled, read_correct(shuffled)))
    assert a.tolist() == b.tolist() == [True, False, True, False, True, True]


@given(
    correct=st.lists(st.booleans(), min_size=1, max_size=12),
    edit=st.sampled_from(["none", "shuffle", "duplicate", "flip", "junk", "drop", "cut", "bytes"]),
    position=st.integers(0, 11),
    junk=st.text(max_size=8),
)
def test_any_prediction_table_pairs_truthfully_or_is_refused(correct, edit, position, junk, tmp_path):
    from cnl.analysis.ablation import paired_answers

    rows = predictions_text(correct)
    first = write_rows(tmp_path / "first.csv", rows)
    k = position % len(rows)
    edited = [list(row) for row in rows]
    if edit == "shuffle":
        edited = edited[k:] + edited[:k]
    elif edit == "duplicate":
        edited.append(edited[k])
    elif edit == "flip":
        edited[k][7] = "0" if edited[k][7] == "1" else "1"
    elif edit == "junk":
        edited[k][position % 10] = junk
    elif edit == "drop":
        edited.pop(k)
    path = write_rows(tmp_path / "other.csv", edited)
    if edit == "cut":
        path.write_bytes(path.read_bytes()[: 40 + 7 * position])
    elif edit == "bytes":
        path.write_bytes(path.read_bytes() + junk.encode("utf-16"))
    try:
        a, b = paired_answers((first, read_correct(first)), (path, read_correct(path)))
    except UserError as error:
        assert len(str(error)) <= ONE_LINE + 2 * len(str(tmp_path)) and "\n" not in str(error), str(error)
    else:  # whatever was accepted tells the truth: the other run's answers are the first's
        assert a.tolist() == b.tolist() == correct


# --- outputs safe to open -----------------------------------------------------------------------

HOSTILE_NAMES = ['=HYPERLINK("http://x","y")', "@SUM(1)", "+cmd", "-2+3", "\tTAB", "<img src=x onerror=alert(1)>",
                 "a|b", "line\nbreak", "-1.5", "plain"]  # fmt: skip


def test_csv_cells_that_would_run_as_formulas_are_written_as_text(tmp_path):
    import numpy as np

    from cnl.analysis.evidence import write_per_class
    from cnl.engine.prediction import write_predictions
    from cnl.tables import from_csv_cell

    classes = HOSTILE_NAMES
    n = len(classes)
    record = {"label": np.arange(n), "topk": np.stack([np.roll(np.arange(n), -k)[:5] for k in range(n)]),
              "p_label": np.full(n, 0.5)}  # fmt: skip
    written = write_image_predictions(tmp_path / "predictions.csv", {"test": (classes, record)}, classes)
    matrix = np.eye(n, dtype=np.int64) + np.roll(np.eye(n, dtype=np.int64), 1, axis=1)
    per_class = write_per_class(matrix, classes, tmp_path / "per_class.csv")
    results = [{"image": name, "predictions": [{"class": name, "probability": 0.9}]} for name in classes]
    write_predictions(results, tmp_path / "predict.csv", topk=1)
    for path in (written, per_class, tmp_path / "predict.csv"):
        cells = [cell for row in csv.reader(io.StringIO(path.read_text(encoding="utf-8"))) for cell in row]
        risky = [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r") or (c[:1] == "-" and c != "-1.5")]
        assert risky == [], (path.name, risky)
        assert {from_csv_cell(c) for c in cells} >= set(classes) - {"line\nbreak"} | {"line\nbreak"}
    assert read_correct(written)  # what it wrote, it reads back


def test_names_in_markdown_tables_stay_in_their_cells(tmp_path):
    import numpy as np

    from cnl.analysis.evidence import write_evidence
    from cnl.analysis.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(epoch_line(epoch=1, train_loss=1.0, test_loss=1.0, top1=50.0))
    n = len(HOSTILE_NAMES)
    matrix = np.eye(n, dtype=np.int64) * 2 + np.roll(np.eye(n, dtype=np.int64), 1, axis=1)
    write_evidence(matrix.tolist(), HOSTILE_NAMES, run / "eval")
    build_report([run], tmp_path / "report")
    markdown = (tmp_path / "report" / "index.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 11 and all(line.count("|") == 5 for line in table)  # header + 10 classes
    assert "<img" not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page and "a|b" in page


def test_a_class_named_like_tex_math_is_drawn_as_written(tmp_path):
    import warnings

    import numpy as np

    from cnl.analysis.evidence import plot_confusion
    from cnl.tables import figure_text

    assert figure_text("$\\frac$ and\ttab") == "\\$\\frac\\$ and\\ttab"
    names = [*HOSTILE_NAMES, "$\\frac$", "$5 bill", "$100 bill", "$x^2$"]
    n = len(names)
    matrix = np.eye(n, dtype=np.int64) * 2 + np.roll(np.eye(n, dtype=np.int64), 1, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no glyph missing for a tab or a line break
        assert plot_confusion(matrix, names, tmp_path / "confusion.png").stat().st_size > 1000


# A name of TeX's characters (``$$`` is a parse error), or any name.
TEX = st.text(st.sampled_from("$^_{}\\x \t"), min_size=1, max_size=6) | st.text(min_size=1, max_size=12)


@settings(max_examples=20)  # a figure a draw
@given(st.lists(TEX, min_size=2, max_size=4, unique=True))
def test_any_class_names_draw_a_confusion_figure(tmp_path_factory, names):
    import numpy as np

    from cnl.analysis.evidence import plot_confusion

    n = len(names)
    matrix = np.eye(n, dtype=np.int64) + np.roll(np.eye(n, dtype=np.int64), 1, axis=1)
    out = tmp_path_factory.mktemp("figure") / "confusion.png"
    assert plot_confusion(matrix, names, out) == out and out.stat().st_size > 0


# --- archives and URLs ----------------------------------------------------------------------------


def tar_with(members: list[tuple[str, str, str]]) -> bytes:
    """A tar of ``(kind, name, target_or_text)`` members: file, dir, symlink, hardlink, device."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for kind, name, value in members:
            info = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = value.encode("utf-8", "surrogateescape")
                info.size = len(data)
            else:
                info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                             "device": tarfile.CHRTYPE}[kind]  # fmt: skip
                info.linkname = value
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fetcher_for(tmp_path: Path, data: bytes) -> tuple[Fetcher, Archive, Path]:
    """A fetcher whose one archive is ``data``, already downloaded and verified."""
    import hashlib

    archive = Archive("mini.tar", "http://127.0.0.1:9/mini.tar", hashlib.sha256(data).hexdigest(), len(data), "target")
    source = Source("mini", "Mini", "http://127.0.0.1:9/", (archive,), "target", "folder")
    fetcher = Fetcher(source, tmp_path / "root", progress=False)
    fetcher.downloads.mkdir(parents=True, exist_ok=True)
    path = fetcher.downloads / archive.file
    path.write_bytes(data)
    assert fetcher.verified(archive, path)
    return fetcher, archive, path


@pytest.mark.parametrize(
    "member, said",
    [
        (("file", "../escaped.txt", "x"), "refusing member '../escaped.txt'"),
        (("symlink", "link", "../../outside"), "refusing member 'link'"),
        (("symlink", "link", "/etc/passwd"), "refusing member 'link'"),
        (("hardlink", "hard", "/etc/passwd"), "refusing member 'hard'"),
        (("device", "dev", ""), "refusing member 'dev'"),
    ],
)
def test_a_hostile_archive_member_is_one_line_and_nothing_is_unpacked(member, said, tmp_path, capsys):
    data = tar_with([("file", "fine/a.txt", "a"), ("file", "fine/b.txt", "b"), member, ("file", "fine/c.txt", "c")])
    fetcher, archive, path = fetcher_for(tmp_path, data)
    with pytest.raises(UserError, match=said) as raised:
        fetcher.unpack(archive, path)
    assert "nothing was unpacked" in str(raised.value) and len(str(raised.value)) <= ONE_LINE + len(str(path))
    assert not (fetcher.root / "target").exists()  # not even fine/a.txt
    assert sorted(p.name for p in fetcher.root.iterdir()) == ["downloads"]  # no staging folder left


def test_an_absolute_member_name_lands_inside_as_tar_itself_would_put_it(tmp_path):
    fetcher, archive, path = fetcher_for(tmp_path, tar_with([("file", "/tmp/absolute.txt", "x")]))
    fetcher.unpack(archive, path)  # tarfile's "data" filter strips the leading /, as GNU tar does
    assert (fetcher.root / "target" / "tmp" / "absolute.txt").read_text() == "x"


def test_a_damaged_archive_is_one_line(tmp_path):
    data = tar_with([("file", "fine/a.txt", "a" * 3000)])
    fetcher, archive, path = fetcher_for(tmp_path, data[:1000])
    with pytest.raises(UserError, match="cannot be unpacked"):
        fetcher.unpack(archive, path)
    assert sorted(p.name for p in fetcher.root.iterdir()) == ["downloads"]


MEMBER_NAMES = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\x00"), min_size=1, max_size=20),
    st.lists(st.sampled_from(["..", ".", "a", "b", "", "/", "~"]), min_size=1, max_size=5).map("/".join),
)


@given(
    members=st.lists(
        st.tuples(st.sampled_from(["file", "dir", "symlink", "hardlink"]), MEMBER_NAMES, MEMBER_NAMES), max_size=5
    )
)
def test_any_archive_unpacks_inside_its_folder_or_is_refused(members, tmp_path):
    import tempfile

    root = Path(tempfile.mkdtemp(dir=tmp_path))  # tmp_path is the same for every example
    sentinel = tmp_path / "outside.txt"
    sentinel.write_text("untouched")
    try:
        data = tar_with(members)
    except (ValueError, UnicodeEncodeError):
        assume(False)
    fetcher, archive, path = fetcher_for(root, data)
    before = {p for p in tmp_path.rglob("*")}
    try:
        fetcher.unpack(archive, path)
    except UserError as error:
        assert "\n" not in str(error)
        assert not (fetcher.root / "target").exists()
    after = {p for p in tmp_path.rglob("*")}
    target = os.path.realpath(fetcher.root / "target")
    for new in after - before:
        assert new.is_relative_to(fetcher.root), new
        where = os.path.realpath(new)  # a link's target, and no error on a loop of links
        assert where.startswith(target + os.sep) or where == target or new == fetcher.stamp(path, "unpacked"), new
    assert sentinel.read_text() == "untouched"
    assert not list(fetcher.root.glob(".*.unpacking"))


@pytest.mark.parametrize(
    "mirror", ["http://[::1", "http://x/\r\nHost: evil", "ftp://x/y", "http://", "x y", "http://x:99999/"]
)
def test_a_malformed_mirror_is_one_line(mirror, tmp_path, capsys):
    code = main(["data", "get", "dogs", "--root", str(tmp_path / "root"), "--mirror", mirror])
    one_line_error(code, capsys.readouterr().err, "data")
    assert not (tmp_path / "root").exists()


@given(url=st.text(max_size=40) | st.from_regex(r"https?://[\[\]a-z0-9.:@%/\\-]{0,30}", fullmatch=True))
def test_any_mirror_is_used_as_given_or_refused(url):
    try:
        accepted = check_url(url)
    except UserError as error:
        assert "\n" not in str(error) and len(str(error)) <= ONE_LINE
        return
    fetcher = Fetcher(SOURCES["dogs"], "unused", accepted, progress=False)
    assert fetcher.url_of(SOURCES["dogs"].archives[0]) == accepted.rstrip("/") + "/images.tar"
    assert accepted.startswith(("http://", "https://")) and not any(ord(c) < 33 for c in accepted)


def test_a_made_up_verified_stamp_beside_a_file_of_another_size_is_not_trusted(tmp_path):
    archive = SOURCES["dogs"].archives[0]
    fetcher = Fetcher(SOURCES["dogs"], tmp_path, progress=False)
    fetcher.downloads.mkdir(parents=True)
    path = fetcher.downloads / archive.file
    path.write_bytes(b"123456789")
    fetcher.seal(path, archive.digest, 9)  # as a hand-made images.tar.verified would say
    assert not fetcher.verified(archive, path)
    fetcher.stamp(path, "verified").write_text("{damaged")
    assert fetcher.sealed(path) is None


def test_setting_values_round_trip_through_config_yaml(tmp_path):
    """A run's config.yaml gives back the values it was written from, e-notation included."""
    from cnl.engine.config import load_settings_text

    config = parse("--lr", "1e-10", "--weight-decay", "5e-4", "--ema", "0.9998")
    text = yaml.safe_dump(config.recipe(64))
    again = load_settings_text(text)
    assert (again["lr"], again["weight_decay"], again["ema"]) == (1e-10, 5e-4, 0.9998)
