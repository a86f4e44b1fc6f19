"""Classification metrics (the report scikit-learn's ``classification_report`` gives, and more). A model
on a dataset folder: :mod:`imgclf.dataset_evaluation`; the text report: :mod:`imgclf.reports`.

Usage::

    report = classification_report(y_true, y_pred, ["Parasitized", "Uninfected"])
    cm = confusion_matrix(y_true, y_pred, 2)
    evaluation = evaluate_probabilities(probs, labels, paths, ["Parasitized", "Uninfected"])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.errors import UsageError

if TYPE_CHECKING:
    pass

ONE_CLASS_SHARE = 0.95  # "predicts one class for (nearly) all images": this share of them or more


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, num_classes: int
) -> np.ndarray:
    """Counts (num_classes, num_classes): rows are true classes, columns predicted classes.

    Raises:
        UsageError: If the label arrays differ in length or hold a label outside ``0 .. num_classes - 1``.
    """
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise UsageError(
            "true and predicted labels differ in length",
            received=f"{len(t)} and {len(p)}",
            expected="one prediction per true label",
            fix="pass arrays of equal length",
        )
    both = np.concatenate([t, p])
    if both.size and (both.min() < 0 or both.max() >= num_classes):
        raise UsageError(
            "label out of range",
            received=f"labels {int(both.min())} .. {int(both.max())}",
            expected=f"class indices 0 .. {num_classes - 1}",
            fix="map labels to class indices first",
        )
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # scikit-learn's zero_division default: 0.0 where the denominator is 0.
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def classification_report(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support; accuracy; macro and weighted averages.

    The layout and numbers equal ``sklearn.metrics.classification_report(..., output_dict=True,
    labels=range(C), target_names=class_names)`` (``zero_division`` = 0).
    """
    cm = confusion_matrix(y_true, y_pred, len(class_names)).astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    total = support.sum()
    report: dict[str, Any] = {}
    for i, name in enumerate(class_names):
        report[name] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1-score": float(f1[i]),
            "support": int(support[i]),
        }
    report["accuracy"] = float(tp.sum() / total) if total else 0.0
    report["macro avg"] = {
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1-score": float(f1.mean()),
        "support": int(total),
    }

    def weighted(values: np.ndarray) -> float:
        return float(np.average(values, weights=support)) if total else 0.0

    report["weighted avg"] = {
        "precision": weighted(precision),
        "recall": weighted(recall),
        "f1-score": weighted(f1),
        "support": int(total),
    }
    return report


