"""Class imbalance: counts per split, the warning, loss weights, the balanced sampler, the keep-best measure.

``--balance weights`` weighs each class's loss by ``N / (C * count)`` (scikit-learn's "balanced" class
weights), so every class contributes equally to the gradient. ``--balance sampler`` draws each epoch's
samples (with replacement) so that every class is equally likely; the draw uses the run's order generator,
which a checkpoint rewinds to the epoch's start, so a resumed run repeats it exactly. Multi-label runs
count an image once for each of its labels; there ``weights`` becomes BCE's ``pos_weight`` (negatives per
positive of each class) and ``sampler`` weighs an image by its rarest label.

Usage::

    labels = np.array([0] * 9 + [1] * 2)
    counts = class_counts(labels, 2)                        # array([9, 2])
    lines = count_lines({"training": {"cat": 9, "dog": 2}})  # ["training: cat 9, dog 2"]
    weights = class_weights(labels, 2)                      # tensor([0.6111, 2.7500])
    order = sampler_order(labels, 2, 12, torch.Generator().manual_seed(0))  # classes drawn equally
    key = keep_monitor(TrainConfig(), labels, 2)            # "val_balanced_accuracy" (4.5x > 3x)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from imgclf.config import TrainConfig

IMBALANCE_RATIO = 3.0  # the largest class more than this many times the smallest: "imbalanced"
BALANCED_MONITOR = "val_balanced_accuracy"


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class: a bincount of class indices, or column sums of a multi-hot ``(N, C)`` array."""
    if labels.ndim == 2:
        return labels.astype(np.int64).sum(axis=0)
    return np.bincount(labels.astype(np.int64), minlength=num_classes)[:num_classes]


def num_classes_of(labels: np.ndarray) -> int:
    """The class count labels imply: the width of multi-hot labels, else the largest index + 1."""
    if labels.ndim == 2:
        return int(labels.shape[1])
    return int(labels.max()) + 1 if labels.size else 0


def imbalance_ratio(counts: np.ndarray) -> float:
    """Largest class count over smallest (``inf`` when a class has none, 1.0 for no data)."""
    if counts.size == 0 or counts.max() == 0:
        return 1.0
    return float("inf") if counts.min() == 0 else float(counts.max() / counts.min())


def is_imbalanced(counts: np.ndarray) -> bool:
    """Whether the largest class is more than :data:`IMBALANCE_RATIO` times the smallest."""
    return imbalance_ratio(counts) > IMBALANCE_RATIO


def count_lines(counts: Mapping[str, Mapping[str, int]]) -> list[str]:
    """One line per non-empty split, ``"training: cat 900, dog 100"``, from :meth:`Dataset.counts`."""
    return [
        f"{split}: " + ", ".join(f"{name} {n}" for name, n in per_class.items())
        for split, per_class in counts.items()
        if sum(per_class.values())
    ]


def imbalance_warning(training: Mapping[str, int], balance: str, recipe: str = "seed") -> str | None:
    """The warning (or, when ``balance`` already handles it, the note) for imbalanced training counts.

    The advice names first the mode that was steadier with ``recipe`` on the measured sets
    (docs/performance.md, "Class imbalance"): ``sampler`` with the seed recipe's high, unwarmed learning
    rate, ``weights`` with the others.
    """
    counts = np.array(list(training.values()), dtype=np.int64)
    if not is_imbalanced(counts):
        return None
    names = list(training)
    big, small = int(counts.argmax()), int(counts.argmin())
    ratio = imbalance_ratio(counts)
    how_much = "none of the smallest" if ratio == float("inf") else f"{ratio:.1f}x"
    what = (
        f"classes are imbalanced in training: {names[big]!r} has {counts[big]} images, {names[small]!r} "
        f"{counts[small]} ({how_much})"
    )
    judged = f"--keep best and --patience judge by {BALANCED_MONITOR}"
    first, second = ("sampler", "weights") if recipe == "seed" else ("weights", "sampler")
    if balance != "none":
        return f"note: {what}; balanced with --balance {balance}; {judged}"
    return (
        f"warning: {what}; accuracy can look good by always answering the majority class: train with "
        f"--balance {first} (or --balance {second}), collect more {names[small]!r} images, and read the "
        f"balanced accuracy and macro-F1 in the report ({judged})"
    )


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Loss weights ``N / (C * count)`` per class (0 for a class without images), float32.

    For multi-hot labels: BCE's ``pos_weight``, negatives over positives per class (1 where a class has
    no positive or no negative image).
    """
    counts = class_counts(labels, num_classes).astype(np.float64)
    if labels.ndim == 2:
        negatives = len(labels) - counts
        ok = (counts > 0) & (negatives > 0)
        return torch.from_numpy(np.where(ok, negatives / np.maximum(counts, 1), 1.0).astype(np.float32))
    total = counts.sum()
    weights = np.divide(total, num_classes * counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.from_numpy(weights.astype(np.float32))


def sample_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Each image's drawing weight: ``1 / count`` of its class (multi-hot: of its rarest label; images
    without any label weigh as an average class), float64."""
    counts = class_counts(labels, num_classes).astype(np.float64)
    inverse = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    if labels.ndim == 2:
        per = np.where(labels.astype(bool), inverse[None, :], 0.0).max(axis=1)
        per[per == 0] = inverse[inverse > 0].mean() if (inverse > 0).any() else 1.0
        return torch.from_numpy(per)
    return torch.from_numpy(inverse[labels.astype(np.int64)])


def sampler_order(
    labels: np.ndarray, num_classes: int, count: int, generator: torch.Generator
) -> torch.Tensor:
    """``count`` sample indices drawn with replacement so every class is equally likely (seeded by
    ``generator``, which is all a resumed epoch needs to repeat the draw)."""
    weights = sample_weights(labels, num_classes)
    return torch.multinomial(weights, count, replacement=True, generator=generator)


def keep_monitor(config: TrainConfig, labels: np.ndarray, num_classes: int) -> str:
    """The history key ``keep=best`` and ``patience`` judge by: ``config.monitor``, except that on
    imbalanced training data loss and accuracy (which the majority class dominates) become
    :data:`BALANCED_MONITOR` (multi-label: ``val_macro_f1``)."""
    if config.monitor in ("val_loss", "val_accuracy") and is_imbalanced(class_counts(labels, num_classes)):
        return "val_macro_f1" if labels.ndim == 2 else BALANCED_MONITOR
    return config.monitor
