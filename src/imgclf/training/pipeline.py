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
    result = imgclf.train("dataset", "m.imgclf", options=RunOptions(run_dir="m-run", skip_bad=True))
    print(result.evaluation.accuracy)
    result = imgclf.resume_run("malaria-run")      # after a crash, Ctrl-C or kill: continue exactly
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from imgclf._settings import check_integer
from imgclf.config import RunOptions, TrainConfig
from imgclf.data.labels_csv import scan_source
from imgclf.errors import ResumeError, UsageError
from imgclf.modelfile.saving import MAX_EXTRA_PROBES
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
    options: RunOptions | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    log: Log = quiet,
    decode_progress: DecodeProgress | None = None,
    distributed: DistOptions | None = None,
    **option_changes: Any,
) -> TrainResult:
    """Train a classifier on a dataset folder and save it as one model file.

    Args:
        dataset: Folder with split folders (``training/validation/testing``) or class folders, or a
            labels CSV (:mod:`imgclf.data.labels_csv`: path, label, optional split).
        model_path: Where to write the model file.
        config: Training settings (defaults reproduce the recipe).
        options: How and where the run goes (:class:`imgclf.RunOptions`: plot and run folder, cache,
            resume, force, ...; default ``RunOptions()``).
        callbacks: Training progress hooks.
        log: Receives one-line human messages (warnings, notes).
        decode_progress: ``decode_progress(split, total)`` returns a per-image progress callback.
        distributed: Timeout and ``sync_bn`` of a multi-process run (under torchrun: ``RANK``,
            ``WORLD_SIZE`` set; see :mod:`imgclf.training.distributed`). Rank 0 alone writes the run
            folder, checkpoints, model file and reports; every rank returns the same result.
        **option_changes: :class:`imgclf.RunOptions` fields by name, applied over ``options``, e.g.
            ``plot_path="plot.png"``, ``run_dir=...``, ``resume=True``, ``force=True``.

    Raises:
        DatasetError, StorageError, UsageError: Before any training if inputs or outputs are unusable
            (StorageError also if another training holds the run folder, or the disk is too full;
            UsageError also if ``model_path`` exists and ``force`` is false, or an option is invalid).
        ResumeError: If ``resume`` finds no usable checkpoint or (without ``force``) a changed run.
        Interrupted: On SIGINT/SIGTERM, after writing a checkpoint (exit code 130/143).
        DistributedError: Under torchrun, a rank did not join or stopped answering (named).
        TypeError: A keyword argument that is no run option.
    """
    world = World.from_env()
    with alike_on_every_rank(world):  # until the process group starts: rank 0 reports for all ranks
        opts = (options or RunOptions()).updated(option_changes)
        check_integer("probes_from", opts.probes_from, 0, MAX_EXTRA_PROBES)  # what a model file holds
        config = with_arch_preprocess((config or TrainConfig()).validated())  # timm:NAME's own, unless given
        # A backbone from another library records the library's version in the file (timm:NAME).
        config = config.replace(arch_args=registry.pinned_args(config.arch, config.arch_args))
        if world.is_main:
            callbacks, log, decode_progress = _with_progress(opts.progress, callbacks, log, decode_progress)
        else:  # rank 0 speaks for the run; the others stay silent (their callbacks still run)
            log, decode_progress = quiet, None
        # Bad architecture args fail here, before any decoding (a meta build allocates nothing).
        registry.build_meta(config.arch, 2, config.preprocess.size, config.arch_args)
        if not opts.resume:  # an unusable --weights/--init-from file fails here too (resuming reads none)
            check_start(config)
        out = check_outputs(model_path, opts.run_dir, opts.plot_path, resume=opts.resume)
        resume, force = restart_resume(out.run_dir, opts.resume, opts.force, log)
        opts = opts.updated({"resume": resume, "force": force})
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
    job = Job(ds=ds, out=out, device=device, group=group, log=log, options=opts)
    try:
        with owned_run_dir(out.run_dir, world, log):
            plan, config = plan_run(job, config)
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
    options = RunOptions.from_run_json(record, run_dir=run_dir, resume=True, force=force, progress=progress)
    return train(
        record["dataset"],
        record["model"],
        config.replace(**changes) if changes else config,
        options,
        callbacks=callbacks,
        log=log,
        decode_progress=decode_progress,
    )
