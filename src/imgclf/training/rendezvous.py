"""Meeting the other ranks: the rendezvous store, the roll-call that names a rank that is missing, and
torchrun's restart facts (``TORCHELASTIC_RESTART_COUNT``, ``TORCHELASTIC_RUN_ID``).

Usage::

    store = join_store(world, timedelta(seconds=600))
    roll_call(store, world, 600)        # DistributedError naming the ranks that did not check in
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from imgclf.errors import DistributedError, UsageError
from imgclf.world import World


def restart_count(environ: dict[str, str] | None = None) -> int:
    """How often torchrun has restarted this worker group (``TORCHELASTIC_RESTART_COUNT``; 0 without)."""
    env = os.environ if environ is None else environ
    raw = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return int(raw) if raw.isdigit() else 0


def launch_id(environ: dict[str, str] | None = None) -> str | None:
    """The torchrun launch this worker belongs to (``TORCHELASTIC_RUN_ID``, kept across restarts)."""
    env = os.environ if environ is None else environ
    return env.get("TORCHELASTIC_RUN_ID") or None


def join_store(world: World, timeout: timedelta) -> Any:
    """The rendezvous key-value store: torchrun's own (its agent holds it), else one rank 0 serves at
    ``MASTER_ADDR:MASTER_PORT`` without waiting for the others (the roll-call then names who is missing).
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        store, _, _ = next(dist.rendezvous("env://", world.rank, world.size, timeout=timeout))
        # The agent's store outlives a restart of the workers: keys of an earlier attempt (gloo's peer
        # addresses, our roll-call) must not be seen again.
        return dist.PrefixStore(f"imgclf/attempt-{restart_count()}", store)
    addr, port = env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", "")
    if not addr or not port.isdigit():
        raise UsageError(
            "RANK and WORLD_SIZE are set but MASTER_ADDR/MASTER_PORT are not",
            received=f"MASTER_ADDR={addr!r} MASTER_PORT={port!r}",
            expected="the address and port of rank 0, as torchrun sets them",
            fix="start the command with torchrun, or set MASTER_ADDR and MASTER_PORT on every rank",
        )
    return dist.TCPStore(
        addr, int(port), world.size, is_master=world.rank == 0, timeout=timeout, wait_for_workers=False
    )


def roll_call(store: Any, world: World, timeout_s: float) -> None:
    """Every rank checks in; after ``timeout_s`` the ranks that did not are named."""
    store.set(f"imgclf/joined/{world.rank}", "1")
    wait_all(store, "joined", world, timeout_s, f"did not join within --dist-timeout {timeout_s:g} s")


def wait_all(store: Any, tag: str, world: World, timeout_s: float, problem: str) -> None:
    keys = [f"imgclf/{tag}/{r}" for r in range(world.size)]
    try:
        store.wait(keys, timedelta(seconds=timeout_s))
    except RuntimeError:
        missing = [r for r, key in enumerate(keys) if not store.check([key])]
        raise DistributedError(
            f"{ranks_text(missing)} {problem} (seen by rank {world.rank} of {world.size})",
            expected=f"all {world.size} ranks started and answering",
            fix="check that every rank started (its log, its node), or raise --dist-timeout",
        ) from None


def ranks_text(ranks: list[int]) -> str:
    if not ranks:
        return "a rank"
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
