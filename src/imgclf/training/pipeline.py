"""The whole job in one call: scan → decode once → train → evaluate → save → report.

The CLI's ``train`` and ``evaluate`` commands are thin wrappers over these functions. Training owns a
run folder (:mod:`imgclf.training.runfolder`): it is locked, checked for space before decoding, gets a
checkpoint after every epoch (:mod:`imgclf.training.checkpoint`), and a SIGINT/SIGTERM ends the run with a
checkpoint and :class:`~imgclf.errors.Interrupted` (exit 130/143) instead of losing it.

Usage::

    result = imgclf.train("dataset", "malaria.imgclf", TrainConfig(epochs=25), plot_path="plot.png")
    print(result.evaluation.accuracy)
    result = imgclf.resume_run("malaria-run")      # after a crash, Ctrl-C or kill: continue exactly
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from imgclf import modelfile
from imgclf._version import versions
from imgclf.classifier import Classifier
from imgclf.config import TrainConfig
from imgclf.data.decode import (
    DecodedSplit,
    bad_files_error,
    duplicate_report,
    file_table,
    load_split,
    open_cache,
    table_fingerprint,
)
from imgclf.data.folders import Dataset, scan_dataset
from imgclf.errors import DatasetError
from imgclf.evaluation import Evaluation, evaluate_dataset, evaluate_probabilities, format_report
from imgclf.fileio import atomic_write_text, check_writable
from imgclf.images.read import MAX_PIXELS, checked_max_pixels, read_bytes
from imgclf.modelfile.weights import copy_to_cpu
from imgclf.models import registry
from imgclf.reports import have_matplotlib, require_matplotlib, write_history
from imgclf.training.checkpoint import restore
from imgclf.training.interrupts import fit_with_checkpoints
from imgclf.training.loop import Callback, available_bytes, create_state, final_weights, resolve_device
from imgclf.training.resume import ResumePlan, check_data, plan_resume
from imgclf.training.runfolder import (
    RunLock,
    check_free_space,
    check_memory_for_decoding,
    default_run_dir,
    estimate_bytes,
    make_run_dir,
    remove_if_no_files,
    require_run_dir,
    start_fresh,
    write_record,
)

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
    resume: bool = False,
    force: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> TrainResult:
    """Train a classifier on a dataset folder and save it as one model file.

    Args:
        dataset: Folder with split folders (``training/validation/testing``) or class folders.
        model_path: Where to write the model file.
        config: Training settings (defaults reproduce the recipe).
        plot_path: Where to write the training-curve plot (default ``RUN_DIR/plot.png``; skipped with a
            warning when matplotlib, an optional dependency, is not installed).
        run_dir: Folder for the lock, run record, checkpoints, history and reports; default
            ``MODEL-run/`` next to the model file.
        skip_bad: Train without undecodable files instead of failing.
        probes_from: Also store this many validation images as self-check probes in the file.
        cache_dir: Decode-once cache folder (default ``$IMGCLF_CACHE_DIR`` or ``~/.cache/imgclf``).
        use_cache: Read and fill the decode-once cache (``False``: decode into memory only).
        callbacks: Training progress hooks.
        log: Receives one-line human messages (warnings, notes).
        decode_progress: ``decode_progress(split, total)`` returns a per-image progress callback.
        resume: Continue the run in ``run_dir`` from its newest intact checkpoint; ``config`` must
            match the run's recipe (see :mod:`imgclf.training.resume`, whose ``resume_run`` fills it in).
        force: With ``resume``, continue despite a changed recipe or dataset (with a warning); without,
            start over in a run folder that holds an unfinished run (its checkpoints are deleted).
        max_pixels: Refuse dataset images with more pixels (at most ``MAX_PIXELS``, the default).

    Raises:
        DatasetError, StorageError, UsageError: Before any training if inputs or outputs are unusable
            (StorageError also if another training holds the run folder, or the disk is too full).
        ResumeError: If ``resume`` finds no usable checkpoint or (without ``force``) a changed run.
        Interrupted: On SIGINT/SIGTERM, after writing a checkpoint (exit code 130/143).
    """
    config = (config or TrainConfig()).validated()
    max_pixels = checked_max_pixels(max_pixels)
    # Bad architecture args fail here, before any decoding (a meta build allocates nothing).
    registry.build_meta(config.arch, 2, config.preprocess.size, config.arch_args)
    model_path = os.fspath(model_path)
    run_dir = os.fspath(run_dir) if run_dir else default_run_dir(model_path)
    check_writable(model_path, "model file")
    can_plot = have_matplotlib()
    if plot_path:
        check_writable(plot_path, "plot")
        require_matplotlib("a training plot", "pip install 'imgclf[plots]', or train without --plot")
    explicit_plot = os.path.abspath(plot_path) if plot_path else None
    plot_path = os.fspath(plot_path) if plot_path else os.path.join(run_dir, "plot.png")
    if resume:  # before anything creates the folder
        require_run_dir(run_dir)
    device = resolve_device(config.device)
    ds = scan_dataset(dataset, val_split=config.val_split, test_split=config.test_split, seed=config.seed)
    created = not os.path.lexists(run_dir)
    make_run_dir(run_dir)
    try:
        with RunLock(run_dir, log=log):
            plan = None
            if resume:
                plan = plan_resume(run_dir, config, ds, force=force, log=log)
                config = plan.config
            else:
                start_fresh(run_dir, force=force, log=log)
            n_files = sum(len(samples) for samples in ds.splits.values())
            check_free_space(model_path, run_dir, *estimate_bytes(config, len(ds.class_names), n_files))
            if not use_cache:
                sizes = [len(samples) for samples in ds.splits.values()]
                check_memory_for_decoding(config, sizes, available_bytes(torch.device("cpu")))
            run = _Run(
                dataset=ds,
                model_path=model_path,
                run_dir=run_dir,
                plot_path=plot_path,
                explicit_plot=explicit_plot,
                can_plot=can_plot,
                skip_bad=skip_bad,
                probes_from=probes_from,
                device=device,
                plan=plan,
                force=force,
                cache_dir=cache_dir,
                use_cache=use_cache,
                max_pixels=max_pixels,
            )
            return _train_locked(run, config, callbacks, log, decode_progress)
    except BaseException:
        if created:  # refused before training (bad files, disk space, a signal): leave no empty MODEL-run/
            remove_if_no_files(run_dir)
        raise


@dataclass
class _Run:
    """Where a training reads and writes, decided (and checked) before any decoding."""

    dataset: Dataset
    model_path: str
    run_dir: str
    plot_path: str
    explicit_plot: str | None
    can_plot: bool
    skip_bad: bool
    probes_from: int
    device: torch.device
    plan: ResumePlan | None
    force: bool
    cache_dir: str | os.PathLike | None = None
    use_cache: bool = True
    max_pixels: int = MAX_PIXELS


def _train_locked(
    run: _Run,
    config: TrainConfig,
    callbacks: Sequence[Callback],
    log: Log,
    decode_progress: Callable[[str, int], Callable[[int], None] | None] | None,
) -> TrainResult:
    ds, skip_bad, device = run.dataset, run.skip_bad, run.device
    model_path, run_dir, plot_path, can_plot = run.model_path, run.run_dir, run.plot_path, run.can_plot
    for note in ds.warnings:
        log(f"warning: {note}")
    state = create_state(config, len(ds.class_names), device)
    if run.plan is not None:  # before decoding: checkpoint weights that do not fit fail early
        restore(state, run.plan.checkpoint, log=log)
    decoded: dict[str, DecodedSplit] = {}
    cap = run.max_pixels
    cache = open_cache(config.preprocess, run.cache_dir, max_pixels=cap) if run.use_cache else None
    for split, samples in ds.splits.items():
        progress = decode_progress(split, len(samples)) if decode_progress and samples else None
        # Decode every split before judging, so all bad files are reported in one error.
        decoded[split] = load_split(
            samples, config.preprocess, skip_bad=True, progress=progress, cache=cache, max_pixels=cap
        )
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
    files = file_table(ds, decoded)
    data_fingerprint = table_fingerprint(ds.class_names, files)
    if run.plan is not None:
        check_data(run.plan, ds, decoded, data_fingerprint, force=run.force, log=log)
    record = _run_record(run, config, ds, files, data_fingerprint)
    write_record(run_dir, record)
    info = {
        "run_id": record["run_id"],
        "class_names": ds.class_names,
        "architecture": {
            "name": config.arch,
            "args": registry.resolve_args(config.arch, config.arch_args),
        },
        "data_fingerprint": data_fingerprint,
        "device": str(device),
    }
    state = fit_with_checkpoints(
        config,
        state,
        decoded["training"],
        decoded.get("validation"),
        run_dir=run_dir,
        info=info,
        resumed=run.plan.checkpoint if run.plan is not None else None,
        callbacks=callbacks,
    )
    model, epoch = final_weights(config, state)
    classifier = Classifier(
        copy_to_cpu(model), ds.class_names, config.preprocess, config.arch, config.arch_args
    )
    eval_split = "testing" if len(decoded["testing"]) else "validation"
    evaluation = None
    if len(decoded[eval_split]):
        dec = decoded[eval_split]
        probs = classifier.predict_proba_uint8(dec.images, batch_size=config.eval_batch_size)
        evaluation = evaluate_probabilities(probs, dec.labels, dec.paths, ds.class_names)
    # The metrics of the epoch whose weights are saved (with keep=best, not necessarily the last).
    saved = [r for r in state.history if r["epoch"] == epoch] or state.history[-1:] or [{}]
    metrics: dict[str, Any] = {k: v for k, v in saved[0].items() if k != "epoch"}
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
        "deterministic": config.deterministic,
        "resumed_from": run.plan.checkpoint.name if run.plan is not None else None,
        "data": {
            "fingerprint": data_fingerprint,
            "layout": ds.layout,
            "counts": {
                s: {ds.class_names[i]: int((d.labels == i).sum()) for i in range(len(ds.class_names))}
                for s, d in decoded.items()
            },
            "skipped": sum(len(d.skipped) for d in decoded.values()),
        },
        "history": state.history,
    }
    extra = _probe_bytes(decoded.get("validation"), run.probes_from)
    modelfile.save(classifier, model_path, extra_probes=extra)
    outputs = {"model": model_path, "plot": plot_path} if can_plot else {"model": model_path}
    outputs["history_json"] = os.path.join(run_dir, "history.json")
    outputs["history_csv"] = os.path.join(run_dir, "history.csv")
    write_history(state.history, outputs["history_json"], outputs["history_csv"], state.timings)
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
    write_record(run_dir, {**record, "status": "finished"})
    return TrainResult(
        classifier=classifier,
        history=state.history,
        evaluation=evaluation,
        model_path=model_path,
        run_dir=run_dir,
        epoch=epoch,
        outputs=outputs,
    )


def _run_record(
    run: _Run, config: TrainConfig, ds: Dataset, files: dict[str, list], data_fingerprint: str
) -> dict[str, Any]:
    """``run.json``: everything ``imgclf train --resume RUN`` needs, and the files to diff against."""
    return {
        "run_id": run.plan.record["run_id"] if run.plan is not None else secrets.token_hex(8),
        "status": "training",
        "dataset": os.path.abspath(ds.root),
        "model": os.path.abspath(run.model_path),
        "plot": run.explicit_plot,
        "skip_bad": run.skip_bad,
        "probes_from": run.probes_from,
        "config": config.to_dict(),
        "class_names": ds.class_names,
        "data_fingerprint": data_fingerprint,
        "versions": versions(),
        "files": files,
    }


def _probe_bytes(split: DecodedSplit | None, count: int) -> list[bytes]:
    if not split or count <= 0:
        return []
    return [read_bytes(path) for path in split.paths[:count]]
