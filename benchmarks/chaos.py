"""Chaos test of training: stop a tiny deterministic run again and again, resume it, lose nothing.

A run (resnet18_cnl5, 32 px, loader workers, --deterministic) is stopped ``--kills`` times,
at moments drawn from ``--seed`` after its start line, by SIGKILL or SIGTERM, and each time
started again with ``--resume auto``; then it runs to the end. It passes when the final
weights are bit-identical to an uninterrupted run's, metrics.jsonl lists every epoch exactly
once, summary.json is complete and no temporary file is left.

    python benchmarks/chaos.py --kills 20 --epochs 8 --out runs/chaos     # minutes
    (tests/test_interruptions.py runs it with a few kills)

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from cnl.data.synth import SynthConfig, generate
from cnl.engine import read_checkpoint


def train_command(data: Path, output: Path, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "cnl", "train", "--data-root", str(data), "--dataset", "cub",
        "--model", "resnet18_cnl5", "--img-size", "32", "--epochs", str(epochs), "--warmup-epochs", "1",
        "--global-batch-size", "4", "--lr", "0.01", "--lr-steps", str(epochs - 1), "--workers", "2",
        "--device", "cpu", "--seed", "3", "--deterministic", "--output", str(output), "--resume", "auto",
    ]  # fmt: skip


def start(command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def progress(output: Path) -> str:
    path = output / "checkpoints" / "last.pt"
    if not path.exists():
        return "no checkpoint yet"
    state = read_checkpoint(path)
    return f"last.pt at epoch {state['epoch']}, step {state['step']}"


def chaos(output: Path, kills: int, epochs: int, seed: int, window: tuple[float, float]) -> list[str]:
    """Stop the run ``kills`` times; returns one line per stop."""
    draw = random.Random(seed)
    data = output / "data"
    lines = []
    for attempt in range(1, kills + 1):
        process = start(train_command(data, output / "chaos", epochs))
        assert process.stdout is not None
        process.stdout.readline()  # its start line: the imports are done, set-up begins
        delay = draw.uniform(*window)
        number = draw.choice([signal.SIGKILL, signal.SIGTERM])
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(number)
            what = f"{number.name} {delay:.2f} s after the start line"
        else:
            what = f"(the run had ended before its {number.name} at {delay:.2f} s)"
        process.communicate()
        lines.append(f"stop {attempt}: {what}; exit {process.returncode}; {progress(output / 'chaos')}")
    return lines


def check(output: Path, epochs: int) -> list[str]:
    """The problems found, none when everything holds."""
    problems = []
    reference = read_checkpoint(output / "reference" / "checkpoints" / "last.pt")["model"]
    final = read_checkpoint(output / "chaos" / "checkpoints" / "last.pt")["model"]
    different = [key for key in reference if not torch.equal(reference[key], final[key])]
    if different:
        problems.append(f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[0]}")
    logged = [json.loads(line)["epoch"] for line in (output / "chaos" / "metrics.jsonl").read_text().splitlines()]
    if logged != list(range(1, epochs + 1)):
        problems.append(f"metrics.jsonl lists epochs {logged}, expected 1..{epochs} once each")
    summary = json.loads((output / "chaos" / "summary.json").read_text())
    expected = json.loads((output / "reference" / "summary.json").read_text())
    missing = sorted(set(expected) - set(summary))
    if missing or summary["best_top1"] != expected["best_top1"]:
        problems.append(f"summary.json differs: missing {missing}, best_top1 {summary.get('best_top1')}")
    leftovers = [str(p) for p in (output / "chaos").rglob("*.tmp")]
    if leftovers:
        problems.append(f"temporary files left: {leftovers}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="draws the moments and the signals")
    parser.add_argument("--window", type=float, nargs=2, default=[0.2, 3.0], help="seconds after the start line")
    parser.add_argument("--out", default="runs/chaos")
    args = parser.parse_args(argv)
    output = Path(args.out)
    generate(output / "data", SynthConfig(classes=4, train_per_class=5, test_per_class=3, image_size=40))
    started = time.perf_counter()
    # The uninterrupted run trains beside the stopped ones: its weights do not depend on the
    # machine's load, and a process mostly waits on one core (imports, a tiny model).
    reference = start(train_command(output / "data", output / "reference", args.epochs))
    lines = chaos(output, args.kills, args.epochs, args.seed, (args.window[0], args.window[1]))
    reference.communicate()
    final = start(train_command(output / "data", output / "chaos", args.epochs))
    final.communicate()
    lines.append(f"then to the end: exit {final.returncode}; {progress(output / 'chaos')}")
    problems = check(output, args.epochs)
    print("\n".join(lines))
    print(f"{args.kills} stops (seed {args.seed}) in {time.perf_counter() - started:.0f} s: "
          + ("; ".join(problems) if problems else "weights bit-identical to the uninterrupted run, every epoch "
             "logged once, summary complete, no temporary file"))  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
