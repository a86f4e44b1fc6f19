"""The learning rate each optimizer step actually used, checked against each recipe's schedule formula.

The optimizer is wrapped so every call to ``step`` records its groups' learning rates: what is checked
is what the weights were updated with, not what the loop meant to use. The table below holds one oracle
per recipe — independent formulas, not calls into the code under test. To cover a new recipe, add a row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from helpers import tiny_train_config
from imgclf.config import PreprocessSpec, TrainConfig
from imgclf.data.decode import DecodedSplit
from imgclf.training.loop import fit
from imgclf.training.state import create_state


@dataclass(frozen=True)
class Schedule:
    """A recipe's config and the learning rate it must use at step ``k`` (0-based, over the whole run)."""

    config: Callable[[], TrainConfig]
    lr: Callable[[TrainConfig, int, int], float]  # (config, k, steps per epoch) -> learning rate


def _seed_config() -> TrainConfig:
    # decay larger than the recipe's lr/epochs so that step k and epoch k give clearly different rates
    return tiny_train_config(epochs=3, batch_size=4, lr=0.1, decay=0.05, preprocess=PreprocessSpec(16, 16))


def _cosine(c: TrainConfig, k: int, spe: int) -> float:
    """``docs``/config: linear warm-up over ``warmup`` epochs, then cosine from ``lr`` to 0 at the end."""
    total = c.epochs * spe
    warm = min(round(c.warmup * spe), total)
    if k < warm:
        return c.lr * (k + 1) / warm
    return c.lr * (1 + math.cos(math.pi * min(1.0, (k - warm) / max(1, total - warm)))) / 2


def _one_cycle(c: TrainConfig, k: int, spe: int) -> float:
    """fastai's ``fit_one_cycle`` (pct_start 0.25, div 25, div_final 1e5), run once per phase: the
    head-only epochs are one cycle, the rest another. Each half is a cosine between its two rates."""
    total = c.epochs * spe
    frozen = min(c.effective_freeze_epochs * spe, total)
    first, n = (0, frozen) if k < frozen else (frozen, total - frozen)
    i, up = k - first, max(1, round(n / 4))

    def anneal(start: float, end: float, done: float) -> float:
        return end + (start - end) * (1 + math.cos(math.pi * done)) / 2

    if i < up:
        return anneal(c.lr / 25, c.lr, i / up)
    return anneal(c.lr, c.lr / 1e5, min(1.0, (i - up) / max(1, n - up)))


SCHEDULES = {
    # Keras' SGD(lr, decay): lr / (1 + decay * iterations), iterations counted per optimizer step from 0.
    "seed: Keras time decay per step": Schedule(_seed_config, lambda c, k, spe: c.lr / (1 + c.decay * k)),
    "seed: default decay lr/epochs": Schedule(
        lambda: _seed_config().replace(decay=None), lambda c, k, spe: c.lr / (1 + (c.lr / c.epochs) * k)
    ),
    # The stable recipe's schedule (warm-up 1 epoch), and a warm-up that is not a whole number of steps.
    "stable: cosine, warm-up 1 epoch": Schedule(
        lambda: _seed_config().replace(schedule="cosine", warmup=1.0), _cosine
    ),
    "cosine, warm-up 0.5 epoch": Schedule(
        lambda: _seed_config().replace(schedule="cosine", warmup=0.5), _cosine
    ),
    # The finetune recipe's schedule: one cycle over the run, and one per phase after a head-only epoch.
    "finetune: one cycle": Schedule(
        lambda: _seed_config().replace(schedule="one_cycle", epochs=4), _one_cycle
    ),
    "one cycle per phase, 1 head-only epoch": Schedule(
        lambda: _seed_config().replace(schedule="one_cycle", epochs=4, freeze_epochs=1), _one_cycle
    ),
}


def _split(n: int, size: int = 16) -> DecodedSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 2
    return DecodedSplit(images, labels, [f"img{i}.png" for i in range(n)], ["0" * 32] * n)


def _record_lrs(optimizer) -> list[float]:
    """Wrap ``optimizer.step`` (on this instance only) to record the learning rate of every step."""
    seen: list[float] = []
    step = optimizer.step

    def recording_step(*args, **kwargs):
        rates = {group["lr"] for group in optimizer.param_groups}
        assert len(rates) == 1, f"parameter groups disagree on the learning rate: {rates}"
        seen.append(rates.pop())
        return step(*args, **kwargs)

    optimizer.step = recording_step
    return seen


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("n", [13, 3], ids=["13 images: 3 steps per epoch", "fewer images than a batch"])
def test_every_step_uses_the_recipes_learning_rate(name, n):
    schedule = SCHEDULES[name]
    config = schedule.config()
    spe = max(1, n // config.batch_size)  # Keras: steps_per_epoch = N // batch, at least one batch
    state = create_state(config, 2)
    seen = _record_lrs(state.optimizer)
    fit(config, state, _split(n))
    expected = [schedule.lr(config, k, spe) for k in range(config.epochs * spe)]
    assert len(seen) == len(expected) == state.step
    assert seen == pytest.approx(expected, rel=1e-12, abs=0)
    for epoch, record in enumerate(state.history, start=1):  # the history shows each epoch's last rate
        assert record["lr"] == pytest.approx(expected[epoch * spe - 1], rel=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_an_interruption_mid_epoch_does_not_restart_or_skip_the_schedule(name):
    """Stopped after 4 steps (inside epoch 2) and continued: the rates are those of a straight run."""
    schedule = SCHEDULES[name]
    config = schedule.config()
    n, spe = 13, 3
    state = create_state(config, 2)
    seen = _record_lrs(state.optimizer)
    fit(config, state, _split(n), should_stop=lambda: len(seen) == 4)
    assert state.interrupted and len(seen) == 4
    fit(config, state, _split(n))
    expected = [schedule.lr(config, k, spe) for k in range(config.epochs * spe)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=0)


def test_the_seed_oracle_is_not_the_epoch_formula():
    """Guards the table itself: per step and per epoch must differ for the test above to mean anything."""
    config = _seed_config()
    per_step = [SCHEDULES["seed: Keras time decay per step"].lr(config, k, 3) for k in range(9)]
    per_epoch = [config.lr / (1 + config.decay * (k // 3)) for k in range(9)]
    assert not all(math.isclose(a, b) for a, b in zip(per_step, per_epoch, strict=True))


@pytest.mark.parametrize("warmup", [0.0, 1.0, 2.5])
def test_lr_at_counts_one_step_per_epoch_by_default(warmup):
    from imgclf.training.schedule import lr_at

    config = _seed_config().replace(schedule="cosine", warmup=warmup, epochs=4)
    assert [lr_at(config, k) for k in range(4)] == pytest.approx([_cosine(config, k, 1) for k in range(4)])


def test_the_cosine_oracle_warms_up_then_decays():
    """Guards the oracle: with 3 steps per epoch and 1 warm-up epoch it rises to lr at step 2, then falls."""
    config = _seed_config().replace(schedule="cosine", warmup=1.0)
    rates = [_cosine(config, k, 3) for k in range(9)]
    assert rates[:4] == pytest.approx([config.lr / 3, 2 * config.lr / 3, config.lr, config.lr])
    assert all(a > b for a, b in zip(rates[3:-1], rates[4:], strict=True)) and rates[-1] > 0
