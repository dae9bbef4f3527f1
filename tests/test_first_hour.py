"""The first hour of a new user: what a plain run starts from, settings that cannot do what
was asked, resuming with other settings, and the small frictions on the way."""

import json
import os
import subprocess
import sys
import tempfile
import urllib.error
from pathlib import Path

import pytest

import cnl
from cnl.cli import build_parser, main, resolve_train_config
from cnl.data.synth import SynthConfig, generate
from cnl.engine.config import NO_WEIGHTS, TrainConfig, make_config, read_yaml
from cnl.errors import UserError

TINY = SynthConfig(classes=3, train_per_class=4, test_per_class=2, image_size=40, seed=4)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth"), TINY)


def run_args(data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "train", "--data-root", str(data), "--model", "resnet18", "--width", "8", "--img-size", "32", "--epochs", "1",
        "--warmup-epochs", "0", "--batch-size", "4", "--set", "lr_steps=[]", "--workers", "0", "--device", "cpu",
        "--output", str(output), *extra,
    ]  # fmt: skip


def parse(*argv: str) -> TrainConfig:
    return resolve_train_config(build_parser().parse_args(["train", "--data-root", "x", *argv]))


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cnl "), err
    return err[0]


# --- what a plain run starts from ---------------------------------------------------------------


TOLD_AT_ONCE = [
    pytest.param(
        ["train", "--model", "resnet18"], "invalid configuration: data_root is required (--data-root)", id="no-root"
    ),
    pytest.param(
        ["train", "--data-root", "{root}", "--lr", "0"],
        "invalid configuration: lr must be a finite number > 0, got 0.0",
        id="lr-0",
    ),
    pytest.param(["train", "--data-root", "{root}/gone"], "dataset root {root}/gone does not exist", id="gone"),
    pytest.param(
        ["train", "--data-root", "{root}/file.txt"], "dataset root {root}/file.txt is not a folder", id="file"
    ),
    pytest.param(
        ["ablate", "--data-root", "{root}/gone", "--models", "resnet18"],
        "dataset root {root}/gone does not exist",
        id="ablate",
    ),
]


@pytest.mark.parametrize(("argv", "said"), TOLD_AT_ONCE)
def test_a_mistake_in_a_new_run_is_told_before_torch_loads(argv, said, tmp_path):
    """A fresh run's settings and data root are checked without torch (whose import takes
    seconds): a typo is answered in a fraction of a second, in one line, with exit 2."""
    (tmp_path / "file.txt").write_text("not a folder")
    argv = [*(a.replace("{root}", str(tmp_path)) for a in argv), "--output", str(tmp_path / "run")]
    code = f"import sys\nfrom cnl.cli import main\ncode = main({argv!r})\nprint(code, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr[-2000:]
    command = f"cnl {argv[0]}: error: "
    assert done.stderr.splitlines() == [command + said.replace("{root}", str(tmp_path))]
    assert not (tmp_path / "run").exists()


def test_a_plain_run_starts_from_random_weights_and_says_so():
    assert TrainConfig().weights == NO_WEIGHTS
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())  # type: ignore[union-attr]
    assert "IMAGENET1K_V1: the paper's, as every preset says" in help_text and "(default: none)" in help_text
    for preset in sorted((REPO / "configs").glob("*.yaml")):
        assert make_config(read_yaml(preset)).weights == "IMAGENET1K_V1", preset.name  # the paper's start


def test_none_null_and_a_preset_all_say_random_weights(tmp_path):
    preset = REPO / "configs" / "cub_resnet50.yaml"
    assert parse("--config", str(preset)).weights == "IMAGENET1K_V1"
    for argv in (["--weights", "none"], ["--weights", "null"], ["--set", "weights=null"], ["--set", "weights=none"]):
        assert parse("--config", str(preset), *argv).weights == NO_WEIGHTS, argv
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"base: {os.path.relpath(preset, tmp_path)}\nweights: null\n")
    assert make_config(read_yaml(mine)).weights == NO_WEIGHTS
    assert make_config({"data_root": "x", "weights": None}).weights == NO_WEIGHTS  # a config stored before "none"
    with pytest.raises(UserError, match="weights must name weights, a file, or none"):
        parse("--weights", "")


