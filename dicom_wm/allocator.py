"""Keep freed heap memory for reuse (glibc malloc tuning), once per process.

Embedding, verifying and restoring one slice make some thirty whole-plane
numpy temporaries. With glibc's defaults a large block goes back to the
kernel as soon as it is freed, so every slice's temporaries are fresh pages
that fault in one by one: ~1 500 page faults per classic-predictor call on
a 512 x 512 plane (0.1 with freed memory kept; tests/test_allocator.py). On
the 2-core VM this project is measured on, embed + self-check of such a
slice took 14.1 ms with glibc's defaults and 10.8 ms kept, a verification
10.4 and 7.0 ms (bench/bench_engine.py). Raising glibc's mmap
threshold to 64 MiB and its trim threshold to 256 MiB keeps up to 256 MiB of
freed heap in each process for the next slice instead.

Administrators keep the last word: when ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` is set, or
``DICOM_WM_MALLOC_TUNING=0``, nothing is changed. Elsewhere than glibc on
Linux this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_allocator"]

MMAP_THRESHOLD = 64 << 20  # blocks this large or larger are still mapped (and unmapped) on their own
TRIM_THRESHOLD = 256 << 20  # freed heap above this much is handed back to the kernel
_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_THRESHOLD = -3
_OVERRIDES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_tuned: bool | None = None


def tune_allocator() -> bool:
    """Apply the thresholds above to this process (children it forks inherit
    them; spawned ones call this themselves). True when they are in force."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if (
        not sys.platform.startswith("linux")
        or any(name in os.environ for name in _OVERRIDES)
        or os.environ.get("DICOM_WM_MALLOC_TUNING", "1") == "0"
    ):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library the interpreter runs on
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl's mallopt ignores these
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned
