"""Keep freed memory in the process instead of handing it back to the kernel (glibc only).

Why: a training or prediction step of the image networks allocates activations and gradients of
hundreds of MB per batch and frees them at the end of the step. glibc serves every allocation
above its mmap threshold (at most 32 MB, however it adapts) with a fresh ``mmap`` and returns it
with ``munmap`` on free, so the next step faults every page in again and the kernel zero-fills
it: on the layout-aware CNN's training step (batch 32, 512 x 512) that was ~160,000 page faults
and more system CPU than user CPU per step (benchmarks/bench_eval_overheads.py). With the mmap threshold
at 1 GiB those buffers come from the heap and are reused by the next step, and the trim
threshold of 2 GiB keeps freed heap memory up to that size instead of returning it. The numbers
computed do not change; the process keeps (up to 2 GiB of) its peak memory reserved until it
exits.

``FINNEX_MALLOC_TUNING=0`` leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes a C int: 2 GiB less one byte

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True when applied, False
    on another C library or with ``FINNEX_MALLOC_TUNING=0``."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("FINNEX_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # musl and others: no mallopt with these meanings
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied = ok
    return ok


__all__ = ["keep_freed_memory"]