def test_a_weights_name_is_checked_before_any_data_is_read(data, tmp_path, capsys):
    assert main(run_args(data, tmp_path / "a", "--weights", "IMAGENET1K_V9")) == 2
    line = error_line(capsys)
    names = "valid names: DEFAULT, IMAGENET1K_V1, none (random), or a local file"  # each once
    assert line.endswith(f"unknown weights 'IMAGENET1K_V9' for resnet18; {names}")
    assert main(run_args(data, tmp_path / "b", "--weights", str(tmp_path / "gone.pth"))) == 2
    assert error_line(capsys).endswith(f"weights file {tmp_path / 'gone.pth'} does not exist")
    assert main(run_args(data, tmp_path / "c", "--model", "resnet51")) == 2
    assert "unknown model 'resnet51'" in error_line(capsys)
    assert not any((tmp_path / name).exists() for name in "abc")
    assert main(run_args(data, tmp_path / "d", "--weights", "none")) == 0  # from scratch, offline


def test_weights_that_cannot_be_fetched_say_where_to_put_them(monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as raised:
        cnl.create_model("resnet18", num_classes=3, weights="IMAGENET1K_V1")
    said = str(raised.value)
    assert said.startswith(
        "cannot download the IMAGENET1K_V1 weights of resnet18 ([Errno -2] Name or service not known)"
    )
    assert "resnet18-f37072fd.pth at " in said and "hub/checkpoints/resnet18-f37072fd.pth" in said
    assert said.endswith("or train from random weights with --weights none")


def test_timm_weights_without_a_network_fail_in_seconds(monkeypatch):
    import socket
    import time

    import huggingface_hub
    from huggingface_hub import constants

    def unreachable(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(UserError, match=r"cannot reach huggingface.co for timm's pretrained weights of resnet18 \("):
        cnl.create_model("timm:resnet18", num_classes=3, weights="pretrained")
    assert time.monotonic() - started < 5


# --- settings that cannot do what was asked ------------------------------------------------------


def test_a_warm_up_as_long_as_the_run_and_steps_past_it_are_warned_about(data, tmp_path, capsys):
    assert main([*run_args(data, tmp_path / "run"), "--epochs", "2", "--lr", "0.001", "--warmup-epochs", "10",
                 "--set", "lr_steps=50,70"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert (
        "cnl train: warning: the warm-up (10 epochs) is as long as the run (2): the learning rate never reaches "
        "0.001; give --warmup-epochs below 2, e.g. 0.2 (a tenth of the run)"
    ) in err
    assert "cnl train: warning: lr_steps 50, 70 are not before the last epoch (2)" in err
    assert parse("--epochs", "110").cautions() == []  # the paper's recipe warns of nothing
    modern = make_config(read_yaml(REPO / "configs" / "modern" / "cub_resnet50_cnl5.yaml"), {"epochs": 1})
    assert "the warm-up (5 epochs) is as long as the run (1)" in modern.cautions()[0]


def test_a_resume_keeps_its_recipe(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(run_args(data, run)) == 0
    config = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", "--output", str(run), "--img-size", "48"]) == 2
    line = error_line(capsys)
    assert "last.pt cannot resume with other settings (img_size: 32 there, 48 here): a resumed run keeps" in line
    assert (run / "config.yaml").read_text() == config  # the run is still the one its config.yaml says
    assert main(["train", "--resume", "--output", str(run), "--model", "resnet18_cnl5"]) == 2
    assert "is a checkpoint of resnet18, not of resnet18_cnl5; cannot resume" in error_line(capsys)
    assert main(["train", "--resume", "--output", str(run), "--schedule", "cosine", "--epochs", "2"]) == 2
    assert "schedule: 'step' there, 'cosine' here" in error_line(capsys)
    assert main(["train", "--resume", "--output", str(run), "--epochs", "2", "--workers", "1"]) == 0
    assert "epochs: 2" in (run / "config.yaml").read_text()


# --- small frictions ------------------------------------------------------------------------------


def test_predict_into_a_closed_pipe_ends_quietly(data, tmp_path):
    run = tmp_path / "run"
    assert main(run_args(data, run)) == 0
    images = sorted((data / "images").rglob("*.jpg"))
    command = [sys.executable, "-m", "cnl", "predict", "--checkpoint", str(run / "checkpoints" / "best.pt"),
               *map(str, images), "--device", "cpu", "--workers", "0", "--batch-size", "1"]  # fmt: skip
    done = subprocess.run(f"{' '.join(command)} | head -1", shell=True, capture_output=True, text=True)
    assert done.stdout.count("\n") == 1 and done.stderr == ""


def test_exported_weights_follow_the_umask(data, tmp_path):
    run = tmp_path / "run"
    assert main(run_args(data, run)) == 0
    old = os.umask(0o022)
    try:
        for fmt, out in (("safetensors", tmp_path / "m.safetensors"), ("hf", tmp_path / "hub")):
            assert main(["export", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--format", fmt,
                         "--out", str(out)]) == 0  # fmt: skip
        for path in (tmp_path / "m.safetensors", tmp_path / "m.json", *(tmp_path / "hub").iterdir()):
            assert path.stat().st_mode & 0o777 == 0o644, path
    finally:
        os.umask(old)


def test_loader_workers_are_capped_by_the_cores_in_one_line(data, tmp_path, capsys):
    from cnl.engine.loaders import usable_workers

    cores = len(os.sched_getaffinity(0))
    run = tmp_path / "run"
    assert main(run_args(data, run)) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--workers", str(cores + 6)]) == 0
    err = capsys.readouterr().err
    assert err.count(f"{cores + 6} loader workers asked for, {cores} cores here: using {cores}") == 1
    assert "This DataLoader will create" not in err
    assert usable_workers(cores + 6) == cores and usable_workers(0) == 0


def test_a_temporary_folder_too_long_for_the_workers_sockets_is_one_line(data, tmp_path, capsys, monkeypatch):
    """Loader workers pass batches through Unix sockets made in TMPDIR; with a long TMPDIR
    they failed inside a worker and the run waited for the lost batch forever. The longest
    folder allowed works (in a process of its own: multiprocessing keeps its first folder)."""
    from cnl.engine.loaders import SOCKET_NAME, SOCKET_PATH_MAX
    from cnl.errors import cut

    longest = tmp_path / ("t" * (SOCKET_PATH_MAX - SOCKET_NAME - len(str(tmp_path)) - 1))
    too_long = Path(f"{longest}t")
    longest.mkdir(), too_long.mkdir()
    argv = [sys.executable, "-m", "cnl", *run_args(data, tmp_path / "fits", "--workers", "1")]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(longest)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setattr(tempfile, "tempdir", str(too_long))
    assert main(run_args(data, tmp_path / "long", "--workers", "1")) == 2
    assert capsys.readouterr().err == (
        f"cnl train: error: the temporary folder {cut(str(too_long))} is a path of {len(str(too_long))} bytes; "
        f"loader workers pass batches through sockets made in it, which allow at most {len(str(longest))}: set TMPDIR "
        "to a shorter folder, or --workers 0\n"
    )
    assert not (tmp_path / "long").exists()  # refused before the run folder


def test_attention_of_a_plain_model_is_a_user_error(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(run_args(data, run)) == 0
    image = next((data / "images").rglob("*.jpg"))
    assert main(["attention", "--checkpoint", str(run / "checkpoints" / "best.pt"), str(image),
                 "--out", str(tmp_path / "a.png")]) == 2  # fmt: skip
    assert error_line(capsys).endswith("resnet18 without NL or CNL modules has no attention to show")


def test_the_summary_and_model_card_name_the_layout_read(data, tmp_path):
    run = tmp_path / "run"
    assert main(run_args(data, run)) == 0  # --dataset auto
    assert json.loads((run / "summary.json").read_text())["dataset"] == "cub"
    assert main(["export", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--format", "hf",
                 "--out", str(tmp_path / "hub")]) == 0  # fmt: skip
    assert f"cub (`{data}`)" in (tmp_path / "hub" / "README.md").read_text()


def test_a_model_of_your_own_trains_and_evaluates_from_the_command_line(data, tmp_path, capsys, monkeypatch):
    from cnl.models import registry

    monkeypatch.setattr(registry, "_YOURS", {})  # what --import registers is forgotten after the test
    module = tmp_path / "my_models.py"
    module.write_text(
        "import cnl\nfrom torch import nn\n\n\n@cnl.register_model('my_tiny_net')\ndef my_tiny_net(num_classes):\n"
        "    layers = nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)\n"
        "    return nn.Sequential(*layers)\n"
    )
    run = tmp_path / "run"
    args = run_args(data, run)
    args[args.index("--model") + 1] = "my_tiny_net"
    args[args.index("--width") : args.index("--width") + 2] = []  # a ResNet's setting
    assert main([*args, "--import", str(module)]) == 0
    assert main(["eval", "--import", str(module), "--checkpoint", str(run / "checkpoints" / "best.pt")]) == 0
    assert "top1" in capsys.readouterr().out
    assert (
        main(["eval", "--import", str(tmp_path / "gone.py"), "--checkpoint", str(run / "checkpoints" / "best.pt")]) == 2
    )
    assert error_line(capsys).endswith(f"--import {tmp_path / 'gone.py'}: no such file")
