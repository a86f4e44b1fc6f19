"""``imgclf train --nproc N``: start torchrun's launcher on this machine with the same command.

The launcher (``python -m torch.distributed.run --standalone``) starts N worker processes, each running
``imgclf train`` with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; ``--max-restarts K`` lets it restart
the whole group after a worker dies, and the restarted workers resume from the newest checkpoint.

Usage::

    code = launch(["train", "--dataset", "d", "--model", "m.imgclf", "--nproc", "2"], nproc=2, restarts=0)
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

LAUNCH_FLAGS = ("--nproc", "--max-restarts")  # ours: consumed here, not passed to the workers


def worker_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` without the launcher's own flags (``--nproc N``, ``--max-restarts K``, or ``=`` forms)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            out.append(arg)
    return out


def launcher_command(argv: Sequence[str], nproc: int, restarts: int) -> list[str]:
    """The torchrun command that runs ``imgclf <argv>`` on ``nproc`` local processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={restarts}",
        "-m",
        "imgclf",
        *worker_argv(argv),
    ]


def launch(argv: Sequence[str], nproc: int, restarts: int) -> int:
    """Run the launcher and wait for it; its exit code (0 when every worker succeeded)."""
    return subprocess.call(launcher_command(argv, nproc, restarts))
