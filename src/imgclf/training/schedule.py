"""The learning-rate schedule and the epoch's step count, as the recipe (Keras) defines them.

Usage::

    steps, batch = steps_per_epoch(len(train), config.batch_size)
    lr = lr_at(config, state.step)          # lr / (1 + decay * step)
"""

from __future__ import annotations

from imgclf.config import TrainConfig


def steps_per_epoch(n: int, batch_size: int) -> tuple[int, int]:
    """``(steps, batch)``: Keras' ``steps_per_epoch = N // batch`` full batches (one batch if N < batch)."""
    batch = min(batch_size, n)
    return max(1, n // batch), batch


def lr_at(config: TrainConfig, step: int) -> float:
    """Keras time decay: ``lr / (1 + decay * step)`` with ``step`` counted from 0."""
    return config.lr / (1.0 + config.effective_decay * step)
