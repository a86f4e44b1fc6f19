"""How far a model's confidence can be trusted: reliability bins, the expected calibration error (ECE), and
temperature scaling fitted on held-out logits.

Temperature scaling (Guo et al., 2017) divides every logit by one number ``T`` fitted to minimise the
negative log-likelihood of held-out labels; it never changes which class wins, only how sure the model
says it is. The fitted ``T`` travels in the model file and the classifier applies it on every path.

Usage::

    bins = reliability(probs, labels)                    # per-bin confidence, accuracy, count
    ece = expected_calibration_error(probs, labels)
    t = fit_temperature(logits, labels)                  # > 1 softens an over-confident model
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.errors import UsageError

if TYPE_CHECKING:
    from imgclf.classifier import Classifier

ECE_BINS = 15
# The fitted temperature is kept inside these bounds: beyond them the model's scores carry no usable
# ranking of confidence (everything ~uniform or everything ~certain).
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 100.0


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin: its range, how many predictions fell in it, their mean confidence and accuracy."""

    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


def _checked(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if p.ndim != 2 or len(p) != len(y):
        raise UsageError(
            "probabilities and labels do not match",
            received=f"probabilities {p.shape}, labels {y.shape}",
            expected="probabilities (N, C) and N labels",
            fix="pass one row of probabilities per label",
        )
    return p, y


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """Predictions grouped by top-1 confidence into ``bins`` equal-width bins over (0, 1].

    Args:
        probs: Probabilities (N, C).
        labels: True class indices (N,).
        bins: Number of bins.

    Returns:
        One :class:`ReliabilityBin` per bin, empty bins included (count 0).
    """
    p, y = _checked(probs, labels)
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    correct = (p.argmax(axis=1) == y) if len(p) else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 cannot occur for a top-1 probability
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        sel = which == i
        n = int(sel.sum())
        out.append(
            ReliabilityBin(
                low=float(edges[i]),
                high=float(edges[i + 1]),
                count=n,
                confidence=float(conf[sel].mean()) if n else 0.0,
                accuracy=float(correct[sel].mean()) if n else 0.0,
            )
        )
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the reliability bins.

    0 means the model is right exactly as often as it says; 0.2 means it is off by 20 points on average.
    """
    table = reliability(probs, labels, bins)
    total = sum(b.count for b in table)
    if not total:
        return 0.0
    return float(sum(b.count * abs(b.confidence - b.accuracy) for b in table) / total)


def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` under ``softmax(logits / T)``.

    A one-dimensional convex problem in ``log T``: golden-section search over
    [``MIN_TEMPERATURE``, ``MAX_TEMPERATURE``], deterministic and free of optimiser settings.

    Args:
        logits: Raw (uncalibrated) logits (N, C) of held-out images.
        labels: Their true class indices (N,).

    Raises:
        UsageError: If there are no images or the shapes do not match.
    """
    z, y = _checked(logits, labels)
    if not len(z):
        raise UsageError(
            "cannot fit a temperature on no images",
            received="0 images",
            expected="at least one labelled held-out image",
            fix="calibrate on a dataset with a validation split",
        )
    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(z, y, math.exp(a)), _nll(z, y, math.exp(b))
    for _ in range(80):  # the bracket shrinks by 0.618 per step: far below float precision at the end
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(z, y, math.exp(b))
    # exp(log(bound)) can land a rounding step outside the bound (exp(log(100)) = 100.00000000000004),
    # which the model file's manifest check refuses.
    return min(MAX_TEMPERATURE, max(MIN_TEMPERATURE, math.exp((lo + hi) / 2)))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64 inside, float32 out)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


# Fewer held-out images than this and a fitted temperature says more about the sample than the model
# (a handful of all-correct images drives it to the lower bound): training then leaves the model as is.
MIN_CALIBRATION_IMAGES = 50


def calibration_block(logits: np.ndarray, labels: np.ndarray, split: str) -> dict[str, Any]:
    """Fit a temperature on held-out ``logits`` and describe it as the model file stores it.

    Returns:
        ``{"temperature", "split", "images", "ece_before", "ece_after"}``: the manifest's ``calibration``.
    """
    t = fit_temperature(logits, labels)
    return {
        "temperature": t,
        "split": split,
        "images": len(labels),
        "ece_before": expected_calibration_error(softmax(logits), labels),
        "ece_after": expected_calibration_error(softmax(logits, t), labels),
    }


def calibrate_classifier(
    classifier: Classifier, images: np.ndarray, labels: np.ndarray, *, split: str = "validation"
) -> dict[str, Any]:
    """Fit ``classifier``'s temperature on held-out uint8 ``images`` and store it in its manifest.

    Any earlier calibration is replaced (the fit uses the raw logits). Saving the classifier writes the
    block into the model file, and every prediction path applies it.

    Returns:
        The ``calibration`` block (see :func:`calibration_block`).
    """
    from imgclf.classifier import predict_logits

    logits = predict_logits(classifier.model, images, classifier.preprocess, device=classifier.device)
    block = calibration_block(logits.numpy(), np.asarray(labels), split)
    classifier.manifest["calibration"] = block
    return block
