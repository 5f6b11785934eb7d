"""Process-level costs of a CPU run. First: keep freed tensor memory in the process instead of handing
it back to the kernel after every step.

glibc serves large blocks with ``mmap`` and trims the heap eagerly, so a CPU training step that frees and
re-allocates its activations (tens of MiB a step) page-faults them in again each time: on this 2-core
machine the MNIST speed-run spent ~9 s of a 24 s process in the kernel. A fixed mmap threshold at glibc's
maximum (32 MiB) and a 1 GiB trim threshold make the allocator reuse the blocks; the epoch went from
13.2 s to 8.3 s (README, "What each optimisation bought"). A no-op off glibc.
Second: the process's age, for the start-up cost in metrics.json.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import time

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for this parameter on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024
_done = False


def keep_freed_memory() -> bool:
    """Set the thresholds once per process; True when they were set (glibc on Linux), False otherwise."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not _done:
        log.debug("mallopt refused the thresholds; the allocator keeps its defaults")
    return _done


_IMPORTED_AT = time.monotonic()


def process_age_s() -> float:
    """Seconds since this process started (Linux: from /proc, 10 ms ticks; elsewhere: since dsconv's
    import). In-process callers such as tests see their own process's age."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return round(time.monotonic() - _IMPORTED_AT, 3)
