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

import os
from collections.abc import Sequence
from typing import Any

from imgclf.config import TrainConfig
from imgclf.data.labels_csv import scan_source
from imgclf.errors import ResumeError, UsageError
from imgclf.images.read import MAX_PIXELS, checked_max_pixels
from imgclf.models import registry
from imgclf.models.timm_backbone import with_arch_preprocess
from imgclf.progress import Log, quiet
from imgclf.training.device import resolve_device
from imgclf.training.distributed import (
    DistOptions,
    alike_on_every_rank,
    check_launch,
    rank_device,
    restart_resume,
    start_group,
)
from imgclf.training.job import Job, TrainResult, owned_run_dir, plan_run, train_in_folder
from imgclf.training.loop import Callback
from imgclf.training.preflight import (
    refuse_overwrite,
)
from imgclf.training.pretrained import check_start
from imgclf.training.runfolder import (
    read_record,
)
from imgclf.training.steps import (
    DecodeProgress,
    check_outputs,
)
from imgclf.world import World


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
    from imgclf.training.display import EpochProgress, decode_bar_factory

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
        dataset: Folder with split folders (``training/validation/testing``) or class folders, or a
            labels CSV (:mod:`imgclf.data.labels_csv`: path, label, optional split).
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
    world = World.from_env()
    with alike_on_every_rank(world):  # until the process group starts: rank 0 reports for all ranks
        config = with_arch_preprocess((config or TrainConfig()).validated())  # timm:NAME's own, unless given
        # A backbone from another library records the library's version in the file (timm:NAME).
        config = config.replace(arch_args=registry.pinned_args(config.arch, config.arch_args))
        if world.is_main:
            callbacks, log, decode_progress = _with_progress(progress, callbacks, log, decode_progress)
        else:  # rank 0 speaks for the run; the others stay silent (their callbacks still run)
            log, decode_progress = quiet, None
        max_pixels = checked_max_pixels(max_pixels)
        # Bad architecture args fail here, before any decoding (a meta build allocates nothing).
        registry.build_meta(config.arch, 2, config.preprocess.size, config.arch_args)
        if not resume:  # an unusable --weights/--init-from file fails here too (resuming reads none)
            check_start(config)
        out = check_outputs(model_path, run_dir, plot_path, resume=resume)
        resume, force = restart_resume(out.run_dir, resume, force, log)
        if not resume and world.is_main:
            refuse_overwrite(out.model, force=force)
        device = rank_device(resolve_device(config.device), world)
        ds = scan_source(
            dataset,
            val_split=config.val_split,
            test_split=config.test_split,
            seed=config.seed,
            multi_label=config.multi_label,
            progress=decode_progress if world.is_main else None,
        )
        if ds.multi_label and not config.multi_label:
            log("note: the labels file holds several labels per image: training multi-label (--multi-label)")
            config = config.replace(multi_label=True)
        check_launch(world.size, len(ds.splits["training"]), config.batch_size)
    group = start_group(world, device, distributed or DistOptions())
    job = Job(ds, out, device, group, log, skip_bad, probes_from, force, max_pixels, use_cache, cache_dir)
    try:
        with owned_run_dir(out.run_dir, world, log):
            plan, config = plan_run(job, config, resume)
            return train_in_folder(job, config, plan, callbacks, decode_progress)
    finally:
        if group is not None:
            group.close()


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
