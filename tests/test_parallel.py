"""Runs side by side (``cnl.engine.parallel``, the demo's two workers): the same weights as
runs in turn, every line named by its run, a failed run named, a signal passed on to every
run, and no run outliving a killed parent."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from cnl.analysis.ablation import run_ablation
from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from cnl.engine import make_config, read_checkpoint
from cnl.engine.parallel import Prefixed, RunFailed, _run
from runs import assert_same_weights, epochs_done, lock_free, wait_until, weights

MODELS = ["resnet18", "resnet18_cnl5"]
RECIPE = {
    "dataset": "cub", "img_size": 32, "width": 8, "epochs": 2, "warmup_epochs": 0, "global_batch_size": 4,
    "workers": 0, "device": "cpu", "deterministic": True,
}  # fmt: skip

SLOW = pytest.mark.slow  # starts worker processes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    config = SynthConfig(classes=3, train_per_class=4, test_per_class=2, image_size=40)
    return generate(tmp_path_factory.mktemp("synth"), config)


def without_speed(rows):
    for row in rows:
        row.pop("train_images_per_s")
        for run in row["per_seed"]:
            run.pop("train_images_per_s")
    return rows


@SLOW
def test_runs_side_by_side_equal_runs_in_turn_and_name_their_lines(data, tmp_path, capfd):
    config = make_config(RECIPE, {"data_root": str(data)})
    threads = torch.get_num_threads()
    in_turn = run_ablation(config, MODELS, tmp_path / "turn", [3], jobs=1, threads=1)
    assert torch.get_num_threads() == threads  # restored
    capfd.readouterr()
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in RECIPE.items() if key != "deterministic"]
    argv = ["ablate", "--models", ",".join(MODELS), "--seeds", "3", "--data-root", str(data), "--deterministic"]
    assert main([*argv, *flags, "--output", str(tmp_path / "side"), "--jobs", "2"]) == 0  # as cnl demo runs
    side_by_side = json.loads((tmp_path / "side" / "ablation.json").read_text())["rows"]
    assert without_speed(side_by_side) == without_speed(json.loads(json.dumps(in_turn)))
    for model in MODELS:
        assert_same_weights(weights(tmp_path / "turn" / model), weights(tmp_path / "side" / model))
    lines = capfd.readouterr().out.splitlines()
    for model in MODELS:
        assert f"[{model} seed 3] epoch 2/2" in "\n".join(lines)
    trained = lines[: next(k for k, line in enumerate(lines) if line.startswith("| model |"))]  # then the table
    assert all(line.startswith(("[resnet18 seed 3] ", "[resnet18_cnl5 seed 3] ")) for line in trained)


@SLOW
def test_a_failed_run_is_an_error_and_its_worker_says_which(tmp_path, capfd):
    config = make_config(RECIPE, {"data_root": str(tmp_path / "nothing")})
    with pytest.raises(RunFailed, match="exit status 2"):
        run_ablation(config, MODELS[:1], tmp_path / "ablation", [0], jobs=2, threads=1)
    error = capfd.readouterr().err
    assert "[resnet18 seed 0] cnl train: error: " in error and str(tmp_path / "nothing") in error


def test_a_run_out_of_memory_in_a_worker_is_one_line_as_cnl_train_says_it(capfd):
    """A worker says what ``cnl train`` would: torch's refusal of an allocation in one line,
    exit 2; any other RuntimeError stays a bug, with its traceback."""

    def refused(config):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB.")

    def bug(config):
        raise RuntimeError("a bug")

    assert _run(refused, None, "resnet18 seed 0") == 2
    assert capfd.readouterr().err == (
        "[resnet18 seed 0] cnl train: error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB.): "
        "try a smaller --batch-size or --img-size\n"
    )
    with pytest.raises(RuntimeError, match="a bug"):
        _run(bug, None, "resnet18 seed 0")


def test_lines_are_prefixed_whole_and_progress_bars_become_lines():
    out = io.StringIO()
    stream = Prefixed(out, "run")
    stream.write("epoch 1")
    assert out.getvalue() == ""  # a line is written when it ends
    stream.write("/2\rbar\n\nlast")
    stream.flush()
    assert out.getvalue() == "[run] epoch 1/2\n[run] bar\n[run] last\n" and not stream.isatty()


ABLATION = """
import sys
from cnl.analysis.ablation import run_ablation
from cnl.cli import main
from cnl.engine import make_config
from cnl.engine.trainer import RunInterrupted
config = make_config({recipe!r}, {{"data_root": {data!r}, "epochs": 60}})
try:
    run_ablation(config, {models!r}, {output!r}, [0], jobs=2, threads=1)
except RunInterrupted as stopped:
    sys.exit(stopped.exit_code)
"""


@SLOW
def test_a_signal_stops_every_run_and_a_killed_parent_leaves_no_run_behind(data, tmp_path):
    output = tmp_path / "ablation"
    script = textwrap.dedent(ABLATION).format(recipe=RECIPE, data=str(data), models=MODELS, output=str(output))
    runs = [output / model for model in MODELS]

    def start():
        parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for run in runs:
            wait_until(epochs_done(run, 1), parent, f"{run}'s first epoch")
        return parent

    parent = start()
    parent.send_signal(signal.SIGTERM)  # to the parent alone, as timeout(1) sends it
    out, err = parent.communicate(timeout=300)
    assert parent.returncode == 128 + signal.SIGTERM, err[-3000:]
    for run in runs:  # each run saved and stopped before its end
        assert 1 <= read_checkpoint(run / "checkpoints" / "last.pt")["epoch"] < 60
        assert not (run / "summary.json").exists()
        wait_until(lock_free(run / ".lock"), None, f"{run}'s lock")

    parent = start()  # continues both runs, then dies without a word
    os.kill(parent.pid, signal.SIGKILL)
    parent.communicate()
    for run in runs:  # the workers were told (SIGTERM), saved and ended
        wait_until(lock_free(run / ".lock"), None, f"{run}'s lock after its parent was killed", timeout=120)
        assert read_checkpoint(run / "checkpoints" / "last.pt")["epoch"] < 60
