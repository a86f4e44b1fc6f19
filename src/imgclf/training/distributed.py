"""Training on several processes (``torchrun``): the process group, each rank's share of every global
batch and of the evaluation splits, and collectives that end with a one-line error instead of hanging.

The world comes from :class:`imgclf.world.World` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``). The backend is
NCCL on CUDA and gloo on the CPU. Every rank first checks in on the rendezvous store; a rank that does not
within ``timeout_s`` is named in a :class:`~imgclf.errors.DistributedError` (no silent hang), and a
collective that times out later is reported the same way, naming the ranks that did not answer.

Semantics kept from the single-process recipe: ``batch_size`` is the global batch; step ``i`` of an epoch
uses the same global sample indices and augmentation parameters as one process would, and rank ``r``
takes rows ``r*B/W … (r+1)*B/W`` of them. DDP averages the gradients, so each step's update is that of
the global batch (up to float summation order). Batch norm, by default (``sync_bn``), normalises with
the statistics of the whole global batch (:mod:`.global_bn`, any backend), so the step, and each update
of the running statistics, is the single-process one too; without ``sync_bn`` each rank normalises with
its own rows (a different, noisier run). Either way the running statistics are averaged across ranks
after every epoch, so all ranks hold (and rank 0 saves) the same model.

It also holds what a training run does differently as one rank of several: its device, resuming after a
torchrun restart (``TORCHELASTIC_RESTART_COUNT``, ``TORCHELASTIC_RUN_ID``), which rank does the one-off
work, and the checks made before the process group starts (:func:`check_launch`).

Usage::

    check_launch(world.size, training_images=360, batch_size=32)      # before any rank joins
    device = rank_device(resolve_device(config.device), world)        # cuda:LOCAL_RANK under torchrun
    resume, force = restart_resume(run_dir, resume, force, log)        # a restarted group resumes itself
    group = start_group(World.from_env(), device, DistOptions(timeout_s=300))   # None: world of one
    decoded = main_first(group, "decoding", lambda: decode_splits(...))
    net = group.wrap(state.model)                       # DistributedDataParallel
    idx = group.local(perm[i * batch:(i + 1) * batch])  # this rank's rows of the global batch
    group.close()
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from imgclf.errors import DistributedError, ImgclfError, UsageError
from imgclf.progress import Log
from imgclf.training.checkpoint import CheckpointDamaged, list_checkpoints, read_checkpoint
from imgclf.world import DIST_TIMEOUT_S as DEFAULT_TIMEOUT_S
from imgclf.world import World

MAIN_WAIT_S = 6 * 3600.0  # others wait this long for rank 0's one-off work (decoding into the cache)
_GRACE_S = 3.0  # after a failed collective: how long ranks wait to see which others are still answering
T = TypeVar("T")


@dataclass(frozen=True)
class DistOptions:
    """How a multi-process run talks.

    Attributes:
        timeout_s: Seconds a rank waits for the others (to join, or in a collective) before the run
            ends with an error naming the ranks that did not answer.
        sync_bn: Batch-norm statistics over the global batch (:mod:`.global_bn`), as one process
            computes them; ``False``: each rank's own rows.
    """

    timeout_s: float = DEFAULT_TIMEOUT_S
    sync_bn: bool = True


def start_group(
    world: World, device: torch.device, options: DistOptions, *, even_alone: bool = False
) -> Group | None:
    """Join the process group of a multi-process run (``None`` for a world of one, unless ``even_alone``:
    then a group of one, e.g. to measure DDP's own cost; it needs ``MASTER_ADDR``/``MASTER_PORT``).

    Raises:
        UsageError: A bad timeout.
        DistributedError: A rank did not join within ``options.timeout_s``.
    """
    if options.timeout_s <= 0:
        raise UsageError(
            "--dist-timeout must be positive",
            received=options.timeout_s,
            expected="seconds, e.g. 600",
            fix="pass --dist-timeout 600",
        )
    if not world.distributed and not even_alone:
        return None
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=options.timeout_s)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        store = join_store(world, timeout)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"rank {world.rank} could not reach the rendezvous store of rank 0 within "
            f"--dist-timeout {options.timeout_s:g} s",
            received=first_line(exc),
            expected="all ranks started with the same MASTER_ADDR/MASTER_PORT (torchrun sets them)",
            fix="check that rank 0 started and is reachable, or raise --dist-timeout",
        ) from None
    roll_call(store, world, options.timeout_s)
    dist.init_process_group(
        backend,
        store=dist.PrefixStore("imgclf-pg", store),
        rank=world.rank,
        world_size=world.size,
        timeout=timeout,
    )
    return Group(world, backend, options, store, device)


class Group:
    """This rank's view of a multi-process run (see the module docstring)."""

    def __init__(
        self, world: World, backend: str, options: DistOptions, store: Any, device: torch.device
    ) -> None:
        self.world, self.backend, self.options, self.store = world, backend, options, store
        self.device = device
        self._unwrap: Callable[[], None] | None = None
        self._calls = 0  # collectives and waits so far: all ranks make the same sequence of them

    @property
    def size(self) -> int:
        """Number of ranks."""
        return self.world.size

    def facts(self, global_batch: int) -> dict[str, Any]:
        """Provenance of the run's parallelism (recorded in checkpoints and the model file)."""
        return {
            "world_size": self.size,
            "backend": self.backend,
            "global_batch": global_batch,
            "per_rank_batch": global_batch // self.size,
            "sync_bn": self.options.sync_bn,
            "launch_id": launch_id(),
            "bn_running_stats": "global batch, as one process (equal on every rank)"
            if self.options.sync_bn
            else "per-rank batches, averaged across ranks after every epoch",
        }

    def check_batch(self, batch: int) -> int:
        """The per-rank batch of global batch ``batch``.

        Raises:
            UsageError: If ``batch`` does not divide by the world size.
        """
        _check_batch(batch, self.size)
        return batch // self.size

    def local(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch (its size divides by the world size)."""
        per = rows.shape[0] // self.size
        return rows[self.world.rank * per : (self.world.rank + 1) * per]

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items, without padding (sizes differ by at most one)."""
        return _shard(n, self.size, self.world.rank)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` under DistributedDataParallel; with ``sync_bn`` its batch-norm layers first switch
        (in place, until :meth:`unwrap`) to global-batch statistics.

        Buffers are not broadcast from rank 0 at every forward (``forward_sync_buffers=False``): without
        ``sync_bn`` each rank keeps its own batch-norm statistics during an epoch (:meth:`average_buffers`
        joins them), and a second forward before ``backward`` cannot hit the in-place buffer error
        (pytorch #22095).
        """
        from torch.nn.parallel import DistributedDataParallel

        from imgclf.training.global_bn import use_global_batch_norm

        if self.options.sync_bn and self._unwrap is None:
            self._unwrap = use_global_batch_norm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # At construction rank 0's parameters and buffers are broadcast once (they are equal anyway).
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def unwrap(self) -> None:
        """Plain batch-norm layers again in the model :meth:`wrap` was given (e.g. before it is saved)."""
        if self._unwrap is not None:
            self._unwrap()
            self._unwrap = None

    def _collective(self, what: str, fn: Callable[[], T]) -> T:
        self._calls += 1
        try:
            return fn()
        except RuntimeError as exc:
            raise self._failure(what, exc) from None

    def _failure(self, what: str, exc: BaseException) -> DistributedError:
        """Name the ranks that are not answering: every rank that sees the failure checks in once more."""
        tag = f"failed/{self._calls}"
        try:
            self.store.set(f"imgclf/{tag}/{self.world.rank}", "1")
            wait_all(self.store, tag, self.world, _GRACE_S, "did not answer")
        except DistributedError as named:
            return DistributedError(
                f"{str(named.problem)} in {what} within --dist-timeout {self.options.timeout_s:g} s",
                received=first_line(exc),
                fix="check the named rank's log (crashed, killed, stuck), or raise --dist-timeout",
            )
        except RuntimeError:  # the store itself is gone: rank 0 (which holds it) is the one missing
            pass
        return DistributedError(
            f"{what} failed on rank {self.world.rank}: {first_line(exc)}",
            fix="check the other ranks' logs; a rank that crashed or was killed ends the collective",
        )

    def sum_(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Element-wise sums over all ranks (new tensors; inputs unchanged)."""
        out = []
        for t in tensors:
            s = t.detach().clone().to(self._comm_device())
            self._collective("an all-reduce", lambda s=s: dist.all_reduce(s))
            out.append(s.to(t.device))
        return out

    def any_(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (e.g. a stop request seen by one rank)."""
        (total,) = self.sum_(torch.tensor([int(flag)], dtype=torch.int64))
        return bool(total.item())

    def average_buffers(self, model: nn.Module) -> None:
        """Replace each floating-point buffer (batch-norm running mean/var) with its mean over the ranks.

        With ``sync_bn`` the statistics are already those of the global batch on every rank: the mean of
        equal values leaves them as they are, and guarantees every rank holds the same model.
        """
        for buf in model.buffers():
            if buf.is_floating_point():
                (total,) = self.sum_(buf)
                buf.copy_(total / self.size)

    def gather_rows(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """All ranks' :meth:`shard` rows of an ``n``-row result, joined in order (on every rank)."""
        sizes = [_shard(n, self.size, r).stop - _shard(n, self.size, r).start for r in range(self.size)]
        padded = torch.zeros((max(sizes), *rows.shape[1:]), dtype=rows.dtype, device=self._comm_device())
        padded[: rows.shape[0]] = rows.to(padded.device)
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._collective("an all-gather", lambda: dist.all_gather(parts, padded))
        return torch.cat([p[:k] for p, k in zip(parts, sizes, strict=True)]).to(rows.device)

    def main_first(
        self, what: str, fn: Callable[[], T], *, others_too: bool = True, wait_s: float = MAIN_WAIT_S
    ) -> T | None:
        """Rank 0 runs ``fn`` alone; the others wait for it to finish, then run ``fn`` themselves
        (e.g. rank 0 decodes into the cache, then the others read it), or with ``others_too=False``
        return ``None`` (e.g. rank 0 writes the model file; the others only wait).

        Raises:
            DistributedError: On the others, if rank 0 failed or did not finish within ``wait_s``.
        """
        self._calls += 1
        key = f"imgclf/main/{self._calls}"
        if self.world.is_main:
            try:
                result = fn()
            except BaseException as exc:
                self.store.set(key, f"failed: {first_line(exc)}")
                raise
            self.store.set(key, "ok")
            return result
        try:
            self.store.wait([key], timedelta(seconds=wait_s))
            status = self.store.get(key).decode("utf-8", "replace")
        except RuntimeError:
            raise DistributedError(f"rank 0 did not finish {what} within {wait_s:g} s") from None
        if status != "ok":
            raise DistributedError(f"rank 0 failed while {what} ({status})", fix="see rank 0's error")
        return fn() if others_too else None

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def close(self) -> None:
        """Leave the process group."""
        if dist.is_initialized():
            dist.destroy_process_group()


def check_launch(world_size: int, training_images: int, batch_size: int) -> None:
    """What a run of ``world_size`` processes can check before any process group starts, from the
    command line and the scanned dataset alone (every rank finds the same): at least one training image
    per rank, and a global batch (``--batch-size``, or all the images when there are fewer) that divides
    by the world size.

    Raises:
        UsageError: Fewer training images than processes, or a batch that does not divide.
    """
    if world_size <= 1:
        return
    if training_images < world_size:
        raise UsageError(
            f"{world_size} processes for {training_images} training image(s): every process needs at least "
            "one image of every batch",
            received=f"{training_images} training images, world size {world_size}",
            expected=f"at least {world_size} training images (one per process)",
            fix=f"start at most {max(1, training_images)} process(es) (--nproc-per-node / --nproc), "
            "or add training images",
        )
    _check_batch(min(batch_size, training_images), world_size)


def _check_batch(batch: int, size: int) -> None:
    if batch % size:
        raise UsageError(
            f"the global batch {batch} does not divide by the {size} processes",
            received=f"batch {batch}, world size {size}",
            expected=f"a multiple of {size} (--batch-size is the global batch, split across ranks)",
            fix=f"use --batch-size {max(size, batch - batch % size)} or another multiple",
        )


def _shard(n: int, size: int, rank: int) -> slice:
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


# --- meeting the other ranks: the rendezvous store, the roll-call, torchrun's restart facts ---


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


# --- what a training run does differently as one rank of several ---


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
