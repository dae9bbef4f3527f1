"""benchmarks/run_gpu.sh, rehearsed on the CPU: every step runs and its checks pass."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # runs the whole GPU script's rehearsal


def test_the_gpu_script_runs_every_step_on_the_cpu(tmp_path):
    env = {**os.environ, "CNL_DEVICE": "cpu", "CNL_SMOKE": "1", "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "run_gpu.sh"), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for step in ("== 1. CUDA tests", "== 2. bench at 64", "== 3. train"):
        assert step in done.stdout
    assert "skipped" in (tmp_path / "cuda_tests.txt").read_text()  # no GPU here: the marker skips them
    bench = (tmp_path / "bench.md").read_text()
    assert all(f"| {name} |" in bench for name in ("resnet18", "resnet18_nl5", "resnet18_cnl5"))
    assert (tmp_path / "train_check.txt").read_text().splitlines()[-1] == "OK: loss went down, eval equals logged"
