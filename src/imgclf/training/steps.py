"""The steps of a training run, in order; :func:`imgclf.training.pipeline.train` calls them.

check outputs → (lock, plan) → decode splits → start record → fit → final classifier → save model →
write reports. Each takes what it needs and returns what the next one uses.

Usage::

    out = check_outputs("m.imgclf", None, None, resume=False)
    decoded = decode_splits(ds, config, cache, skip_bad=False, progress=None, log=print)
    record = start_record(ds, decoded, config, out, device, None, RunOptions(), print)
    final = final_classifier(config, state, decoded, ds.class_names)      # after fit
    save_model(final, record, state, decoded.get("validation"), out.model)
    outputs = write_reports(state, final.evaluation, out, print)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgclf import modelfile
from imgclf.calibration import MIN_CALIBRATION_IMAGES, calibrate_classifier
from imgclf.classifier import Classifier
from imgclf.config import RunOptions, TrainConfig
from imgclf.data.decode import DecodedSplit, bad_files_error, load_split
from imgclf.data.folders import Dataset, Sample
from imgclf.data.identity import duplicate_report, file_table, table_fingerprint
from imgclf.errors import DatasetError
from imgclf.evaluation import (
    Evaluation,
    MultiLabelEvaluation,
    choose_thresholds,
    evaluate_multilabel,
    evaluate_probabilities,
    usefulness_warnings,
)
from imgclf.fileio.writing import atomic_write_text, check_writable
from imgclf.images.read import MAX_PIXELS, read_bytes
from imgclf.modelfile.weights import copy_to_cpu
from imgclf.ood import fit_ood
from imgclf.plots import have_matplotlib, require_matplotlib
from imgclf.progress import Log
from imgclf.reports import format_report, write_history
from imgclf.training.record import RunRecord
from imgclf.training.resume import ResumePlan, check_data
from imgclf.training.runfolder import (
    default_run_dir,
    require_run_dir,
    write_record,
)
from imgclf.training.state import TrainState, final_weights

if TYPE_CHECKING:
    from imgclf.training.distributed import Group

DecodeProgress = Callable[[str, int], Callable[[int], None] | None]


@dataclass
class FinalModel:
    """The classifier a run saves, the epoch its weights are from, and its evaluation (if any split had
    images: ``split`` is ``testing``, or ``validation`` without a testing split)."""

    classifier: Classifier
    epoch: int
    evaluation: Evaluation | MultiLabelEvaluation | None
    split: str


@dataclass
class Outputs:
    """Where a training writes, decided and checked before anything is decoded.

    Attributes:
        model: The model file.
        run_dir: The run folder (lock, ``run.json``, checkpoints, history, reports).
        plot: Where the training plot goes (the user's path, or ``RUN/plot.png``).
        explicit_plot: The user's plot path (absolute), recorded for ``--resume``; else ``None``.
        can_plot: Whether matplotlib is installed.
    """

    model: str
    run_dir: str
    plot: str
    explicit_plot: str | None
    can_plot: bool


def check_outputs(
    model_path: str | os.PathLike,
    run_dir: str | os.PathLike | None,
    plot_path: str | os.PathLike | None,
    *,
    resume: bool,
) -> Outputs:
    """Decide where the run writes and check those places, before any work.

    Raises:
        StorageError: An output is not writable. UsageError: A plot is asked for without matplotlib.
        ResumeError: ``resume`` and the run folder does not exist.
    """
    model = os.fspath(model_path)
    folder = os.fspath(run_dir) if run_dir else default_run_dir(model)
    check_writable(model, "model file")
    if plot_path:
        check_writable(plot_path, "plot")
        require_matplotlib("a training plot", "pip install matplotlib, or train without --plot")
    if resume:  # before anything creates the folder
        require_run_dir(folder)
    return Outputs(
        model=model,
        run_dir=folder,
        plot=os.fspath(plot_path) if plot_path else os.path.join(folder, "plot.png"),
        explicit_plot=os.path.abspath(plot_path) if plot_path else None,
        can_plot=have_matplotlib(),
    )


def decode_splits(
    ds: Dataset,
    config: TrainConfig,
    cache: Any,
    *,
    skip_bad: bool,
    progress: DecodeProgress | None,
    log: Log,
    max_pixels: int = MAX_PIXELS,
) -> dict[str, DecodedSplit]:
    """Decode every split once (through ``cache`` if given); all bad files are reported in one error.

    ``max_pixels`` caps each image (a cache decodes with the cap it was opened with).

    Raises:
        DatasetError: Undecodable files (without ``skip_bad``), or no usable training image.
    """
    decoded: dict[str, DecodedSplit] = {}
    for split, samples in ds.splits.items():
        tick = progress(split, len(samples)) if progress and samples else None
        # Decode every split before judging, so all bad files are reported in one error.
        decoded[split] = load_split(
            samples, config.preprocess, skip_bad=True, progress=tick, cache=cache, max_pixels=max_pixels
        )
    if ds.multi_label or config.multi_label:
        for split, dec in decoded.items():
            dec.labels = multi_hot(ds.splits[split], dec.paths, len(ds.class_names))
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
    return decoded


def multi_hot(samples: list[Sample], paths: list[str], num_classes: int) -> np.ndarray:
    """``(N, C)`` float32 0/1 targets of the decoded ``paths`` (a subset of ``samples``, in order)."""
    by_path = {s.path: s.labels if s.labels is not None else (s.label,) for s in samples}
    out = np.zeros((len(paths), num_classes), dtype=np.float32)
    for row, path in enumerate(paths):
        out[row, list(by_path[path])] = 1.0
    return out


def start_record(
    ds: Dataset,
    decoded: dict[str, DecodedSplit],
    config: TrainConfig,
    out: Outputs,
    device: torch.device,
    plan: ResumePlan | None,
    options: RunOptions,
    log: Log,
    distributed: dict[str, Any] | None = None,
    write: bool = True,
    start: dict[str, Any] | None = None,
) -> RunRecord:
    """Fingerprint the decoded data, check it against a resumed run, and write ``run.json``.

    ``options``: the run's options (``skip_bad`` and ``probes_from`` are recorded; ``force`` lets a
    resumed run's changed data through); ``distributed``: a multi-process run's facts
    (:meth:`.distributed.Group.facts`); ``write`` is false on ranks other than 0; ``start``: what
    ``--weights``/``--init-from`` loaded (:mod:`.pretrained`).

    Raises:
        ResumeError: On resume, if file contents changed since the checkpoint (without ``force``).
    """
    files = file_table(ds, decoded)
    fingerprint = table_fingerprint(ds.class_names, files)
    if plan is not None:
        check_data(plan, ds, decoded, fingerprint, force=options.force, log=log)
    record = RunRecord.start(
        ds,
        decoded,
        files,
        fingerprint,
        config,
        model_path=out.model,
        plot=out.explicit_plot,
        skip_bad=options.skip_bad,
        probes_from=options.probes_from,
        device=device,
        resumed=(plan.record["run_id"], plan.checkpoint.name) if plan is not None else None,
        distributed=distributed,
        started_from=start,
    )
    if write:
        write_record(out.run_dir, record.run_json())
    return record


def final_classifier(
    config: TrainConfig,
    state: TrainState,
    decoded: dict[str, DecodedSplit],
    class_names: list[str],
    group: Group | None = None,
) -> FinalModel:
    """The classifier to save (``keep=best``: the best epoch's weights), its epoch, and its evaluation.

    It is evaluated on the testing split, or the validation split when there is no testing split, with
    the prediction path (float32), so the report equals what ``imgclf evaluate`` gives for the file.
    Under several processes (``group``) each rank predicts a contiguous share (no padding) and the
    probabilities are gathered in order, so every image is counted exactly once.
    """
    model, epoch = final_weights(config, state)
    classifier = Classifier(copy_to_cpu(model), class_names, config.preprocess, config.arch, config.arch_args)
    thresholds: list[float] = []
    task: dict[str, Any] = {"type": "single_label", "thresholds": None, "balance": config.balance}
    if config.multi_label:  # calibration and the OOD threshold are single-label measures: not fitted here
        task["type"] = "multi_label"
        classifier.manifest["task"] = task  # sigmoid outputs from here on
        val = decoded["validation"]
        thresholds = choose_thresholds(_probabilities(classifier, val, config, group), val.labels).tolist()
        task["thresholds"] = thresholds
    else:
        held_out = decoded["validation"]
        if len(held_out) >= MIN_CALIBRATION_IMAGES:  # temperature scaling, before the final evaluation
            calibrate_classifier(classifier, held_out.images, held_out.labels)
        ood = fit_ood(classifier, decoded["training"].images, decoded["training"].labels, held_out.images)
        if ood is not None:  # the "unlike the training data" threshold (imgclf.ood)
            classifier.manifest["ood"] = ood
    classifier.manifest["task"] = task
    split = "testing" if len(decoded["testing"]) else "validation"
    dec = decoded[split]
    if not len(dec):
        return FinalModel(classifier, epoch, None, split)
    probs = _probabilities(classifier, dec, config, group)
    evaluation: Evaluation | MultiLabelEvaluation
    if config.multi_label:
        evaluation = evaluate_multilabel(probs, dec.labels, dec.paths, class_names, thresholds)
    else:
        evaluation = evaluate_probabilities(probs, dec.labels, dec.paths, class_names)
    return FinalModel(classifier, epoch, evaluation, split)


def _probabilities(
    classifier: Classifier, dec: DecodedSplit, config: TrainConfig, group: Group | None
) -> np.ndarray:
    """The classifier's probabilities on ``dec`` (each rank predicts a share, gathered in order)."""
    part = group.shard(len(dec)) if group is not None else slice(0, len(dec))
    probs = classifier.predict_proba_uint8(dec.images[part], batch_size=config.eval_batch_size)
    if group is not None:
        probs = group.gather_rows(torch.from_numpy(probs), len(dec)).numpy()
    return probs


def judge(
    final: FinalModel, config: TrainConfig, epochs_run: int, log: Log, monitor: str | None = None
) -> None:
    """Say which epoch goes into the file (``monitor``: the key keep-best judged by, default
    ``config.monitor``), and warn when the saved model is useless (one class, chance)."""
    how = f"--keep best by {monitor or config.monitor}" if config.keep == "best" else "--keep last"
    log(f"note: the model file holds epoch {final.epoch} of {epochs_run} ({how})")
    cal = final.classifier.manifest.get("calibration")
    if cal:
        log(
            f"note: calibrated on {cal['images']} {cal['split']} images: temperature "
            f"{cal['temperature']:.3f}, expected calibration error {cal['ece_before']:.4f} -> "
            f"{cal['ece_after']:.4f}"
        )
    ood = final.classifier.manifest.get("ood")
    if ood:
        log(
            f"note: out-of-distribution threshold set on {ood['images']} {ood['split']} images "
            f"({ood['flagged_share']:.1%} of them beyond it)"
        )
    ev = final.evaluation
    problems = usefulness_warnings(ev, final.split) if isinstance(ev, Evaluation) else []
    if problems:
        log(
            f"warning: {'; '.join(problems)}: the model is not useful yet (saved epoch {final.epoch}); "
            "train longer (--epochs) or check the data and the recipe"
        )


def save_model(
    final: FinalModel,
    record: RunRecord,
    state: TrainState,
    validation: DecodedSplit | None,
    model_path: str,
) -> None:
    """Write the model file, with the record's provenance and ``record.probes_from`` extra probes."""
    # The metrics of the epoch whose weights are saved (with keep=best, not necessarily the last).
    saved = [r for r in state.history if r["epoch"] == final.epoch] or state.history[-1:] or [{}]
    metrics: dict[str, Any] = {k: v for k, v in saved[0].items() if k != "epoch"}
    if final.evaluation is not None:
        metrics[f"{final.split}_accuracy"] = final.evaluation.accuracy
        metrics[f"{final.split}_macro_f1"] = final.evaluation.macro_f1
        metrics[f"{final.split}_balanced_accuracy"] = final.evaluation.balanced_accuracy
        if isinstance(final.evaluation, MultiLabelEvaluation):
            metrics[f"{final.split}_micro_f1"] = final.evaluation.micro_f1
            metrics[f"{final.split}_mAP"] = final.evaluation.mean_average_precision
    final.classifier.manifest["provenance"] = record.provenance(state, epoch=final.epoch, metrics=metrics)
    extra = [read_bytes(path) for path in validation.paths[: record.probes_from]] if validation else []
    modelfile.save(final.classifier, model_path, extra_probes=extra)


def write_reports(
    state: TrainState,
    evaluation: Evaluation | MultiLabelEvaluation | None,
    out: Outputs,
    log: Log,
    saved_epoch: int | None = None,
) -> dict[str, str]:
    """History (JSON, CSV), the text and JSON report, and the plot (``saved_epoch`` marked on it);
    returns ``{what: path}``."""
    outputs = {"model": out.model, "plot": out.plot} if out.can_plot else {"model": out.model}
    outputs["history_json"] = os.path.join(out.run_dir, "history.json")
    outputs["history_csv"] = os.path.join(out.run_dir, "history.csv")
    write_history(state.history, outputs["history_json"], outputs["history_csv"], state.timings)
    if evaluation is not None:
        outputs["report_txt"] = os.path.join(out.run_dir, "report.txt")
        outputs["report_json"] = os.path.join(out.run_dir, "report.json")
        text = format_report(evaluation.report) + "\n" + "\n".join(evaluation.summary_lines()) + "\n"
        atomic_write_text(outputs["report_txt"], text)
        atomic_write_text(outputs["report_json"], json.dumps(evaluation.to_dict(), indent=2) + "\n")
    if out.can_plot:
        from imgclf.plots import plot_history

        plot_history(state.history, out.plot, saved_epoch=saved_epoch)
    else:
        log("warning: no training plot: matplotlib is not installed (pip install matplotlib)")
    return outputs
