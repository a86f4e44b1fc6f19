"""Classification metrics (the report scikit-learn's ``classification_report`` gives, and more), and
the evaluation of a loaded model on a dataset folder. The text report is :mod:`imgclf.reports`.

Usage::

    report = classification_report(y_true, y_pred, ["Parasitized", "Uninfected"])
    cm = confusion_matrix(y_true, y_pred, 2)
    evaluation = evaluate_dataset(imgclf.load("malaria.imgclf"), "malaria")   # a model on a folder
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.errors import DatasetError, UsageError
from imgclf.progress import Log, quiet

if TYPE_CHECKING:
    from imgclf.classifier import Classifier

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
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
) -> Evaluation:
    """Evaluate a loaded classifier on a dataset folder's split.

    A flat folder of class folders (``ROOT/<class>/*.png``) is split again exactly as training split
    it (the seed, fractions and data fingerprint are in the model file), so ``split="testing"`` scores
    the images the model did not train on; ``split="all"`` scores every image (for a folder the model
    never saw). Class folders are matched to the model's classes by name; a folder the model does not
    know is an error, a model class with no folder simply has no support.

    Args:
        classifier: The loaded model.
        dataset: Folder with split folders or class folders.
        split: ``"testing"`` (default), ``"validation"``, ``"training"`` or ``"all"``.
        skip_bad: Skip undecodable files (logged) instead of failing.
        batch_size: Images per forward pass.
        log: Receives one-line warnings.
        cache_dir: Decode-once cache folder (default ``$IMGCLF_CACHE_DIR`` or ``~/.cache/imgclf``).
        use_cache: Read and fill the decode-once cache.
        progress: ``progress(what, total)`` returns a per-image callback (decoding, then classifying).

    Raises:
        DatasetError: Unknown classes, empty split, undecodable files (without ``skip_bad``), or a flat
            folder whose recorded split cannot be reproduced (other files than the model trained on).
    """
    from imgclf.data.decode import bad_files_error, load_split, open_cache
    from imgclf.data.folders import scan_dataset

    cap = classifier.max_pixels
    cache = open_cache(classifier.preprocess, cache_dir, max_pixels=cap) if use_cache else None

    def decode(samples: list, what: str) -> Any:
        bar = progress(f"decoding {what}", len(samples)) if progress and samples else None
        return load_split(
            samples, classifier.preprocess, skip_bad=True, cache=cache, progress=bar, max_pixels=cap
        )

    ds = scan_dataset(dataset, val_split=0.0, test_split=0.0)
    _check_classes(ds.class_names, classifier.class_names)
    ds, dec = _decode_split(classifier.manifest, dataset, ds, split, decode)
    if dec.skipped and not skip_bad:
        raise bad_files_error(dec.skipped)
    for path, why in dec.skipped:
        log(f"warning: skipped {path}: {why}")
    labels = _model_labels(dec.labels, ds.class_names, classifier.class_names)
    bar = progress("classifying", len(dec)) if progress and len(dec) else None
    probs = _predict_in_chunks(classifier, dec.images, batch_size, bar)
    return evaluate_probabilities(probs, labels, dec.paths, classifier.class_names)


def _decode_split(
    manifest: dict[str, Any],
    dataset: str | os.PathLike,
    ds: Any,
    split: str,
    decode: Callable[[list, str], Any],
) -> tuple[Any, Any]:
    """``(dataset, decoded split)``: a flat folder's split as training made it, else the split's folder.

    Raises:
        DatasetError: If the split has no images, or a flat folder's recorded split cannot be reproduced.
    """
    from imgclf.data.heldout import ALL, heldout_split

    if ds.layout == "flat" and split != ALL:
        ds, decoded = heldout_split(
            manifest,
            dataset,
            split,
            lambda splits: {s: decode(samples, s) for s, samples in splits.items()},
        )
        return ds, decoded[split]
    # split=0 scans put a flat folder's every image in "training"
    samples = [s for part in ds.splits.values() for s in part] if split == ALL else ds.splits.get(split)
    if not samples:
        raise DatasetError(
            f"dataset has no {split!r} images",
            received=ds.root,
            expected=f"a {split} folder with class folders",
            fix="pass --split or another folder",
        )
    return ds, decode(samples, split)


def _model_labels(labels: np.ndarray, found: list[str], known: list[str]) -> np.ndarray:
    """``labels`` (indices into the folder's classes ``found``) as indices into the model's ``known``."""
    remap = {i: known.index(c) for i, c in enumerate(found)}
    out = labels.copy()
    for i, j in remap.items():
        out[labels == i] = j
    return out


def _check_classes(found: list[str], known: list[str]) -> None:
    unknown = [c for c in found if c not in known]
    if unknown:
        raise DatasetError(
            "dataset has classes the model does not know",
            received=", ".join(unknown),
            expected="a subset of " + ", ".join(known),
            fix="evaluate on a dataset with the model's classes",
        )


def _predict_in_chunks(
    classifier: Classifier, images: np.ndarray, batch_size: int, bar: Callable[[int], None] | None
) -> np.ndarray:
    """Probabilities for ``images``, a chunk of batches at a time so a progress bar can advance."""
    if bar is None or len(images) <= batch_size:
        probs = classifier.predict_proba_uint8(images, batch_size=batch_size)
        if bar is not None:
            bar(len(images))
        return probs
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        parts.append(classifier.predict_proba_uint8(chunk, batch_size=batch_size))
        bar(len(parts[-1]))
    return np.concatenate(parts)
