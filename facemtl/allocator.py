"""Process-wide tuning of glibc's malloc for the many large, short-lived tensors of CPU inference.

glibc serves blocks above its mmap threshold (dynamic, 128 KiB to 32 MiB) straight from the kernel and hands
them back on free, and it trims the heap top above its trim threshold; either way the next tensor of that size
is page-faulted in afresh. The detector allocates tensors of 1-35 MB per band and per crop chunk; raising
both thresholds lets freed blocks be reused, which ``tools/bench_detect.py`` measures at +20% photos/s with
16 photos per call and +5% with one (run it with ``FACEMTL_MALLOC_TUNING=0`` for the other side). It changes
where memory comes from, never a result; PyTorch's CPU tuning guide gets the same from jemalloc or tcmalloc.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform

MMAP_THRESHOLD = 64 << 20
"""Blocks above this still come from (and go back to) the kernel: a huge photo's buffers are returned."""
TRIM_THRESHOLD = 256 << 20
"""Free memory kept at the heap top before it is given back."""
OPT_OUT_VARIABLE = "FACEMTL_MALLOC_TUNING"

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def on_glibc() -> bool:
    """True on Linux with glibc, the only malloc this module tunes."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@functools.cache
def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds, once per process; True when done.

    Nothing happens off glibc, when ``FACEMTL_MALLOC_TUNING=0``, or when the user already set glibc's own
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` variables (their choice stands).
    """
    if os.environ.get(OPT_OUT_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    if not on_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
