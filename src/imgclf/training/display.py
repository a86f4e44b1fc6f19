"""Human-facing progress on stderr: progress bars (plain periodic lines when stderr is not a terminal, see
:func:`imgclf.progress.bar`) and one-line epoch summaries.

Only the CLI uses this module; the library reports progress through callbacks and never prints.

Usage::

    console = stderr_console()
    cb = EpochProgress(console)
    imgclf.train(..., callbacks=[cb], decode_progress=decode_bar_factory(console))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from rich.console import Console
from rich.progress import Progress

from imgclf.config import TrainConfig
from imgclf.progress import LineProgress, bar, bar_factory
from imgclf.training.loop import Callback
from imgclf.training.state import TrainState


def decode_bar_factory(console: Console) -> Callable[[str, int], Callable[[int], None]]:
    """``factory(split, total)`` → a per-image callback advancing a 'decoding <split>' bar."""

    bars = bar_factory(console)

    def factory(split: str, total: int) -> Callable[[int], None]:
        return bars(f"decoding {split:<10}", total)

    return factory


class EpochProgress(Callback):
    """A progress bar per epoch with running loss/accuracy, then a one-line summary."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | LineProgress | None = None
        self.epochs = 0
        self.losses: list[float] = []

    def on_train_begin(
        self, config: TrainConfig, state: TrainState, steps: int, device: torch.device
    ) -> None:
        self.epochs = config.epochs
        start = f" (resuming after epoch {state.epoch})" if state.epoch else ""
        if state.in_epoch is not None:
            start = f" (resuming in epoch {state.epoch + 1} after step {state.in_epoch.step})"
        self.console.print(
            f"training {config.arch} on {device} for {config.epochs} epochs, "
            f"{steps} steps of {config.batch_size}{start}"
        )

    def on_epoch_begin(self, epoch: int, steps: int) -> None:
        self.losses = []
        self.progress = bar(self.console, f"epoch {epoch:>3}/{self.epochs}", steps)

    def on_step_end(self, step: int, steps: int, loss: float | None) -> None:
        if self.progress is None:
            return
        if loss is not None:
            self.losses.append(loss)
        info = f"loss {sum(self.losses) / len(self.losses):.4f}" if self.losses else ""
        self.progress.update(self.progress.tasks[0].id, completed=step, info=info)

    def on_epoch_end(self, state: TrainState, record: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        parts = [
            f"epoch {int(record['epoch']):>3}/{self.epochs}",
            f"loss {record['loss']:.4f}",
            f"acc {record['accuracy']:.4f}",
        ]
        if "val_loss" in record:
            parts += [f"val_loss {record['val_loss']:.4f}", f"val_acc {record['val_accuracy']:.4f}"]
        parts.append(f"lr {record['lr']:.4g}")
        if state.timings:  # wall-clock time lives apart from the (deterministic) history
            parts.append(f"{state.timings[-1]['seconds']:.1f}s")
        self.console.print("  ".join(parts))

    def on_train_end(self, state: TrainState) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if state.stopped_early:
            self.console.print(f"stopped early after epoch {state.epoch} (best epoch {state.best_epoch})")
