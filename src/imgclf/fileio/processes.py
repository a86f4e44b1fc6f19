"""Whether another process is still running: asked before taking over what it left behind.

Usage::

    if not pid_alive(recorded_pid):
        take_over_the_lock()
"""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running on this machine: ``False`` only when it certainly is not.

    Used before taking over what a process left behind (a temporary file, a run folder's lock): "cannot
    tell" counts as alive, so a live writer's file or lock is never taken. Our own PID, a PID that exists
    under another user, and every PID on Windows (where ``os.kill(pid, 0)`` would send CTRL_C_EVENT)
    count as alive.
    """
    if os.name == "nt" or pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # exists but belongs to someone else, or we cannot tell
    return True
