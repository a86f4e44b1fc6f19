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
    if n < 2 or len(evaluation.class_names) < 2:
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
