"""``imgclf train --nproc N``: start torchrun's launcher on this machine with the same command.

Before anything starts, the command's inputs are checked once, here (the dataset readable, at least one
training image per process, a global batch that divides by N): a bad launch fails with one line and the
documented exit code instead of one error per worker. The launcher is torch's own
(``torch.distributed.run --standalone``, run by this module so that a worker's failure ends it with the
worker's exit code and the worker's own one-line error, not torch's traceback). It starts N worker
processes, each running ``imgclf train`` with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set, each with
``OMP_NUM_THREADS`` = the CPU cores / N (unless set); ``--max-restarts K`` lets it restart the whole group
after a worker dies, and the restarted workers resume from the newest checkpoint.

Usage::

    code = launch(["train", "--dataset", "d", "--model", "m.imgclf", "--nproc", "2"], nproc=2, restarts=0)
"""

from __future__ import annotations

import argparse
import os
import signal
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
    """The launcher command that runs ``imgclf <argv>`` on ``nproc`` local processes."""
    return [
        sys.executable,
        "-m",
        "imgclf.cli.torchrun",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={restarts}",
        "-m",
        "imgclf",
        *worker_argv(argv),
    ]


def threads_per_process(nproc: int) -> int:
    """Torch threads for each of ``nproc`` processes on this machine: its usable cores shared out (>= 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // nproc)


def launch(argv: Sequence[str], nproc: int, restarts: int) -> int:
    """Run the launcher and wait for it; 0 when every worker succeeded, else the first failed worker's
    exit code (128 + N for a worker killed by signal N).

    Each worker gets ``OMP_NUM_THREADS`` = :func:`threads_per_process` unless it is set (torch's launcher
    would set 1 and print a banner about it).
    """
    from imgclf.cli.common import err

    env = dict(os.environ)
    if not env.get("OMP_NUM_THREADS"):
        threads = threads_per_process(nproc)
        env["OMP_NUM_THREADS"] = str(threads)
        err(f"note: {nproc} processes, {threads} torch thread(s) each (set OMP_NUM_THREADS to choose)")
    return subprocess.call(launcher_command(argv, nproc, restarts), env=env)


def _run_launcher(args: Sequence[str]) -> int:
    """torch's launcher (``torch.distributed.run``) with ``args``; a failed worker's exit code on failure.

    A worker that exits with a code has said why in its own line on stderr; only a worker killed by a
    signal gets a line here. torch's traceback and per-worker log lines are not printed.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from imgclf.cli.common import err

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        run(parse_args(list(args)))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode >= 0:
            return failure.exitcode or 1
        try:
            name = signal.Signals(-failure.exitcode).name
        except ValueError:
            name = f"signal {-failure.exitcode}"
        err(f"error: rank {rank} (pid {failure.pid}) was killed by {name}; see that rank's output above")
        return 128 - failure.exitcode
    return 0


if __name__ == "__main__":
    sys.exit(_run_launcher(sys.argv[1:]))
