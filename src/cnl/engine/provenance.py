"""Where a run came from: command, code, library versions, devices, processes, batch."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision

from cnl.engine import distributed


def git_commit() -> str | None:
    """The commit of the checkout this package runs from (``+dirty`` with local changes), or
    None for an installed package."""
    folder = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def program_name() -> str:
    """``cnl`` for the command and ``python -m cnl``; else how the program was started."""
    program = Path(sys.argv[0])
    if "cnl" in (program.name, program.parent.name):
        return "cnl"
    return f"python -m {program.parent.name}" if program.name == "__main__.py" else program.name


def cpu_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def cpu_kernels(threads: int | None = None) -> str:
    """What decides a CPU run's sums besides the code: the processor, the instruction set
    whose kernels torch chose (AVX2, AVX512, ...: each adds in its own order) and the threads
    (``threads``, or this process's)."""
    capability = torch.backends.cpu.get_cpu_capability()
    count = threads or torch.get_num_threads()
    return f"{cpu_name()}, torch {torch.__version__} with {capability} kernels, {count} thread{'s' * (count > 1)}"


def provenance(ctx: distributed.Context, batch_size: int, global_batch_size: int, accum_steps: int) -> dict[str, Any]:
    """The same record on every process (device names are gathered from all of them)."""
    from cnl import __version__

    return {
        "command": shlex.join([program_name(), *sys.argv[1:]]),
        "cnl": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "cuda": torch.version.cuda,
        "devices": distributed.gather_objects(device_name(ctx.device)),
        "processes": ctx.world_size,
        "batch_size": batch_size,
        "accum_steps": accum_steps,
        "global_batch_size": global_batch_size,
    }
