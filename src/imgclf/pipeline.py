"""The whole job in one call: scan → decode once → train → evaluate → save → report.

The CLI's ``train`` and ``evaluate`` commands are thin wrappers over these functions.

Usage::

    result = imgclf.train("dataset", "malaria.imgclf", TrainConfig(epochs=25), plot_path="plot.png")
    print(result.evaluation.accuracy)
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imgclf import architectures, bundle
from imgclf.classifier import Classifier
from imgclf.config import TrainConfig
from imgclf.data import (
    DecodedSplit,
    bad_files_error,
    duplicate_report,
    fingerprint,
    load_split,
    open_cache,
    scan_dataset,
)
from imgclf.errors import DatasetError, StorageError, UsageError
from imgclf.evaluate import Evaluation, evaluate_probabilities, format_report
from imgclf.files import atomic_write_text, check_writable
from imgclf.trainer import Callback, create_state, final_weights, fit, resolve_device

__all__ = ["TrainResult", "train", "evaluate_dataset", "default_run_dir", "write_history"]

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    classifier: Classifier
    history: list[dict[str, float]]
    evaluation: Evaluation | None
    model_path: str
    run_dir: str
    epoch: int
    outputs: dict[str, str] = field(default_factory=dict)


def default_run_dir(model_path: str | os.PathLike) -> str:
    """The run folder next to the model file: ``malaria.imgclf`` → ``malaria-run/``."""
    p = Path(model_path)
    return str(p.with_name(p.stem + "-run"))


def write_history(history: Sequence[dict[str, float]], json_path: str, csv_path: str) -> None:
    """Write per-epoch history as JSON (a list of records) and CSV (one row per epoch)."""
    atomic_write_text(json_path, json.dumps(list(history), indent=2) + "\n")
    keys = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(csv_path, buf.getvalue())


def _make_run_dir(run_dir: str) -> None:
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            "cannot create the run folder",
            received=f"{run_dir} ({exc.strerror or exc})",
            expected="a folder you can write to",
            fix="use --run-dir elsewhere",
        ) from None
    check_writable(os.path.join(run_dir, "probe"), "run folder")


def _check_architecture(config: TrainConfig) -> None:
    """Build the architecture on the meta device (no memory, no init): bad arch args fail before decoding."""
    with torch.device("meta"):
        architectures.build(config.arch, 2, config.preprocess.size, config.arch_args)


def train(
    dataset: str | os.PathLike,
    model_path: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    plot_path: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
    probes_from: int = 0,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    callbacks: Sequence[Callback] = (),
    log: Log = _quiet,
    decode_progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
) -> TrainResult:
    """Train a classifier on a dataset folder and save it as one model file.

    Args:
        dataset: Folder with split folders (``training/validation/testing``) or class folders.
        model_path: Where to write the model file.
        config: Training settings (defaults reproduce the recipe).
        plot_path: Where to write the training-curve plot (default ``RUN_DIR/plot.png``; skipped with a
            warning when matplotlib, an optional dependency, is not installed).
        run_dir: Folder for history, reports (and checkpoints); default next to the model file.
        skip_bad: Train without undecodable files instead of failing.
        probes_from: Also store this many validation images as self-check probes in the file.
        cache_dir: Decode-once cache folder (default ``$IMGCLF_CACHE_DIR`` or ``~/.cache/imgclf``).
        use_cache: Read and fill the decode-once cache (``False``: decode into memory only).
        callbacks: Training progress hooks.
        log: Receives one-line human messages (warnings, notes).
        decode_progress: ``decode_progress(split, total)`` returns a per-image progress callback.

    Raises:
        DatasetError, StorageError, UsageError: Before any training if inputs or outputs are unusable.
    """
    config = (config or TrainConfig()).validated()
    _check_architecture(config)
    model_path = os.fspath(model_path)
    run_dir = os.fspath(run_dir) if run_dir else default_run_dir(model_path)
    check_writable(model_path, "model file")
    can_plot = importlib.util.find_spec("matplotlib") is not None
    if plot_path:
        check_writable(plot_path, "plot")
        if not can_plot:
            raise UsageError(
                "a training plot needs matplotlib",
                received="matplotlib is not installed",
                expected="matplotlib (an optional dependency)",
                fix="pip install 'imgclf[plots]', or train without --plot",
            )
    plot_path = os.fspath(plot_path) if plot_path else os.path.join(run_dir, "plot.png")
    device = resolve_device(config.device)
    ds = scan_dataset(dataset, val_split=config.val_split, test_split=config.test_split, seed=config.seed)
    _make_run_dir(run_dir)
    for note in ds.warnings:
        log(f"warning: {note}")
    decoded: dict[str, DecodedSplit] = {}
    cache = open_cache(config.preprocess, cache_dir) if use_cache else None
    for split, samples in ds.splits.items():
        progress = decode_progress(split, len(samples)) if decode_progress and samples else None
        # Decode every split before judging, so all bad files are reported in one error.
        decoded[split] = load_split(samples, config.preprocess, skip_bad=True, progress=progress, cache=cache)
    bad = [item for dec in decoded.values() for item in dec.skipped]
    if bad and not skip_bad:
        raise bad_files_error(bad)
    for path, why in bad:
        log(f"warning: skipped {path}: {why}")
    if len(decoded["training"]) == 0:
        raise DatasetError(
            "no usable training images",
            received=ds.root,
            expected="at least one image per class",
            fix="add images to the training folders",
        )
    dupes = duplicate_report(decoded)
    if dupes:
        log(f"warning: {dupes}")
    state = create_state(config, len(ds.class_names), device)
    state = fit(config, state, decoded["training"], decoded.get("validation"), callbacks=callbacks)
    model, epoch = final_weights(config, state)
    classifier = Classifier(
        bundle._copy_to_cpu(model), ds.class_names, config.preprocess, config.arch, config.arch_args
    )
    eval_split = "testing" if len(decoded["testing"]) else "validation"
    evaluation = None
    if len(decoded[eval_split]):
        dec = decoded[eval_split]
        probs = classifier.predict_proba_uint8(dec.images, batch_size=config.eval_batch_size)
        evaluation = evaluate_probabilities(probs, dec.labels, dec.paths, ds.class_names)
    metrics: dict[str, Any] = {
        k: v for k, v in (state.history[-1] if state.history else {}).items() if k != "epoch"
    }
    if evaluation is not None:
        metrics[f"{eval_split}_accuracy"] = evaluation.accuracy
        metrics[f"{eval_split}_macro_f1"] = evaluation.report["macro avg"]["f1-score"]
    classifier.manifest["provenance"] = {
        "training": config.to_dict(),
        "epoch": epoch,
        "epochs_run": state.epoch,
        "seed": config.seed,
        "device": str(device),
        "stopped_early": state.stopped_early,
        "metrics": metrics,
        "data": {
            "fingerprint": fingerprint(ds, decoded),
            "layout": ds.layout,
            "counts": {
                s: {ds.class_names[i]: int((d.labels == i).sum()) for i in range(len(ds.class_names))}
                for s, d in decoded.items()
            },
            "skipped": sum(len(d.skipped) for d in decoded.values()),
        },
        "history": state.history,
    }
    extra = _probe_bytes(decoded.get("validation"), probes_from)
    bundle.save(classifier, model_path, extra_probes=extra)
    outputs = {"model": model_path, "plot": plot_path} if can_plot else {"model": model_path}
    outputs["history_json"] = os.path.join(run_dir, "history.json")
    outputs["history_csv"] = os.path.join(run_dir, "history.csv")
    write_history(state.history, outputs["history_json"], outputs["history_csv"])
    if evaluation is not None:
        outputs["report_txt"] = os.path.join(run_dir, "report.txt")
        outputs["report_json"] = os.path.join(run_dir, "report.json")
        atomic_write_text(outputs["report_txt"], format_report(evaluation.report))
        atomic_write_text(outputs["report_json"], json.dumps(evaluation.to_dict(), indent=2) + "\n")
    if can_plot:
        from imgclf.reports import plot_history

        plot_history(state.history, plot_path)
    else:
        log("warning: no training plot: matplotlib is not installed (pip install 'imgclf[plots]')")
    return TrainResult(
        classifier=classifier,
        history=state.history,
        evaluation=evaluation,
        model_path=model_path,
        run_dir=run_dir,
        epoch=epoch,
        outputs=outputs,
    )


def _probe_bytes(split: DecodedSplit | None, count: int) -> list[bytes]:
    if not split or count <= 0:
        return []
    out = []
    for path in split.paths[:count]:
        with open(path, "rb") as fh:
            out.append(fh.read())
    return out


def evaluate_dataset(
    classifier: Classifier,
    dataset: str | os.PathLike,
    *,
    split: str = "testing",
    skip_bad: bool = False,
    batch_size: int = 256,
    log: Log = _quiet,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> Evaluation:
    """Evaluate a loaded classifier on a dataset folder's split (or a flat folder of class folders).

    Class folders are matched to the model's classes by name; a folder the model does not know is an
    error, a model class with no folder simply has no support.

    Raises:
        DatasetError: Unknown classes, empty split, undecodable files (without ``skip_bad``).
    """
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
