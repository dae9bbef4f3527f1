"""benchmarks/run_gpu.sh, rehearsed on the CPU: every step runs, a failing or hanging step is
recorded and the script goes on, a spent budget skips what is left, and the summary says so."""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLOW = pytest.mark.slow  # runs the GPU script's rehearsal
STEPS = ["machine", "cuda-tests", "bench-module", "bench-models", "bench-compile"]
STEPS += ["data", "train", "eval", "train-check"]


@pytest.fixture
def scratch():
    """The script's TMPDIR: a folder of the system's own temporary one, short enough for the
    sockets of the training step's loader workers (a test's tmp_path under xdist is not)."""
    folder = Path(tempfile.mkdtemp(prefix="gpu"))
    yield folder
    shutil.rmtree(folder)


def rehearse(tmp_path: Path, scratch: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path, dict[str, dict]]:
    out = tmp_path / "out"
    env = {**os.environ, "CNL_DEVICE": "cpu", "CNL_SMOKE": "1", "PYTHON": sys.executable, "TMPDIR": str(scratch), **env}
    script = REPO / "benchmarks" / "run_gpu.sh"
    done = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True, env=env, timeout=600)
    steps = {row["step"]: row for row in json.loads((out / "summary.json").read_text())["steps"]}
    return done, out, steps


@SLOW
def test_the_script_goes_on_past_a_failing_and_a_hanging_step_and_sums_up(tmp_path, scratch):
    done, out, steps = rehearse(tmp_path, scratch, CNL_REHEARSE_FAULTS="1")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(steps) == ["fails-on-purpose", "hangs-on-purpose", *STEPS]
    assert steps["fails-on-purpose"]["status"] == "failed"
    assert steps["hangs-on-purpose"]["status"] == "timed out" and int(steps["hangs-on-purpose"]["seconds"]) < 15
    assert steps["bench-compile"]["status"] == "skipped"  # the CPU rehearsal does not compile
    passed = {name for name, row in steps.items() if row["status"] == "passed"}
    said = "".join(
        f"\n{name} {steps[name]['status']}:\n{steps[name]['log_tail'][-1500:]}" for name in set(STEPS) - passed
    )
    assert passed == set(STEPS) - {"bench-compile"}, said

    # The summary is printed last, and written as Markdown and JSON.
    summary = (out / "summary.md").read_text()
    assert done.stdout.rstrip().endswith(summary.rstrip())
    assert "8 passed, 1 failed, 1 timed out, 1 skipped" in summary.splitlines()[0]
    assert "| fails-on-purpose | failed |" in summary and "| hangs-on-purpose | timed out |" in summary
    record = json.loads((out / "summary.json").read_text())
    figures = {step["step"]: step["figures"] for step in record["steps"]}
    assert figures["train-check"] == "OK: loss went down, eval equals logged"
    assert re.fullmatch(r"top1 \d+\.\d\d, top5 \d+\.\d\d on 32 images", figures["eval"])  # one whole batch
    assert figures["cuda-tests"].startswith("19 skipped")  # no GPU here: the marker skips them
    assert "resnet18_cnl5: train step" in figures["bench-models"] and "NL (one res3 block): " in figures["bench-module"]
    assert set(record["tables"]) == {"bench-module", "bench-models"}
    assert record["tables"]["bench-module"].count("| sdpa | flash |") == 4  # fused, not the math fallback

    # Four small files come back; data, checkpoints and the temporary folder are gone.
    files = {f.name: f.stat().st_size for f in out.iterdir()}
    assert set(files) == {"summary.md", "summary.json", "logs.tar.gz", "train_metrics.jsonl"}
    assert sum(files.values()) < 1_000_000
    assert not [p for p in scratch.iterdir() if p.name.startswith("cnl-gpu.")]
    with tarfile.open(out / "logs.tar.gz") as logs:
        assert {Path(name).name for name in logs.getnames()} >= {f"{step}.log" for step in steps} | {"steps.tsv"}
        train_log = logs.extractfile("./train.log").read().decode()  # type: ignore[union-attr]
    assert "epoch 4/4" in train_log and "\r" not in train_log  # no progress bars in a log


@SLOW
def test_a_spent_budget_skips_the_remaining_steps_and_still_sums_up(tmp_path, scratch):
    # 19 s leaves less than the 15 s kept for the summary plus 5: every step is skipped
    # whatever the machine's speed (with 21, the first step had 6 s to import torch, which
    # a busy 2-core machine does not always manage).
    done, out, steps = rehearse(tmp_path, scratch, CNL_BUDGET_S="19")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(steps) == STEPS
    skipped = [name for name, row in steps.items() if row["status"] == "skipped"]
    assert skipped and skipped == STEPS[-len(skipped) :]
    assert steps[skipped[-1]]["figures"] == "skipped: the budget of 19s is spent"
    assert (out / "summary.md").read_text().splitlines()[0].endswith(f"{len(skipped)} skipped")


def test_the_summary_reads_the_tables_cnl_bench_prints(tmp_path, monkeypatch):
    """gpu_summary.py parses `cnl bench`'s own table, so a change of its columns shows here."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from gpu_summary import summarise

    from cnl.analysis.bench import BenchResult, format_results

    eager = BenchResult("resnet50_cnl5", 0.2, 100.0, 900.0, (1.5, 0.4))
    compiled = BenchResult("resnet50_cnl5+compile", 0.15, 150.0, 800.0, (61.0, 17.5), 0.75, 1.5, 0.89)
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir(), out.mkdir()
    (logs / "bench-compile.log").write_text(format_results([eager, compiled], {"device": "cpu"}) + "\n")
    (logs / "steps.tsv").write_text("step\tstatus\tseconds\tlimit\texit\nbench-compile\tpassed\t95\t180\t0\n")
    summary = summarise(logs, out, "95")
    assert (
        "| bench-compile | passed | 95 | 180 | resnet50_cnl5: train step 1.00x, first steps 1.50 + 0.40 s; "
        "resnet50_cnl5+compile: train step 0.75x, first steps 61.00 + 17.50 s |"
    ) in summary
    assert "### bench-compile" in summary and "| resnet50_cnl5+compile | 0.150 | 0.75x |" in summary
