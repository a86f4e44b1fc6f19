"""The whole job in one call, as named steps: decode splits → start record → fit → final classifier →
save → reports.

The CLI's ``train`` command is a thin wrapper over :func:`train`. Training owns a run folder
(:mod:`imgclf.training.runfolder`): it is locked, checked for space before decoding, gets a checkpoint
after every epoch (:mod:`imgclf.training.checkpoint`), and a SIGINT/SIGTERM ends the run with a
checkpoint and :class:`~imgclf.errors.Interrupted` (exit 130/143) instead of losing it. One
:class:`~imgclf.training.record.RunRecord` writes ``run.json``, the checkpoints' run facts and the model
file's provenance.

Usage::

    result = imgclf.train("dataset", "malaria.imgclf", TrainConfig(epochs=25), plot_path="plot.png")
    print(result.evaluation.accuracy)
    result = imgclf.resume_run("malaria-run")      # after a crash, Ctrl-C or kill: continue exactly
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from imgclf.classifier import Classifier
from imgclf.config import TrainConfig
from imgclf.data.decode import DecodedSplit, open_cache
from imgclf.data.folders import Dataset, scan_dataset
from imgclf.errors import ResumeError, UsageError
from imgclf.evaluation import Evaluation
from imgclf.images.read import MAX_PIXELS, checked_max_pixels
from imgclf.models import registry
from imgclf.progress import Log, quiet
from imgclf.training.device import available_bytes, resolve_device
from imgclf.training.distributed import DistOptions, Group, start_group
from imgclf.training.interrupts import fit_with_checkpoints
from imgclf.training.loop import Callback
from imgclf.training.preflight import (
    check_free_space,
    check_memory_for_decoding,
    estimate_bytes,
    refuse_overwrite,
)
from imgclf.training.ranks import main_first, note_world_change, rank_device, restart_resume
from imgclf.training.record import RunRecord
from imgclf.training.restore import restore
from imgclf.training.resume import ResumePlan, plan_resume
from imgclf.training.runfolder import (
    RunLock,
    new_run_dir,
    read_record,
    start_fresh,
    write_record,
)
from imgclf.training.schedule import steps_per_epoch
from imgclf.training.state import TrainState, create_state
from imgclf.training.steps import (
    DecodeProgress,
    FinalModel,
    Outputs,
    check_outputs,
    decode_splits,
    final_classifier,
    judge,
    save_model,
    start_record,
    write_reports,
)
from imgclf.world import World


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

    def __repr__(self) -> str:
        # The dataclass default printed the whole history, probabilities and paths (20 KB and more).
        score = f", accuracy={self.evaluation.accuracy:.4f}" if self.evaluation is not None else ""
        return (
            f"TrainResult(model_path={self.model_path!r}, epoch={self.epoch} of {len(self.history)}"
            f"{score}, run_dir={self.run_dir!r})"
        )


def _with_progress(
    progress: bool | None, callbacks: Sequence[Callback], log: Log, decode_progress: DecodeProgress | None
) -> tuple[Sequence[Callback], Log, DecodeProgress | None]:
    """Add the stderr progress display (bars, epoch lines, notes) when ``progress`` asks for it.

    ``None`` means: when stderr is a terminal (as Keras' ``fit`` shows progress by default).
    """
    import sys

    if progress is False or (progress is None and not sys.stderr.isatty()):
        return callbacks, log, decode_progress
    from imgclf.errors import safe_text
    from imgclf.progress import stderr_console
    from imgclf.training.progress import EpochProgress, decode_bar_factory

    console = stderr_console()
    if log is quiet:
        log = lambda m: console.print(safe_text(m), markup=False)  # noqa: E731 - a one-line adapter
    return [*callbacks, EpochProgress(console)], log, decode_progress or decode_bar_factory(console)


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
    log: Log = quiet,
    decode_progress: DecodeProgress | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool | None = None,
    max_pixels: int = MAX_PIXELS,
    distributed: DistOptions | None = None,
) -> TrainResult:
    """Train a classifier on a dataset folder and save it as one model file.

    Args:
        dataset: Folder with split folders (``training/validation/testing``) or class folders.
        model_path: Where to write the model file.
        config: Training settings (defaults reproduce the recipe).
        plot_path: Where to write the training-curve plot (default ``RUN_DIR/plot.png``; skipped with a
            warning when matplotlib is missing from the environment).
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
            match the run's recipe (:func:`resume_run` fills it in from ``run.json``).
        force: With ``resume``, continue despite a changed recipe or dataset (with a warning); without,
            replace an existing model file and start over in a run folder that holds an unfinished run
            (its checkpoints are deleted).
        progress: Show progress on stderr (decoding bars, a bar per epoch, one line per epoch, notes
            and warnings); ``None`` (default): when stderr is a terminal; ``False``: never.
        max_pixels: Refuse dataset images with more pixels (at most ``MAX_PIXELS``, the default).
        distributed: Timeout and ``sync_bn`` of a multi-process run (under torchrun: ``RANK``,
            ``WORLD_SIZE`` set; see :mod:`imgclf.training.distributed`). Rank 0 alone writes the run
            folder, checkpoints, model file and reports; every rank returns the same result.

    Raises:
        DatasetError, StorageError, UsageError: Before any training if inputs or outputs are unusable
            (StorageError also if another training holds the run folder, or the disk is too full;
            UsageError also if ``model_path`` exists and ``force`` is false).
        ResumeError: If ``resume`` finds no usable checkpoint or (without ``force``) a changed run.
        Interrupted: On SIGINT/SIGTERM, after writing a checkpoint (exit code 130/143).
        DistributedError: Under torchrun, a rank did not join or stopped answering (named).
    """
    config = (config or TrainConfig()).validated()
    world = World.from_env()
    if world.is_main:
        callbacks, log, decode_progress = _with_progress(progress, callbacks, log, decode_progress)
    else:  # rank 0 speaks for the run; the others stay silent (their callbacks still run)
        log, decode_progress = quiet, None
    max_pixels = checked_max_pixels(max_pixels)
    # Bad architecture args fail here, before any decoding (a meta build allocates nothing).
    registry.build_meta(config.arch, 2, config.preprocess.size, config.arch_args)
    out = check_outputs(model_path, run_dir, plot_path, resume=resume)
    resume, force = restart_resume(out.run_dir, resume, force, log)
    if not resume and world.is_main:
        refuse_overwrite(out.model, force=force)
    device = rank_device(resolve_device(config.device), world)
    ds = scan_dataset(dataset, val_split=config.val_split, test_split=config.test_split, seed=config.seed)
    group = start_group(world, device, distributed or DistOptions())
    job = _Job(ds, out, device, group, log, skip_bad, probes_from, force, max_pixels, use_cache, cache_dir)
    try:
        with _owned(out.run_dir, world, log):
            plan, config = main_first(group, "preparing the run folder", lambda: _plan(job, config, resume))
            return _train_in_folder(job, config, plan, callbacks, decode_progress)
    finally:
        if group is not None:
            group.close()


@dataclass
class _Job:
    """What one call of :func:`train` works with, passed between its steps."""

    ds: Dataset
    out: Outputs
    device: torch.device
    group: Group | None
    log: Log
    skip_bad: bool
    probes_from: int
    force: bool
    max_pixels: int
    use_cache: bool
    cache_dir: str | os.PathLike | None


@contextlib.contextmanager
def _owned(run_dir: str, world: World, log: Log) -> Iterator[None]:
    """Rank 0 creates and locks the run folder; the other ranks of a run only use it."""
    if not world.is_main:
        yield
        return
    with new_run_dir(run_dir), RunLock(run_dir, log=log):
        yield


def _plan(job: _Job, config: TrainConfig, resume: bool) -> tuple[ResumePlan | None, TrainConfig]:
    """The resume plan (or a fresh start: rank 0 clears the folder) and the config to train with."""
    plan = plan_resume(job.out.run_dir, config, job.ds, force=job.force, log=job.log) if resume else None
    if plan is None and (job.group is None or job.group.world.is_main):
        start_fresh(job.out.run_dir, force=job.force, log=job.log)
    return plan, (plan.config if plan is not None else config)


def _train_in_folder(
    job: _Job,
    config: TrainConfig,
    plan: ResumePlan | None,
    callbacks: Sequence[Callback],
    decode_progress: DecodeProgress | None,
) -> TrainResult:
    """Check space, build (or restore) the state, decode, fit, save the model and write the reports."""
    ds, out, group, log = job.ds, job.out, job.group, job.log
    n_files = sum(len(samples) for samples in ds.splits.values())
    check_free_space(out.model, out.run_dir, *estimate_bytes(config, len(ds.class_names), n_files))
    if not job.use_cache:
        sizes = [len(samples) for samples in ds.splits.values()]
        check_memory_for_decoding(config, sizes, available_bytes(torch.device("cpu")))
    for note in ds.warnings:
        log(f"warning: {note}")
    state = create_state(config, len(ds.class_names), job.device)
    if plan is not None:  # before decoding: checkpoint weights that do not fit fail early
        restore(state, plan.checkpoint, log=log)
        note_world_change(plan.checkpoint.state, group, log)
    decoded = _decode(job, config, decode_progress)
    facts = group.facts(steps_per_epoch(len(decoded["training"]), config.batch_size)[1]) if group else None
    is_main = group is None or group.world.is_main
    record = start_record(
        ds, decoded, config, out, job.device, plan, job.skip_bad, job.probes_from, job.force, log,
        distributed=facts, write=is_main,
    )
    state = fit_with_checkpoints(
        config, state, decoded["training"], decoded.get("validation"), run_dir=out.run_dir,
        info=record.checkpoint_info(), resumed=plan.checkpoint if plan is not None else None,
        callbacks=callbacks, group=group,
    )
    final = final_classifier(config, state, decoded, ds.class_names, group)
    outputs = main_first(
        group, "writing the model file and reports",
        lambda: _save(final, config, record, state, decoded, out, log), others_too=False,
    )
    return TrainResult(
        final.classifier, state.history, final.evaluation, out.model, out.run_dir, final.epoch, outputs or {}
    )


def _decode(job: _Job, config: TrainConfig, progress: DecodeProgress | None) -> dict[str, DecodedSplit]:
    """Decode every split; with the cache, rank 0 fills it once and the other ranks then read it
    (without the cache every rank decodes into its own memory)."""
    cache = open_cache(config.preprocess, job.cache_dir, max_pixels=job.max_pixels) if job.use_cache else None

    def decode() -> dict[str, DecodedSplit]:
        return decode_splits(
            job.ds, config, cache, skip_bad=job.skip_bad, progress=progress, log=job.log,
            max_pixels=job.max_pixels,
        )

    if cache is None:
        return decode()
    return main_first(job.group, "decoding the dataset into the cache", decode)  # type: ignore[return-value]


def _save(
    final: FinalModel,
    config: TrainConfig,
    record: RunRecord,
    state: TrainState,
    decoded: dict[str, DecodedSplit],
    out: Outputs,
    log: Log,
) -> dict[str, str]:
    """Rank 0's part: the model file, the reports and the finished run record."""
    judge(final, config, state.epoch, log)
    save_model(final, record, state, decoded.get("validation"), out.model)
    outputs = write_reports(state, final.evaluation, out, log, saved_epoch=final.epoch)
    write_record(out.run_dir, record.run_json(status="finished"))
    return outputs


def resume_run(
    run_dir: str | os.PathLike,
    *,
    force: bool = False,
    callbacks: Sequence[Callback] = (),
    log: Log = quiet,
    decode_progress: DecodeProgress | None = None,
    progress: bool | None = None,
    **changes: Any,
) -> TrainResult:
    """Continue the run in ``run_dir`` with the dataset, model path and recipe its ``run.json`` records.

    Args:
        run_dir: The run folder of an interrupted (or finished) training.
        force: Continue despite a changed dataset or recipe (see :func:`train`).
        callbacks, log, decode_progress, progress: As for :func:`train`.
        **changes: TrainConfig fields to change, e.g. ``epochs=40`` to train longer or ``device="cuda"``.

    Raises:
        ResumeError: If the folder is not a resumable run, or the run changed (without ``force``).
    """
    record = read_record(run_dir)
    try:
        config = TrainConfig.from_dict(record["config"])
    except (KeyError, UsageError) as exc:
        raise ResumeError("the run record's config is invalid", received=str(exc)) from None
    return train(
        record["dataset"],
        record["model"],
        config.replace(**changes) if changes else config,
        plot_path=record.get("plot"),
        run_dir=run_dir,
        skip_bad=bool(record.get("skip_bad")),
        probes_from=int(record.get("probes_from") or 0),
        callbacks=callbacks,
        log=log,
        decode_progress=decode_progress,
        resume=True,
        force=force,
        progress=progress,
    )
