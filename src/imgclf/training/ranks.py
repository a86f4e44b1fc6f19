"""What a training run does differently as one rank of several (torchrun): its device, resuming after a
torchrun restart, and which rank does the one-off work.

Usage::

    device = rank_device(resolve_device(config.device), world)      # cuda:LOCAL_RANK under torchrun
    resume, force = restart_resume(run_dir, resume, force, log)      # a restarted group resumes itself
    decoded = main_first(group, "decoding", lambda: decode_splits(...))
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from imgclf.errors import ImgclfError
from imgclf.progress import Log
from imgclf.training.checkpoint import CheckpointDamaged, list_checkpoints, read_checkpoint
from imgclf.training.distributed import Group
from imgclf.training.rendezvous import launch_id, restart_count
from imgclf.world import World

T = TypeVar("T")


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device of this rank: ``cuda`` (no index) becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


@contextlib.contextmanager
def alike_on_every_rank(world: World) -> Iterator[None]:
    """Mark the errors raised inside as ones every rank of a launch finds alike (the command line, the
    dataset scanned before the process group starts), so that one rank reports them for all
    (:func:`imgclf.world.reports_alike_errors`) and a bad launch fails with one line, not one per rank.
    """
    try:
        yield
    except ImgclfError as exc:
        if world.distributed:
            exc.alike_on_every_rank = True  # type: ignore[attr-defined]
        raise


def restart_resume(run_dir: str, resume: bool, force: bool, log: Log) -> tuple[bool, bool]:
    """``(resume, force)`` for this start: after a torchrun restart the run continues from its newest
    checkpoint by itself (or, killed before the first checkpoint, starts over in its own run folder).
    Checkpoints of an earlier launch (another ``TORCHELASTIC_RUN_ID``) are not resumed silently.
    """
    restarts = restart_count()
    if restarts == 0 or resume:
        return resume, force
    launches = [_launch_of(path) for path in list_checkpoints(run_dir)[:1]]
    if launches and launches[0] == launch_id():
        log(f"note: torchrun restart {restarts}: resuming from the newest checkpoint in {run_dir}")
        return True, force
    if launches:  # an earlier launch's run: the first attempt's own checks apply again
        return resume, force
    log(f"note: torchrun restart {restarts}: no checkpoint yet, starting the run over")
    return False, True


def _launch_of(path: str) -> str | None:
    """The torchrun launch that wrote a checkpoint (``None`` if unknown or unreadable)."""
    try:
        state = read_checkpoint(path).state
    except CheckpointDamaged:
        return launch_id()  # damaged newest file: resuming sets it aside and takes the one before
    return (state.get("distributed") or {}).get("launch_id")


def main_first(group: Group | None, what: str, fn: Callable[[], T], *, others_too: bool = True) -> T | None:
    """``fn()`` in one process; under several, rank 0 first (see :meth:`Group.main_first`)."""
    if group is None:
        return fn()
    return group.main_first(what, fn, others_too=others_too)


def note_world_change(checkpoint_state: dict[str, Any], group: Group | None, log: Log) -> None:
    """Warn when a run resumes with another number of processes than its checkpoint was written by."""
    saved = (checkpoint_state.get("distributed") or {}).get("world_size", 1)
    now = group.size if group is not None else 1
    if saved != now:
        log(
            f"warning: the checkpoint was written by a run of {saved} process(es), this one has {now}: "
            "the global batch and sample order are kept, but the result is not bitwise that of an "
            "uninterrupted run (batch-norm statistics and float sums are per-rank)"
        )
