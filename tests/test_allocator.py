"""Freed memory is reused rather than faulted in again, unless the user tunes malloc themselves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from chargen.allocator import user_tunes_malloc

needs_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc only"
)

# A 64 MiB block, allocated, touched and freed six times: how many page faults each round costs.
FAULTS_PER_ROUND = """
import resource
from chargen.allocator import retain_freed_memory
took = retain_freed_memory()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = bytearray(64 << 20)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(took, *faults)
"""
PAGES = (64 << 20) // os.sysconf("SC_PAGE_SIZE")


def _rounds(**extra: str) -> tuple[bool, list[int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_ROUND], env=env | extra, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", [int(n) for n in out[1:]]


@needs_glibc
def test_a_freed_block_is_reused_without_faulting_its_pages_again() -> None:
    took, faults = _rounds()
    assert took
    assert faults[0] >= PAGES * 0.9  # the first round touches fresh pages
    assert sum(faults[1:]) < PAGES * 0.05  # the later ones reuse them


@needs_glibc
def test_a_user_malloc_setting_is_left_alone() -> None:
    took, faults = _rounds(MALLOC_MMAP_MAX_="65536")  # glibc's own default, set by hand
    assert not took
    assert min(faults[1:]) >= PAGES * 0.9  # glibc's way: every round maps and faults afresh


def test_malloc_tuning_is_recognised_in_the_environment() -> None:
    assert user_tunes_malloc({"MALLOC_ARENA_MAX": "2"})
    assert user_tunes_malloc({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert not user_tunes_malloc({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F", "OMP_NUM_THREADS": "2"})
