"""A loaded model evaluated on a dataset folder's split, as training evaluated it (same split, same decoding).

Usage::

    from imgclf.dataset_evaluation import evaluate_dataset
    evaluation = evaluate_dataset(imgclf.load("malaria.imgclf"), "malaria")   # the held-out test split
    print(evaluation.accuracy)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.errors import DatasetError
from imgclf.evaluation import Evaluation, MultiLabelEvaluation, evaluate_multilabel, evaluate_probabilities
from imgclf.progress import Log, quiet

if TYPE_CHECKING:
    from imgclf.classifier import Classifier


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
) -> Evaluation | MultiLabelEvaluation:
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
    from imgclf.data.labels_csv import is_labels_file

    cap = classifier.max_pixels
    cache = open_cache(classifier.preprocess, cache_dir, max_pixels=cap) if use_cache else None

    def decode(samples: list, what: str) -> Any:
        bar = progress(f"decoding {what}", len(samples)) if progress and samples else None
        return load_split(
            samples, classifier.preprocess, skip_bad=True, cache=cache, progress=bar, max_pixels=cap
        )

    if is_labels_file(dataset):
        ds, dec = _csv_split(classifier, dataset, split, decode)
    else:
        ds = scan_dataset(dataset, val_split=0.0, test_split=0.0)
        _check_classes(ds.class_names, classifier.class_names)
        ds, dec = _decode_split(classifier.manifest, dataset, ds, split, decode)
    if dec.skipped and not skip_bad:
        raise bad_files_error(dec.skipped)
    for path, why in dec.skipped:
        log(f"warning: skipped {path}: {why}")
    bar = progress("classifying", len(dec)) if progress and len(dec) else None
    if classifier.multi_label:
        remap = [classifier.class_names.index(c) for c in ds.class_names]
        samples = [s for part in ds.splits.values() for s in part]
        by_path = {s.path: s.labels if s.labels is not None else (s.label,) for s in samples}
        targets = np.zeros((len(dec), classifier.num_classes), dtype=np.int64)
        for row, path in enumerate(dec.paths):
            targets[row, [remap[i] for i in by_path[path]]] = 1
        probs = _predict_in_chunks(classifier, dec.images, batch_size, bar)
        thresholds = classifier.thresholds
        assert thresholds is not None  # a multi-label classifier always has them
        return evaluate_multilabel(probs, targets, dec.paths, classifier.class_names, thresholds.tolist())
    labels = _model_labels(dec.labels, ds.class_names, classifier.class_names)
    probs = _predict_in_chunks(classifier, dec.images, batch_size, bar)
    return evaluate_probabilities(probs, labels, dec.paths, classifier.class_names)


def _csv_split(
    classifier: Classifier, dataset: str | os.PathLike, split: str, decode: Callable[[list, str], Any]
) -> tuple[Any, Any]:
    """A labels CSV split as training split it (its seed and fractions are in the model file), decoded.

    Raises:
        DatasetError: If the CSV is invalid, names classes the model does not know, or the split is empty.
    """
    from imgclf.data.heldout import ALL
    from imgclf.data.labels_csv import scan_labels_csv

    recipe = (classifier.manifest.get("provenance") or {}).get("training") or {}
    ds = scan_labels_csv(
        dataset,
        val_split=float(recipe.get("val_split", 0.0)),
        test_split=float(recipe.get("test_split", 0.0)),
        seed=int(recipe.get("seed", 42)),
        multi_label=classifier.multi_label,
    )
    _check_classes(ds.class_names, classifier.class_names)
    samples = [s for part in ds.splits.values() for s in part] if split == ALL else ds.splits.get(split)
    if not samples:
        raise DatasetError(
            f"labels file has no {split!r} rows",
            received=os.fspath(dataset),
            expected=f"rows of the {split} split",
            fix="pass --split all, or another split",
        )
    return ds, decode(samples, split)


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
