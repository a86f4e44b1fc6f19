"""The learning-rate schedules (the recipe's Keras time decay; cosine with warm-up) and the epoch's steps.

Usage::

    steps, batch = steps_per_epoch(len(train), config.batch_size)
    lr = lr_at(config, state.step, steps)   # time_decay: lr / (1 + decay * step)
"""

from __future__ import annotations

import math

from imgclf.config import TrainConfig


def steps_per_epoch(n: int, batch_size: int) -> tuple[int, int]:
    """``(steps, batch)``: Keras' ``steps_per_epoch = N // batch`` full batches (one batch if N < batch)."""
    batch = min(batch_size, n)
    return max(1, n // batch), batch


def lr_at(config: TrainConfig, step: int, steps: int = 1) -> float:
    """The learning rate of optimizer step ``step`` (counted from 0) with ``steps`` steps per epoch.

    ``time_decay`` (Keras): ``lr / (1 + decay * step)``. ``cosine``: with ``W = round(warmup * steps)``
    warm-up steps and ``T = epochs * steps`` in all, ``lr * ((step + 1) / W)`` while ``step < W``, then
    ``lr * (1 + cos(pi * p)) / 2`` with ``p = min(1, (step - W) / (T - W))``.
    """
    if config.schedule == "time_decay":
        return config.lr / (1.0 + config.effective_decay * step)
    if config.schedule == "one_cycle":
        return _one_cycle(config, step, steps)
    total = config.epochs * steps
    warm = min(round(config.warmup * steps), total)
    if step < warm:
        return config.lr * ((step + 1) / warm)
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _one_cycle(config: TrainConfig, step: int, steps: int) -> float:
    """fastai's ``fit_one_cycle`` per phase: the frozen epochs are one cycle, the remaining ones another."""
    total = config.epochs * steps
    frozen = min(config.effective_freeze_epochs * steps, total)
    start, length = (0, frozen) if step < frozen else (frozen, total - frozen)
    pos = step - start
    rise = max(1, round(0.25 * length))
    low, high, end = config.lr / 25.0, config.lr, config.lr / 1e5
    if pos < rise:
        return low + (high - low) * 0.5 * (1.0 - math.cos(math.pi * pos / rise))
    p = min(1.0, (pos - rise) / max(1, length - rise))
    return end + (high - end) * 0.5 * (1.0 + math.cos(math.pi * p))
