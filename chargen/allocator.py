"""Freed memory stays in the process for the next step, instead of going back to the OS.

glibc's malloc serves large blocks with mmap (above 128 KiB at first, up to 32 MiB as it adapts)
and gives them back with munmap when they are freed. A training step of the default model
allocates and frees several hundred MB of activations and gradients, so every step faulted in
fresh zeroed pages: on a 2-core AMD EPYC (a KVM guest) that was 11-12 s of system time in a 34 s
run of 100 steps, and the steps ran 1.7× slower than with the pages kept. With mmap off and the
heap never trimmed, freed blocks are reused as they are; the price is the high-water mark staying
resident (about 100 MB more at the default size). mallopt changes the running process, so this
needs no restart and no environment variable; a user who tunes malloc (MALLOC_*_ variables,
GLIBC_TUNABLES) keeps their setting.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes: free heap tops under 2 GiB stay


def user_tunes_malloc(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the user chose malloc's behaviour themselves (then it is theirs to keep)."""
    return any(name.startswith("MALLOC_") for name in env) or "glibc.malloc" in env.get("GLIBC_TUNABLES", "")


def retain_freed_memory(env: Mapping[str, str] = os.environ) -> bool:
    """Keep freed blocks for reuse; True when glibc took the setting. Elsewhere (macOS, Windows,
    musl, whose mallopt does nothing) and where the user tunes malloc, nothing changes."""
    if not sys.platform.startswith("linux") or user_tunes_malloc(env):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