def class_balanced_scores(confusion: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Balanced accuracy and macro-F1 from confusion counts (rows: true classes).

    Balanced accuracy is the mean recall over the classes present (scikit-learn's
    ``balanced_accuracy_score``); macro-F1 averages F1 over every class (``f1_score(average="macro")``
    with ``labels=range(C)`` and ``zero_division=0``). Keys are ``PREFIX + balanced_accuracy`` and
    ``PREFIX + macro_f1``.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    present = support > 0
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    return {
        f"{prefix}balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        f"{prefix}macro_f1": float(f1.mean()) if f1.size else 0.0,
    }


@dataclass
class Evaluation:
    """Everything an evaluation produces."""

    report: dict[str, Any]
    confusion: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    paths: list[str]
    class_names: list[str]
    misclassified: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Share of correctly classified images."""
        return float(self.report["accuracy"])

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes present (not fooled by a majority class)."""
        return class_balanced_scores(self.confusion)["balanced_accuracy"]

    @property
    def macro_f1(self) -> float:
        """F1 averaged over the classes, each counting equally."""
        return float(self.report["macro avg"]["f1-score"])

    def summary_lines(self) -> list[str]:
        """The measures that weigh every class equally, one ``name value`` line each (for reports)."""
        return [f"balanced accuracy {self.balanced_accuracy:.4f}", f"macro-F1 {self.macro_f1:.4f}"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: report, balanced accuracy, macro-F1, confusion matrix, misclassified files."""
        return {
            "report": self.report,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "confusion_matrix": self.confusion.tolist(),
            "class_names": self.class_names,
            "misclassified": self.misclassified,
        }


def evaluate_probabilities(
    probabilities: np.ndarray, labels: np.ndarray, paths: Sequence[str], class_names: Sequence[str]
) -> Evaluation:
    """Build an :class:`Evaluation` from predicted probabilities and true labels."""
    pred = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=np.int64)
    names = list(class_names)
    wrong = [
        {"path": p, "true": names[t], "predicted": names[q], "confidence": float(probabilities[i, q])}
        for i, (p, t, q) in enumerate(zip(paths, labels.tolist(), pred.tolist(), strict=True))
        if t != q
    ]
    return Evaluation(
        report=classification_report(labels, pred, names),
        confusion=confusion_matrix(labels, pred, len(names)),
        probabilities=probabilities,
        labels=labels,
        paths=list(paths),
        class_names=names,
        misclassified=wrong,
    )


def usefulness_warnings(evaluation: Evaluation, split: str) -> list[str]:
    """Warnings when a model is useless on ``split``: one class for (nearly) every image, or no better
    than always answering the most common true class (chance level).

    Args:
        evaluation: The model's evaluation on the split.
        split: Its name, for the message.

    Returns:
        Zero, one or two one-line warnings.
    """
    n = len(evaluation.labels)
    if n < 2 or len(evaluation.class_names) < 2 or evaluation.labels.ndim != 1:
        return []
    pred = evaluation.probabilities.argmax(axis=1)
    top = int(np.bincount(pred, minlength=len(evaluation.class_names)).argmax())
    share = float((pred == top).mean())
    out = []
    if share >= ONE_CLASS_SHARE:
        out.append(
            f"the saved model predicts {evaluation.class_names[top]!r} for {int((pred == top).sum())} of "
            f"{n} {split} images"
        )
    baseline = float(np.bincount(evaluation.labels).max() / n)
    if evaluation.accuracy <= baseline:
        out.append(
            f"the saved model's {split} accuracy {evaluation.accuracy:.4f} is at chance level (always "
            f"answering the most common class scores {baseline:.4f})"
        )
    return out


# --- multi-label ----------------------------------------------------------------------------------------

DEFAULT_THRESHOLD = 0.5  # a class without a positive validation image keeps this decision threshold


def choose_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class decision thresholds maximising each class's F1 on ``(N, C)`` probabilities and 0/1 targets.

    Each threshold lies halfway between the lowest probability it accepts and the next lower one (so a
    prediction is ``probability >= threshold``); among equally good cuts the highest is taken. A class
    without positives keeps :data:`DEFAULT_THRESHOLD`.
    """
    n, c = probabilities.shape if probabilities.ndim == 2 else (0, targets.shape[-1])
    out = np.full(c, DEFAULT_THRESHOLD, dtype=np.float64)
    for j in range(c if n else 0):
        y = targets[:, j] > 0.5
        positives = int(y.sum())
        if positives == 0:
            continue
        order = np.argsort(-probabilities[:, j], kind="stable")
        scores, hits = probabilities[order, j].astype(np.float64), y[order]
        f1 = 2.0 * np.cumsum(hits) / (np.arange(1, n + 1) + positives)
        cut_ok = np.r_[scores[:-1] > scores[1:], True]  # a cut never splits equal scores
        best = int(np.argmax(np.where(cut_ok, f1, -1.0)))
        below = scores[best + 1] if best + 1 < n else 0.0
        out[j] = float(np.clip((scores[best] + below) / 2.0, 0.0, 1.0))
    return out


def average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """Area under the step precision-recall curve, as scikit-learn's ``average_precision_score``
    (0.0 for a class without positives, and for no images)."""
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], (targets[order] > 0.5).astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # the last index of each distinct score
    tps = np.cumsum(y)[last]
    if tps[-1] == 0:
        return 0.0
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass
class MultiLabelEvaluation:
    """A multi-label evaluation: per-class precision/recall/F1 at the model's thresholds, micro and
    macro F1, per-class average precision and their mean (mAP), and exact-match accuracy.

    ``report`` has :func:`classification_report`'s layout (so the text report prints it): a row per
    class, ``accuracy`` (every label of an image right), ``macro avg`` and ``weighted avg``; the micro
    average and mAP are in ``micro`` and ``average_precision``.
    """

    report: dict[str, Any]
    micro: dict[str, float]
    average_precision: dict[str, float]
    probabilities: np.ndarray
    labels: np.ndarray  # (N, C) 0/1
    predicted: np.ndarray  # (N, C) bool
    paths: list[str]
    class_names: list[str]
    thresholds: list[float]

    @property
    def accuracy(self) -> float:
        """Share of images whose whole label set is right (scikit-learn's subset accuracy)."""
        return float(self.report["accuracy"])

    @property
    def macro_f1(self) -> float:
        """F1 averaged over the classes."""
        return float(self.report["macro avg"]["f1-score"])

    @property
    def micro_f1(self) -> float:
        """F1 over all (image, class) decisions pooled."""
        return self.micro["f1-score"]

    @property
    def mean_average_precision(self) -> float:
        """Mean average precision over the classes with at least one positive image."""
        present = [v for k, v in self.average_precision.items() if self.report[k]["support"] > 0]
        return float(np.mean(present)) if present else 0.0

    @property
    def balanced_accuracy(self) -> float:
        """Mean over classes of (true-positive rate + true-negative rate) / 2."""
        return multilabel_scores(self.labels, self.predicted)["balanced_accuracy"]

    def summary_lines(self) -> list[str]:
        """Micro-F1, macro-F1 and mAP, one ``name value`` line each."""
        return [
            f"micro-F1 {self.micro_f1:.4f}",
            f"macro-F1 {self.macro_f1:.4f}",
            f"mAP {self.mean_average_precision:.4f}",
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: report, micro average, average precision, thresholds, wrong label sets."""
        names = self.class_names
        wrong = [
            {
                "path": p,
                "true": [names[j] for j in np.flatnonzero(t)],
                "predicted": [names[j] for j in np.flatnonzero(q)],
            }
            for p, t, q in zip(self.paths, self.labels > 0.5, self.predicted, strict=True)
            if not np.array_equal(t, q)
        ]
        return {
            "task": "multi_label",
            "report": self.report,
            "micro avg": self.micro,
            "micro_f1": self.micro_f1,
            "macro_f1": self.macro_f1,
            "average_precision": self.average_precision,
            "mAP": self.mean_average_precision,
            "thresholds": dict(zip(names, self.thresholds, strict=True)),
            "class_names": names,
            "misclassified": wrong,
        }


def multilabel_scores(targets: np.ndarray, predicted: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Macro-F1 and the mean per-class balanced accuracy of 0/1 ``(N, C)`` decisions."""
    t, p = targets > 0.5, predicted.astype(bool)
    tp, fp, fn = (t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0)
    tn = (~t & ~p).sum(0)
    f1 = _ratio(2.0 * tp, 2.0 * tp + fp + fn)
    balanced = (_ratio(tp.astype(np.float64), tp + fn) + _ratio(tn.astype(np.float64), tn + fp)) / 2
    return {
        f"{prefix}balanced_accuracy": float(balanced.mean()) if balanced.size else 0.0,
        f"{prefix}macro_f1": float(f1.mean()) if f1.size else 0.0,
    }


def evaluate_multilabel(
    probabilities: np.ndarray,
    labels: np.ndarray,
    paths: Sequence[str],
    class_names: Sequence[str],
    thresholds: Sequence[float],
) -> MultiLabelEvaluation:
    """Build a :class:`MultiLabelEvaluation` from ``(N, C)`` probabilities, 0/1 labels and thresholds.

    Per-class numbers equal scikit-learn's ``precision_recall_fscore_support(average=None,
    zero_division=0)``; ``micro`` its ``average="micro"``; ``average_precision`` its
    ``average_precision_score`` per class.
    """
    names = list(class_names)
    t = np.asarray(labels) > 0.5
    p = np.asarray(probabilities) >= np.asarray(thresholds, dtype=np.float64)[None, :]
    tp, fp, fn = (t & p).sum(0).astype(np.float64), (~t & p).sum(0), (t & ~p).sum(0)
    support = t.sum(0)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    report: dict[str, Any] = {}
    for i, name in enumerate(names):
        report[name] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1-score": float(f1[i]),
            "support": int(support[i]),
        }
    total = int(support.sum())
    report["accuracy"] = float((t == p).all(1).mean()) if len(t) else 0.0
    report["macro avg"] = {
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1-score": float(f1.mean()),
        "support": total,
    }

    def weighted(values: np.ndarray) -> float:
        return float(np.average(values, weights=support)) if total else 0.0

    report["weighted avg"] = {
        "precision": weighted(precision),
        "recall": weighted(recall),
        "f1-score": weighted(f1),
        "support": total,
    }
    stp, sfp, sfn = tp.sum(), fp.sum(), fn.sum()
    micro = {
        "precision": float(stp / (stp + sfp)) if stp + sfp else 0.0,
        "recall": float(stp / (stp + sfn)) if stp + sfn else 0.0,
        "f1-score": float(2 * stp / (2 * stp + sfp + sfn)) if stp + sfp + sfn else 0.0,
        "support": total,
    }
    ap = {name: average_precision(t[:, i], probabilities[:, i]) for i, name in enumerate(names)}
    cuts = [float(x) for x in thresholds]
    targets = t.astype(np.int64)
    return MultiLabelEvaluation(report, micro, ap, probabilities, targets, p, list(paths), names, cuts)
