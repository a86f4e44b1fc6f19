"""Which process this is among how many: the ``torchrun`` environment, read once and checked.

``torchrun`` (torch.distributed elastic) starts one worker process per rank and tells each, through its
environment, who it is: ``RANK`` (0 … ``WORLD_SIZE``-1 over all machines), ``WORLD_SIZE`` and
``LOCAL_RANK`` (its index on this machine, which picks its GPU). A plain ``imgclf train`` or ``imgclf
predict`` has none of them and is the world of one. This module is stdlib-only so that both training and
the light prediction path can read it.

Usage::

    from imgclf.world import World
    world = World.from_env()
    if world.is_main:
        ...  # only rank 0 writes files
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from imgclf.errors import UsageError

ENV_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DIST_TIMEOUT_S = 600.0  # default --dist-timeout: how long a rank waits for the others before failing


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run.

    Attributes:
        rank: Global index of this process, 0 … ``size`` - 1.
        size: Number of processes in the run (1 without torchrun).
        local_rank: Index of this process on its own machine (picks the GPU).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True for rank 0, the one process that writes files and prints results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part (or torchrun started this one)."""
        return self.size > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> World:
        """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as set by torchrun; none of them → world of one.

        Args:
            environ: The environment to read (``os.environ`` when None).

        Returns:
            The checked world.

        Raises:
            UsageError: Some but not all of the variables are set, one is not a whole number, or the rank
                is outside 0 … WORLD_SIZE-1.
        """
        env = os.environ if environ is None else environ
        present = [name for name in ENV_NAMES if env.get(name, "") != ""]
        if not present:
            return cls()
        if "RANK" not in present or "WORLD_SIZE" not in present:
            raise UsageError(
                f"incomplete torchrun environment: only {', '.join(present)} is set",
                received=", ".join(f"{name}={env.get(name, '')!r}" for name in ENV_NAMES),
                expected="RANK and WORLD_SIZE set together (LOCAL_RANK optional), as torchrun sets them",
                fix="start the command with torchrun, or unset RANK, WORLD_SIZE and LOCAL_RANK",
            )
        values = {}
        for name in ENV_NAMES:
            raw = env.get(name, "0" if name == "LOCAL_RANK" else "")
            try:
                values[name] = int(raw)
            except ValueError:
                raise UsageError(
                    f"{name}={raw!r} is not a whole number",
                    expected=f"{name} as torchrun sets it, e.g. 0",
                    fix=f"unset {name} or start the command with torchrun",
                ) from None
        world = cls(rank=values["RANK"], size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"])
        if world.size < 1 or not 0 <= world.rank < world.size or world.local_rank < 0:
            raise UsageError(
                f"RANK={world.rank} does not fit WORLD_SIZE={world.size}",
                expected="WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0",
                fix="start the command with torchrun, or unset RANK, WORLD_SIZE and LOCAL_RANK",
            )
        return world


def reports_alike_errors(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process prints an error that every rank of a torchrun launch finds alike (a bad
    command line, an unreadable dataset): rank 0, every process outside torchrun, and the ranks on other
    machines than rank 0's (``GROUP_RANK`` > 0: they may see another filesystem). The other ranks on rank
    0's machine exit quietly, so such a launch fails with one line instead of one per rank.
    """
    env = os.environ if environ is None else environ
    try:
        world = World.from_env(env)
    except UsageError:
        return True
    return world.is_main or env.get("GROUP_RANK", "0") not in ("", "0")


# How long rank 0 waits, before exiting on an error every rank finds alike, for the other ranks on its
# machine to report the same error and exit first: torchrun stops (SIGTERM) the workers still running
# when one fails, and then lists each of them in its summary as failed too.
PEERS_EXIT_WAIT_S = 30.0


def _launch_dir(env: Mapping[str, str]) -> str | None:
    run_id = env.get("TORCHELASTIC_RUN_ID")
    if not run_id or not run_id.replace("-", "").replace("_", "").isalnum():
        return None
    restart = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    import tempfile

    name = f"imgclf-launch-{run_id}-{restart if restart.isdigit() else 0}"
    return os.path.join(tempfile.gettempdir(), name)


def note_alike_error(environ: Mapping[str, str] | None = None) -> None:
    """A quiet rank (see :func:`reports_alike_errors`) leaves a mark that it stops on the alike error."""
    env = os.environ if environ is None else environ
    folder = _launch_dir(env)
    if folder is None:
        return
    try:
        os.makedirs(folder, exist_ok=True)
        os.close(os.open(os.path.join(folder, f"rank-{env.get('LOCAL_RANK', '')}"), os.O_CREAT | os.O_WRONLY))
    except OSError:
        pass  # the mark only shortens rank 0's wait


def wait_for_quiet_peers(
    environ: Mapping[str, str] | None = None, timeout_s: float = PEERS_EXIT_WAIT_S
) -> None:
    """Rank 0, before exiting on an alike error: wait (bounded) for the other local ranks' marks."""
    import shutil
    import time

    env = os.environ if environ is None else environ
    folder = _launch_dir(env)
    try:
        peers = int(env.get("LOCAL_WORLD_SIZE", "1")) - 1
    except ValueError:
        peers = 0
    if folder is None or peers <= 0:
        return
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                if len(os.listdir(folder)) >= peers:
                    time.sleep(1.0)  # the marks are written just before those processes exit
                    return
            except OSError:
                pass
            time.sleep(0.1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
