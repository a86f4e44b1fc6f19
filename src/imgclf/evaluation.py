"""Classification metrics (the report scikit-learn's ``classification_report`` gives, and more), and
the evaluation of a loaded model on a dataset folder. The text report is :mod:`imgclf.reports`.

Usage::

    report = classification_report(y_true, y_pred, ["Parasitized", "Uninfected"])
    cm = confusion_matrix(y_true, y_pred, 2)
    evaluation = evaluate_dataset(imgclf.load("malaria.imgclf"), "malaria")   # a model on a folder
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.errors import DatasetError, UsageError
from imgclf.progress import Log, quiet

if TYPE_CHECKING:
    from imgclf.classifier import Classifier

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: report, confusion matrix and misclassified files."""
        return {
            "report": self.report,
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


def evaluate_dataset(
    classifier: Classifier,
    dataset: str | os.PathLike,
    *,
    split: str = "testing",
    skip_bad: bool = False,
    batch_size: int = 256,
    log: Log = quiet,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> Evaluation:
    """Evaluate a loaded classifier on a dataset folder's split (or a flat folder of class folders).

    Class folders are matched to the model's classes by name; a folder the model does not know is an
    error, a model class with no folder simply has no support.

    Raises:
        DatasetError: Unknown classes, empty split, undecodable files (without ``skip_bad``).
    """
    from imgclf.data.decode import load_split, open_cache
    from imgclf.data.folders import scan_dataset

    ds = scan_dataset(dataset, val_split=0.0, test_split=0.0)
    if ds.layout == "flat":
        samples = ds.splits["training"]
    else:
        samples = ds.splits.get(split) or []
        if not samples:
            raise DatasetError(
                f"dataset has no {split!r} images",
                received=ds.root,
                expected=f"a {split} folder with class folders",
                fix="pass --split or another folder",
            )
    unknown = [c for c in ds.class_names if c not in classifier.class_names]
    if unknown:
        raise DatasetError(
            "dataset has classes the model does not know",
            received=", ".join(unknown),
            expected="a subset of " + ", ".join(classifier.class_names),
            fix="evaluate on a dataset with the model's classes",
        )
    remap = {i: classifier.class_names.index(c) for i, c in enumerate(ds.class_names)}
    cache = open_cache(classifier.preprocess, cache_dir) if use_cache else None
    dec = load_split(samples, classifier.preprocess, skip_bad=skip_bad, cache=cache)
    for path, why in dec.skipped:
        log(f"warning: skipped {path}: {why}")
    labels = dec.labels.copy()
    for i, j in remap.items():
        labels[dec.labels == i] = j
    probs = classifier.predict_proba_uint8(dec.images, batch_size=batch_size)
    return evaluate_probabilities(probs, labels, dec.paths, classifier.class_names)
