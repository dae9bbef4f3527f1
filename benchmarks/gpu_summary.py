"""The summary of benchmarks/run_gpu.sh: one row per step (status, seconds, limit, its
figures), then the tables the bench steps printed. Reads LOG_DIR (steps.tsv and a log per
step), writes OUT_DIR/summary.md and OUT_DIR/summary.json (with each log's tail) and
prints the Markdown. The script calls it after every step, so a run cut short leaves the
summary of what it did.

Usage: python benchmarks/gpu_summary.py LOG_DIR OUT_DIR [SECONDS]
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

BENCH_STEPS = ("bench-module", "bench-models", "bench-compile")
LOG_TAIL = 3000  # characters of each step's log kept in summary.json
PYTEST_TOTALS = re.compile(r"\b\d+ (passed|failed|skipped|errors?|deselected)\b")


def table(text: str) -> list[list[str]]:
    """The rows of the first Markdown table in ``text``, header first, without the rule."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows if not row.startswith("|---")]


def table_text(text: str) -> str:
    """A bench's table and the line that says how it was measured, without the log's noise."""
    return "\n".join(line for line in text.splitlines() if line.startswith(("|", "Median of")))


def bench_figures(name: str, text: str) -> str:
    rows = table(text)
    if len(rows) < 2:
        return ""
    header, body = rows[0], rows[1:]
    if name == "bench-module":  # module, order, kernel, ran, ms: the fastest path of each module
        fastest: dict[str, list[str]] = {}
        for row in body:
            if row[0] not in fastest or float(row[4]) < float(fastest[row[0]][4]):
                fastest[row[0]] = row
        return "; ".join(f"{m}: fastest {r[1]} {r[2]} ({r[3]}) {r[4]} ms" for m, r in fastest.items())
    train, memory = header.index("vs first"), header.index("peak memory (MB)") + 1
    first = header.index("first train + inference step (s)")
    if name == "bench-compile":  # the same model eager and compiled: what compiling costs up front
        return "; ".join(f"{row[0]}: train step {row[train]}, first steps {row[first]} s" for row in body)
    return "; ".join(f"{row[0]}: train step {row[train]}, memory {row[memory]}" for row in body[1:])


def figures(name: str, text: str) -> str:
    """One line of what a step found."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if name in BENCH_STEPS and table(text):
        return bench_figures(name, text)
    totals = [line.strip("= ") for line in lines if PYTEST_TOTALS.search(line)]
    if totals:
        return totals[-1]
    epochs = [line for line in lines if line.startswith("epoch ")]  # cnl train's line per epoch
    if epochs:
        return " ".join(epochs[-1].split())
    answers = [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]
    if answers and "top1" in answers[-1]:  # cnl eval --json
        return "top1 {top1:.2f}, top5 {top5:.2f} on {count} images".format(**answers[-1])
    return lines[-1][:200] if lines else "no output"


def summarise(logs: Path, out: Path, seconds: str = "") -> str:
    with open(logs / "steps.tsv", newline="") as file:
        steps = list(csv.DictReader(file, delimiter="\t"))
    texts = {path.stem: path.read_text(errors="replace") for path in logs.glob("*.log")}
    for s in steps:
        s["figures"] = figures(s["step"], texts.get(s["step"], ""))
        s["log_tail"] = texts.get(s["step"], "")[-LOG_TAIL:]
    machine = next(iter(texts.get("machine", "").splitlines()), "machine unknown")
    counts = {status: sum(s["status"] == status for s in steps) for status in ("passed", "failed", "timed out")}
    lines = [
        f"run_gpu.sh on {machine}: {seconds or '?'} s in all; "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + f", {len(steps) - sum(counts.values())} skipped",
        "",
        "| step | status | seconds | limit (s) | figures |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['limit']} | {s['figures']} |" for s in steps]
    tables = {name: table_text(texts[name]) for name in BENCH_STEPS if table(texts.get(name, ""))}
    for name, text in tables.items():
        lines += ["", f"### {name}", "", text]
    markdown = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(markdown)
    record = {"machine": machine, "seconds": seconds, "steps": steps, "tables": tables}
    (out / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
    return markdown


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""), end="")
