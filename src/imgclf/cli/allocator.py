"""Process-level speed settings the command line applies (the library leaves them to the caller).

glibc's malloc returns large freed blocks to the operating system at once, so every convolution's
activation buffer is mapped and unmapped again on each call; keeping freed memory in the process makes
batch prediction markedly faster. That tuning holds for the main heap only: a thread's own malloc arena
(``imgclf serve`` runs inference on a worker thread) still maps its large buffers, and inference there
ran slower than on the main thread, so every thread is told to use the main heap (one arena). The
figures: docs/performance.md.

Usage::

    from imgclf.cli.allocator import tune_allocator
    tune_allocator()          # once, early; a no-op where glibc is not the allocator
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_done = False


def tune_allocator() -> bool:
    """Ask glibc to keep freed memory (no mmap/munmap per activation buffer) in one heap for all threads.

    Set ``IMGCLF_NO_MALLOC_TUNING=1`` to skip it. The cost: memory freed by the process is reused by
    it rather than returned to the system while it runs.

    Returns:
        True if the settings were applied.
    """
    global _done
    if _done or os.environ.get("IMGCLF_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(
            libc.mallopt(option, value) == 1
            for option, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30), (_M_ARENA_MAX, 1))
        )
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    _done = ok
    return ok
