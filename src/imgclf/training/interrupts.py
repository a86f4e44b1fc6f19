"""Training that survives interruption: a checkpoint every epoch; SIGINT/SIGTERM stop it gracefully.

Inside :class:`GracefulInterrupt`, the first Ctrl-C (SIGINT) or SIGTERM only sets a flag that the
training loop polls after every step; it then writes a checkpoint and the CLI exits 130 (SIGINT) or 143
(SIGTERM). A second signal aborts at once (``KeyboardInterrupt`` for SIGINT, :class:`Interrupted` with
exit code 143 for SIGTERM); every file is written atomically, so nothing is left half-written. The
previous handlers are restored on exit. Outside the main thread (where Python cannot install signal
handlers) the block does nothing.

:func:`fit_with_checkpoints` puts it together: ``fit`` with a :class:`CheckpointWriter` callback inside
a :class:`GracefulInterrupt` block.

Usage::

    state = fit_with_checkpoints(config, state, train, val, run_dir=run_dir, info=info)
    with GracefulInterrupt() as stop:
        fit(..., should_stop=stop.requested)
        if stop.requested():
            raise stop.error("checkpoint written", fix="resume with ...")
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from imgclf.config import TrainConfig
from imgclf.data.decode import DecodedSplit
from imgclf.errors import Interrupted
from imgclf.training.checkpoint import Checkpoint, write_checkpoint
from imgclf.training.embeddings import EmbeddingCache
from imgclf.training.loop import Callback, fit
from imgclf.training.state import TrainState

if TYPE_CHECKING:
    from imgclf.training.distributed import Group

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class GracefulInterrupt:
    """Context manager turning SIGINT/SIGTERM into a polled stop request (a second one aborts)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        """True once a first SIGINT or SIGTERM has arrived."""
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """130 after SIGINT, 143 after SIGTERM."""
        return EXIT_CODES.get(self.signum, 130)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        """The signal, in words."""
        return _NAMES.get(self.signum, "a signal")  # type: ignore[arg-type]

    def error(self, problem: str, fix: str) -> Interrupted:
        """The :class:`Interrupted` error to raise once the work is safely stopped."""
        return Interrupted(f"interrupted by {self.name}: {problem}", exit_code=self.exit_code, fix=fix)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            return
        # Second signal: abort now. Atomic writers remove their temporary file on the way out.
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(f"aborted by a second {_NAMES[signal.Signals(signum)]}", exit_code=143)

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:  # None: a handler installed outside Python, which we cannot restore
                signal.signal(sig, handler)
        self._previous.clear()


class CheckpointWriter(Callback):
    """A callback writing a checkpoint after every epoch; :meth:`save` also writes one on demand.

    Each epoch's checkpoint time is added to ``state.timings`` as ``checkpoint_seconds``.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: TrainConfig,
        info: dict[str, Any],
        *,
        resumed: Checkpoint | None = None,
        writes: bool = True,
    ) -> None:
        self.run_dir, self.config, self.info = os.fspath(run_dir), config, info
        self.writes = writes  # False on ranks other than 0 of a multi-process run
        self.written = (resumed.epoch, resumed.epoch_step) if resumed is not None else None
        self.path = resumed.path if resumed is not None else None

    def save(self, state: TrainState) -> str:
        """Write a checkpoint of ``state`` unless the newest one already is of this very position."""
        if not self.writes:
            return os.path.join(self.run_dir, "checkpoints")  # rank 0 writes it
        position = (state.epoch, state.in_epoch.step if state.in_epoch is not None else 0)
        if position != self.written or self.path is None:
            self.path = write_checkpoint(self.run_dir, state, self.config, self.info)
            self.written = position
        return self.path

    def on_epoch_end(self, state: TrainState, record: dict[str, float]) -> None:
        started = time.perf_counter()
        self.save(state)
        if state.timings:
            state.timings[-1]["checkpoint_seconds"] = time.perf_counter() - started


def fit_with_checkpoints(
    config: TrainConfig,
    state: TrainState,
    train: DecodedSplit,
    val: DecodedSplit | None,
    *,
    run_dir: str | os.PathLike,
    info: dict[str, Any],
    resumed: Checkpoint | None = None,
    callbacks: Sequence[Callback] = (),
    group: Group | None = None,
    embedding_cache: EmbeddingCache | None = None,
) -> TrainState:
    """:func:`~imgclf.training.loop.fit` with a checkpoint after every epoch and on SIGINT/SIGTERM.

    Args:
        config, state, train, val, callbacks, embedding_cache: As for ``fit``.
        run_dir: The run folder (checkpoints go to ``RUN/checkpoints/``).
        info: Run-level facts stored in every checkpoint (run_id, class_names, architecture, ...).
        resumed: The checkpoint ``state`` was restored from, if any.
        group: The process group of a multi-process run: only rank 0 writes checkpoints.

    Raises:
        Interrupted: After the first SIGINT/SIGTERM, once the current step is done and a checkpoint of
            it is written (exit code 130/143; the message says how to resume).
    """
    writer = CheckpointWriter(
        run_dir, config, info, resumed=resumed, writes=group is None or group.world.is_main
    )
    with GracefulInterrupt() as stop:
        state = fit(
            config,
            state,
            train,
            val,
            callbacks=[writer, *callbacks],
            should_stop=stop.requested,
            group=group,
            embedding_cache=embedding_cache,
        )
        if state.interrupted:
            path = writer.save(state)
            where = (
                f"in epoch {state.epoch + 1}" if state.in_epoch is not None else f"after epoch {state.epoch}"
            )
            raise stop.error(
                f"stopped {where}; checkpoint {path}",
                fix=f"resume with: imgclf train --resume {shlex.quote(os.fspath(run_dir))}",
            )
    return state
