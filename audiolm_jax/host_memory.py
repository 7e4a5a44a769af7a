"""Keep freed host memory in the process instead of handing it back to the kernel.

XLA:CPU allocates each execution's large temporaries (hundreds of MB for a 10 s Mimi encode or
an LM training step) with glibc ``malloc``. glibc serves big requests, and every request made
from a worker thread's arena, with a fresh ``mmap`` and unmaps it on ``free``, so the next call
page-faults every page in again: about 45,000 minor faults and 0.13 s of kernel time per 10 s
Mimi encode on the 2-core box (BUILD_NOTES.md, "Mimi speed"). With one arena, no ``mmap`` for
large blocks and no trimming, the pages stay mapped and are reused by the next call.

The cost is that the process keeps its peak heap until it exits (as a caching allocator does),
so this is opt-in for library users; the CLI and the benchmarks turn it on. Set
``AUDIOLM_JAX_KEEP_HOST_MEMORY=0`` to leave glibc's defaults alone. Must run before JAX starts
its thread pools (i.e. before the first JAX computation) to cover their arenas.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied = None


def keep_freed_host_memory() -> bool:
    """Tune glibc malloc to reuse freed memory (see the module docstring). Returns whether
    the settings are in effect: False off glibc/Linux or when disabled by the environment.
    Idempotent."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("AUDIOLM_JAX_KEEP_HOST_MEMORY", "1") in ("0", "false", "no"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, 1),  # worker threads share the main (brk) heap ...
        (_M_MMAP_MAX, 0),  # ... which then serves large blocks too ...
        (_M_TRIM_THRESHOLD, 2**31 - 1),  # ... and keeps freed pages mapped
    ))
    _applied = ok
    return ok
