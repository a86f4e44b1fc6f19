"""``imgclf train --nproc N``: start torchrun's launcher on this machine with the same command.

The launcher (``python -m torch.distributed.run --standalone``) starts N worker processes, each running
``imgclf train`` with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; ``--max-restarts K`` lets it restart
the whole group after a worker dies, and the restarted workers resume from the newest checkpoint.

Usage::

    code = launch(["train", "--dataset", "d", "--model", "m.imgclf", "--nproc", "2"], nproc=2, restarts=0)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

LAUNCH_FLAGS = ("--nproc", "--max-restarts")  # ours: consumed here, not passed to the workers


def add_launch_flags(d: argparse._ActionsContainer) -> None:
    """``imgclf train``'s flags for several processes: the launcher's, the timeout, ``--sync-bn``."""
    from imgclf.world import DIST_TIMEOUT_S as DEFAULT_TIMEOUT_S

    d.add_argument(
        "--nproc",
        type=_positive_int,
        metavar="N",
        help="start torchrun's launcher with N processes on this machine (--batch-size stays the global "
        "batch, split N ways); without it, a plain run is one process, and torchrun may start imgclf too",
    )
    d.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="K",
        help="with --nproc: restart the group up to K times after a worker dies; it resumes from the "
        "newest checkpoint (default 0)",
    )
    d.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="under torchrun: a rank that does not join, or a collective that does not finish, within "
        f"SECONDS ends the run with an error naming the rank (exit 10; default {DEFAULT_TIMEOUT_S:g})",
    )
    d.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="under torchrun: batch-norm statistics over the global batch, as one process computes them "
        "(default); --no-sync-bn: each rank normalises with its own rows (a different, noisier run), "
        "running statistics averaged across ranks after every epoch",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


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
