"""The paper's recipe on 1 to N processes (torchrun): the global batch, randomness that
follows the data, logged = evaluated, a stopped group resumed, elastic restarts, two
launchers, provenance."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from cnl.cli import main
from cnl.data import build_dataset, train_transform
from cnl.data.synth import SynthConfig, generate
from cnl.engine import distributed, make_config, read_checkpoint
from cnl.engine.config import read_yaml
from cnl.engine.randomness import EpochSampler, SeededDataset
from runs import (
    ODD,
    assert_same_weights,
    deterministic_run_args,
    epochs_done,
    epochs_logged,
    eval_json,
    wait_until,
    weights,
)

REPO = Path(__file__).resolve().parents[1]
# Single processes run with this process's threads (the same sums); every torchrun worker
# with one, also where a launcher starts a single process (torchrun sets it only for several).
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
TORCHRUN_ENV = {**ENV, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(synth):
    return synth(ODD)


def train_args(data, output, *extra, epochs=3):
    return deterministic_run_args(data, output, *extra, epochs=epochs, workers=2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(*args, launcher=("--standalone", "--nproc_per_node", "2")):
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "cnl", *args]


def torchrun(*args, **options):
    done = subprocess.run(
        torchrun_command(*args, **options), capture_output=True, text=True, env=TORCHRUN_ENV, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def start(command, env=ENV):
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


# --- 1. the global batch ---------------------------------------------------------------


def test_global_batch_is_split_over_processes_and_accumulation():
    config = make_config({"data_root": "x", "global_batch_size": 64, "accum_steps": 2})
    assert [config.batch_plan(p) for p in (1, 2, 4)] == [(32, 64), (16, 64), (8, 64)]
    with pytest.raises(ValueError, match="global batch 64 does not divide into 3 processes x 2 accumulation steps"):
        config.batch_plan(3)
    per_process = make_config({"data_root": "x", "batch_size": 8})
    assert per_process.batch_plan(4) == (8, 32) and per_process.global_batch_size is None


def test_presets_set_the_papers_global_batch_whatever_the_processes():
    for preset in sorted((REPO / "configs").glob("*.yaml")):
        config = make_config(read_yaml(preset))
        assert (config.global_batch_size, config.batch_size) == (64, None), preset.name
        assert [config.batch_plan(p)[1] for p in (1, 2, 4, 8)] == [64] * 4
    # A per-process batch given as a flag replaces the file's global batch, and vice versa.
    preset = read_yaml(REPO / "configs" / "cub_resnet50_cnl5.yaml")
    assert make_config(preset, {"batch_size": 16}).batch_plan(2) == (16, 32)
    assert make_config({"batch_size": 16, "data_root": "x"}, {"global_batch_size": 32}).batch_plan(2) == (16, 32)


def test_batch_flags_together_are_an_error(data, tmp_path, capsys):
    assert main([*train_args(data, tmp_path / "run"), "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "give either --batch-size (per process, 8) or --global-batch-size (4), not both" in err
    assert main([*train_args(data, tmp_path / "run"), "--global-batch-size", "6", "--accum-steps", "4"]) == 2
    assert "the global batch 6 does not divide into 1 processes x 4 accumulation steps" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- 2. randomness follows the data ------------------------------------------------------


def augmented(dataset, rank, world_size, workers, start=0, epoch=0):
    sampler = EpochSampler(len(dataset), 5, epoch, 4, rank, world_size, start=start)
    loader = DataLoader(SeededDataset(dataset), batch_size=2, sampler=sampler, num_workers=workers)
    return torch.cat([images for images, _ in loader])


def test_two_ranks_never_share_an_augmentation_stream(tmp_path):
    # Every sample is the same picture: equal crops would mean equal random draws.
    root = generate(tmp_path / "d", SynthConfig(classes=2, train_per_class=8, test_per_class=1, image_size=40))
    dataset = build_dataset("cub", root, "train", train_transform(32))
    first = dataset.samples[0]
    dataset.samples = [first] * len(dataset.samples)
    rank0, rank1 = augmented(dataset, 0, 2, workers=2), augmented(dataset, 1, 2, workers=2)
    assert len(rank0) == len(rank1) == 8
    crops = [image.flatten() for image in (*rank0, *rank1)]
    assert len({tuple(c.tolist()) for c in crops}) == 16  # no two draws alike, within or across ranks
    # A draw depends on (seed, epoch, position) only: not on workers, processes or resuming.
    one_process = augmented(dataset, 0, 1, workers=0)
    assert torch.equal(one_process[0::2], rank0) and torch.equal(one_process[1::2], rank1)
    assert torch.equal(augmented(dataset, 0, 1, workers=2, start=8), one_process[8:])
    assert not torch.equal(augmented(dataset, 0, 1, workers=0, epoch=1), one_process)


@pytest.fixture(scope="module")
def two_processes(data, tmp_path_factory):
    """An uninterrupted run on 2 processes: the reference of the torchrun tests."""
    output = tmp_path_factory.mktemp("ddp") / "run"
    done = torchrun(*train_args(data, output))
    return output, done.stdout


# --- 3. what is logged is what cnl eval gives --------------------------------------------


@pytest.mark.slow
def test_two_processes_log_what_cnl_eval_gives(two_processes, capsys):
    output, stdout = two_processes
    assert "2 processes x batch 2 x 1 accumulation = global batch 4; lr 0.01, 3 epochs" in stdout
    summary = json.loads((output / "summary.json").read_text())
    assert summary["replicas_identical"] is True  # parameters and BatchNorm buffers
    assert (summary["world_size"], summary["batch_size"], summary["global_batch_size"]) == (2, 2, 4)
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [line["test_count"] for line in lines] == [15, 15, 15]
    last = eval_json(capsys, output / "checkpoints" / "last.pt")
    assert (last["top1"], last["top5"], last["count"]) == (lines[-1]["top1"], lines[-1]["top5"], 15)
    best = eval_json(capsys, output / "checkpoints" / "best.pt")
    assert (best["top1"], best["top5"]) == (summary["best_top1"], summary["best_top5"])


@pytest.mark.slow
def test_two_processes_evaluate_each_image_as_one_process_does(two_processes, tmp_path, capsys):
    output, _ = two_processes
    best = output / "checkpoints" / "best.pt"
    done = torchrun("eval", "--checkpoint", str(best), "--json", "--batch-size", "5", "--report", str(tmp_path / "two"))
    two = json.loads(done.stdout.strip().splitlines()[-1])
    one = eval_json(capsys, best, "--report", str(tmp_path / "one"))
    assert (two["top1"], two["top5"], two["count"]) == (one["top1"], one["top5"], one["count"])
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    # Per-image predictions gathered from both processes: every image once, in dataset order, as one process gives.
    rows = {n: list(csv.DictReader((tmp_path / n / "predictions.csv").open())) for n in ("one", "two")}
    rows["trained"] = list(csv.DictReader((output / "predictions.csv").open()))  # training's, of best.pt's epoch
    assert [r["correct"] for r in rows["trained"]] == [r["correct"] for r in rows["one"]]
    assert [r["index"] for r in rows["two"]] == [str(k) for k in range(15)]
    for key in ("image", "label", "predicted", "correct", "top5"):
        assert [r[key] for r in rows["two"]] == [r[key] for r in rows["one"]], key
    assert [float(r["p_label"]) for r in rows["two"]] == pytest.approx([float(r["p_label"]) for r in rows["one"]])


def test_sync_bn_needs_cuda(data, tmp_path, monkeypatch, capsys):
    # Refused where the run learns its process group, before anything is built: this
    # process stands for rank 0 of two on the CPU.
    monkeypatch.setattr(distributed, "setup", lambda device: distributed.Context(0, 2, torch.device("cpu")))
    assert main(train_args(data, tmp_path / "run", "--sync-bn")) == 2
    assert capsys.readouterr().err.startswith("cnl train: error: --sync-bn needs CUDA devices")
    assert not (tmp_path / "run").exists()


# --- 4. elastic restarts and two launchers -----------------------------------------------


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the training processes that torchrun started."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        environ = dict(
            item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
        )
        if "RANK" in environ:
            ranks[int(environ["RANK"])] = pid
    return ranks


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_a_sigterm_stops_both_at_one_step_and_resume_is_bit_identical(
    data, two_processes, tmp_path
):
    reference, _ = two_processes
    output = tmp_path / "run"
    launcher = ("--standalone", "--nproc_per_node", "2", "--max-restarts", "2")
    process = start(torchrun_command(*train_args(data, output), launcher=launcher), TORCHRUN_ENV)
    wait_until(epochs_done(output, 1), process, "first epoch")  # into epoch 2
    config = output / "config.yaml"
    written = config.stat().st_mtime_ns
    os.kill(worker_pids(process.pid)[1], signal.SIGKILL)
    # Rank 0 writes config.yaml once both processes are set up, just before the first step:
    # the restarted pair is training epoch 2 again (from the checkpoint of epoch 1) when it changes.
    wait_until(lambda: config.stat().st_mtime_ns != written, process, "the restarted run's first step")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode != 0
    assert out.count("2 processes x batch 2") == 2  # started twice: once, then after the restart
    assert "SIGTERM received: stopped at epoch" in err, err[-3000:]  # both processes, at one step
    torchrun("train", "--resume", "--output", str(output))
    assert_same_weights(weights(reference), weights(output))
    assert epochs_logged(output) == [1, 2, 3]


@pytest.mark.slow
def test_two_launchers_as_two_nodes_rerun_the_recorded_recipe_as_one_launcher_ran_it(two_processes, tmp_path):
    reference, _ = two_processes
    output, port = tmp_path / "run", free_port()
    recipe = ("train", "--config", str(reference / "config.yaml"), "--output", str(output))  # the run folder's own
    launchers = [
        start(
            torchrun_command(
                *recipe,
                launcher=(
                    "--nnodes",
                    "2",
                    "--nproc_per_node",
                    "1",
                    "--node_rank",
                    str(node),
                    "--master_addr",
                    "127.0.0.1",
                    "--master_port",
                    str(port),
                ),
            ),
            TORCHRUN_ENV,
        )  # fmt: skip
        for node in (0, 1)
    ]
    for launcher in launchers:
        out, err = launcher.communicate(timeout=900)
        assert launcher.returncode == 0, err[-4000:]
    assert_same_weights(weights(reference), weights(output))


# --- 5. provenance -----------------------------------------------------------------------


@pytest.mark.slow
def test_run_folder_records_its_recipe_and_provenance(two_processes):
    output, _ = two_processes
    recipe = yaml.safe_load((output / "config.yaml").read_text())
    assert recipe["global_batch_size"] == 4 and recipe["batch_size"] is None and "output" not in recipe
    summary = json.loads((output / "summary.json").read_text())
    for record in (summary["provenance"], read_checkpoint(output / "checkpoints" / "last.pt")["provenance"]):
        assert record["command"].startswith("cnl train --data-root")
        assert record["torch"] == torch.__version__ and record["cuda"] == torch.version.cuda
        assert record["processes"] == 2 and record["global_batch_size"] == 4 and len(record["devices"]) == 2
        assert record["cnl"] == "0.1.0" and {"git_commit", "torchvision", "python"} <= set(record)
    # That config.yaml alone trains the same weights: the two-launcher test above reruns it.


def test_git_commit_is_recorded_from_a_checkout():
    from cnl.engine.provenance import git_commit

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the tests run outside a git checkout")
    assert git_commit().split("+")[0] == head.stdout.strip()


# --- 6. python -m cnl --------------------------------------------------------------------


def test_python_dash_m_cnl():
    done = subprocess.run([sys.executable, "-m", "cnl", "--help"], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0 and "usage: cnl" in done.stdout
