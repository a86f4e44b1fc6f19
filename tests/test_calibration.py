"""Reliability bins, ECE and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.calibration import expected_calibration_error, fit_temperature, reliability, softmax
from imgclf.errors import UsageError


def test_ece_of_a_perfectly_calibrated_and_an_overconfident_model():
    # 10 predictions at confidence 0.8, 8 right: calibrated; at 1.0 with 8 right: off by 0.2
    labels = np.array([0] * 8 + [1] * 2)
    calibrated = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(calibrated, labels) == pytest.approx(0.0)
    sure = np.tile([1.0, 0.0], (10, 1))
    assert expected_calibration_error(sure, labels) == pytest.approx(0.2)
    bins = reliability(sure, labels)
    assert bins[-1].count == 10 and bins[-1].accuracy == pytest.approx(0.8)
    assert sum(b.count for b in bins) == 10


def test_temperature_fitted_on_an_overconfident_model_lowers_ece():
    rng = np.random.default_rng(0)
    n, c = 2000, 3
    labels = rng.integers(0, c, n)
    # true calibrated logits, then multiplied by 4: the same ranking, far too sure
    base = rng.normal(0, 1, (n, c))
    base[np.arange(n), labels] += 1.0
    logits = base * 4.0
    t = fit_temperature(logits, labels)
    assert 3.0 < t < 5.0
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, t), labels)
    assert after < before / 3
    assert (softmax(logits, t).argmax(1) == softmax(logits).argmax(1)).all()  # the winner never changes


def test_temperature_agrees_with_a_grid_search():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    logits = rng.normal(0, 3, (300, 2))
    logits[np.arange(300), labels] += 2
    grid = np.exp(np.linspace(np.log(0.05), np.log(100), 20001))

    def nll(t):
        p = softmax(logits, t).astype(np.float64)
        return -np.mean(np.log(np.clip(p[np.arange(300), labels], 1e-300, None)))

    best = grid[np.argmin([nll(t) for t in grid])]
    assert fit_temperature(logits, labels) == pytest.approx(best, rel=1e-3)


def test_fit_temperature_refuses_no_images():
    with pytest.raises(UsageError, match="cannot fit a temperature on no images"):
        fit_temperature(np.zeros((0, 2)), np.zeros(0))


def test_a_temperature_at_either_bound_stays_inside_it():
    """A model whose scores point the wrong way fits the largest temperature, a perfectly separating one
    the smallest; exp(log(100)) is 100.00000000000004, which the model file's manifest check refuses."""
    from imgclf.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE

    labels = np.array([0, 1] * 50)
    wrong = np.where(np.eye(2)[labels] > 0, -3.0, 3.0)
    assert fit_temperature(wrong, labels) == MAX_TEMPERATURE
    right = np.where(np.eye(2)[labels] > 0, 0.5, -0.5)  # a small margin: the likelihood still rises at 0.05
    assert MIN_TEMPERATURE <= fit_temperature(right, labels) < MIN_TEMPERATURE * 1.0001
