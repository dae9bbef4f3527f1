"""Freed memory kept for the next step: glibc's malloc told not to hand large blocks back.

glibc serves a block above its mmap threshold (at most 32 MB, however the threshold moves)
with a fresh mapping and unmaps it when freed, and it trims the top of its heap once
128 kB lie free there. A training step on the CPU frees and asks again for the same large
tensors every step (activations, NL's ``N x N`` maps, their gradients), so each one is
faulted in again, page by page, and zero-filled by the kernel before torch writes it.
Raising both thresholds keeps the freed blocks in the heap for the next step: the same
arithmetic on the same bytes, without the faults (``benchmarks/freed_memory.py`` measures
the gain; docs/benchmarks.md). The process then holds its peak until it ends, which a
training or evaluation process reaches every step anyway.

Only where the user has not chosen: glibc's ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_``, or malloc tunables in ``GLIBC_TUNABLES``, are left to rule.
"""

from __future__ import annotations

import ctypes
import os

# mallopt(3) parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BELOW = 1 << 30  # blocks up to 1 GiB come from the heap and go back to it
TRIM_ABOVE = 1 << 30  # the heap's top is handed back only past 1 GiB free
USERS_CHOICE = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds in this process; True when both were set.

    A no-op (False) off glibc, or where the environment already chooses the allocator or
    its thresholds. Processes forked from this one (loader workers) inherit the setting.
    """
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):  # not a name this system knows: not glibc
        return False
    if not libc.startswith("glibc") or any(os.environ.get(name) for name in USERS_CHOICE):
        return False
    if "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))
