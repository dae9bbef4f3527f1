"""A cnl process keeps the memory a step frees for the next step (cnl.engine.allocator)."""

import os
import subprocess
import sys

import pytest

from cnl.engine.allocator import keep_freed_memory

GLIBC = "CS_GNU_LIBC_VERSION" in os.confstr_names and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
pytestmark = pytest.mark.skipif(not GLIBC, reason="glibc's malloc thresholds")
MB48 = 12 << 20  # float32 elements: above glibc's largest mmap threshold (32 MB)
PAGES = (MB48 * 4) // os.sysconf("SC_PAGE_SIZE")

FAULTS = f"""
import resource, sys, torch
if sys.argv[1] == "cnl":
    from cnl.cli import main
    main(["list-models"])
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):  # the first blocks come from the kernel, and alignment splits some
    torch.ones({MB48})
before = faults()
for _ in range(3):
    torch.ones({MB48})
print((faults() - before) // 3)
"""


def page_faults(how: str, **env: str) -> int:
    """Page faults of a 48 MB tensor allocated and freed again, as every training step does."""
    done = subprocess.run(
        [sys.executable, "-c", FAULTS, how], capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    return int(done.stdout.split()[-1])


@pytest.fixture(scope="module")
def refaulted():
    """Pages a plain process faults in again (glibc's defaults); a skip where that is few."""
    plain = page_faults("plain")
    if plain < PAGES // 2:
        pytest.skip(f"this system faults {plain} of {PAGES} pages in again (huge pages?): nothing to keep")
    return plain


def test_after_cnl_starts_a_freed_tensor_is_reused_without_faulting_its_pages_in_again(refaulted):
    assert page_faults("cnl") < PAGES // 20, f"{PAGES} pages, as a plain process faults {refaulted}"


def test_the_users_own_malloc_thresholds_are_left_alone(monkeypatch, refaulted):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    assert keep_freed_memory() is False
    assert page_faults("cnl", MALLOC_MMAP_THRESHOLD_="65536") >= PAGES // 2  # as the user asked
