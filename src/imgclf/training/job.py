"""One training job once its inputs are checked: own the run folder, plan, decode, fit, save.

:func:`imgclf.training.pipeline.train` checks the inputs and joins the process group, then calls these.
Under torchrun, rank 0 alone owns the run folder and writes files, and does the one-off work (clearing
the folder, filling the decode cache) before the other ranks (:func:`.ranks.main_first`).

Usage::

    job = Job(ds=ds, out=out, device=device, group=group, log=log, options=RunOptions(skip_bad=True))
    with owned_run_dir(out.run_dir, world, log):
        plan, config = plan_run(job, config)
        result = train_in_folder(job, config, plan, callbacks, decode_progress)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from imgclf.classifier import Classifier
from imgclf.config import RunOptions, TrainConfig
from imgclf.data.decode import DecodedSplit, open_cache
from imgclf.data.decode_cache import default_cache_dir
from imgclf.data.folders import Dataset
from imgclf.data.labels_csv import split_table
from imgclf.evaluation import Evaluation, MultiLabelEvaluation
from imgclf.fileio.writing import atomic_write_text
from imgclf.progress import Log
from imgclf.training.balance import count_lines, imbalance_warning, keep_monitor
from imgclf.training.device import available_bytes
from imgclf.training.distributed import Group, main_first, note_world_change
from imgclf.training.ema import start_average
from imgclf.training.embeddings import EmbeddingCache
from imgclf.training.interrupts import fit_with_checkpoints
from imgclf.training.loop import Callback
from imgclf.training.preflight import check_free_space, check_memory_for_decoding, estimate_bytes
from imgclf.training.pretrained import start_weights
from imgclf.training.record import RunRecord
from imgclf.training.resume import ResumePlan, plan_resume, restore
from imgclf.training.runfolder import RunLock, new_run_dir, start_fresh, write_record
from imgclf.training.schedule import steps_per_epoch
from imgclf.training.state import TrainState, create_state
from imgclf.training.steps import (
    DecodeProgress,
    FinalModel,
    Outputs,
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
    evaluation: Evaluation | MultiLabelEvaluation | None
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


@dataclass
class Job:
    """What one call of :func:`train` works with, passed between its steps.

    Attributes:
        ds: The scanned dataset.
        out: Where the run writes (model file, run folder, plot).
        device: Where this process trains.
        group: The process group of a multi-process run, else ``None``.
        log: Receives one-line human messages.
        options: The run's options (``resume`` and ``force`` as settled for this run folder).
    """

    ds: Dataset
    out: Outputs
    device: torch.device
    group: Group | None
    log: Log
    options: RunOptions


def embedding_cache(job: Job, config: TrainConfig) -> EmbeddingCache | None:
    """The linear probe's stored embeddings, in the decode-once cache's folder (none without a cache)."""
    if not (config.linear_probe and job.options.use_cache):
        return None
    return EmbeddingCache(job.options.cache_dir or default_cache_dir(), log=job.log)


@contextlib.contextmanager
def owned_run_dir(run_dir: str, world: World, log: Log) -> Iterator[None]:
    """Rank 0 creates and locks the run folder; the other ranks of a run only use it."""
    if not world.is_main:
        yield
        return
    with new_run_dir(run_dir), RunLock(run_dir, log=log):
        yield


def plan_run(job: Job, config: TrainConfig) -> tuple[ResumePlan | None, TrainConfig]:
    """The resume plan (or a fresh start: rank 0 clears the folder) and the config to train with.

    Rank 0 plans first (it may set damaged checkpoints aside); the others then read the same folder.
    """

    def plan() -> tuple[ResumePlan | None, TrainConfig]:
        force, resume = job.options.force, job.options.resume
        found = plan_resume(job.out.run_dir, config, job.ds, force=force, log=job.log) if resume else None
        if found is None and (job.group is None or job.group.world.is_main):
            start_fresh(job.out.run_dir, force=force, log=job.log)
        return found, (found.config if found is not None else config)

    return main_first(job.group, "preparing the run folder", plan)  # type: ignore[return-value]


def train_in_folder(
    job: Job,
    config: TrainConfig,
    plan: ResumePlan | None,
    callbacks: Sequence[Callback],
    decode_progress: DecodeProgress | None,
) -> TrainResult:
    """Check space, build (or restore) the state, decode, fit, save the model and write the reports."""
    ds, out, group, log = job.ds, job.out, job.group, job.log
    n_files = sum(len(samples) for samples in ds.splits.values())
    check_free_space(out.model, out.run_dir, *estimate_bytes(config, len(ds.class_names), n_files))
    if not job.options.use_cache:
        sizes = [len(samples) for samples in ds.splits.values()]
        check_memory_for_decoding(config, sizes, available_bytes(torch.device("cpu")))
    for note in ds.warnings:
        log(f"warning: {note}")
    log_class_counts(ds, config, log)
    if ds.layout == "csv" and (group is None or group.world.is_main):
        atomic_write_text(os.path.join(out.run_dir, "split.csv"), split_table(ds))
    state = create_state(config, len(ds.class_names), job.device)
    if plan is not None:  # before decoding: checkpoint weights that do not fit fail early
        restore(state, plan.checkpoint, log=log)
        note_world_change(plan.checkpoint.state, group, log)
        start = plan.record.get("started_from")
    else:  # before decoding too: weights for another architecture fail early
        start = start_from_weights(state, config, ds.class_names, log)
    decoded = decode_all(job, config, decode_progress)
    facts = group.facts(steps_per_epoch(len(decoded["training"]), config.batch_size)[1]) if group else None
    is_main = group is None or group.world.is_main
    record = start_record(
        ds,
        decoded,
        config,
        out,
        job.device,
        plan,
        job.options,
        log,
        distributed=facts,
        write=is_main,
        start=start,
    )
    state = fit_with_checkpoints(
        config,
        state,
        decoded["training"],
        decoded.get("validation"),
        run_dir=out.run_dir,
        info=record.checkpoint_info(),
        resumed=plan.checkpoint if plan is not None else None,
        callbacks=callbacks,
        group=group,
        embedding_cache=embedding_cache(job, config),
    )
    final = final_classifier(config, state, decoded, ds.class_names, group)
    outputs = main_first(
        group,
        "writing the model file and reports",
        lambda: save_outputs(final, config, record, state, decoded, out, log),
        others_too=False,
    )
    return TrainResult(
        final.classifier, state.history, final.evaluation, out.model, out.run_dir, final.epoch, outputs or {}
    )


def start_from_weights(
    state: TrainState, config: TrainConfig, class_names: list[str], log: Log
) -> dict[str, Any] | None:
    """Load ``--weights``/``--init-from`` into the fresh model, say what was loaded; the record's entry."""
    start = start_weights(state.model, config, class_names)
    if start is None:
        return None
    if state.ema is not None:  # the average starts from the loaded weights, not the random ones
        state.ema = start_average(state.model)
    skipped = f", skipped {len(start['skipped'])} (old head)" if start["skipped"] else ""
    log(
        f"note: started from {start['path']}: loaded {start['loaded']} tensors{skipped}, "
        f"head {start['head']}; {config.effective_freeze_epochs} head-only epoch(s), then the backbone at "
        f"{config.backbone_lr:g} x the learning rate"
    )
    return start


def decode_all(job: Job, config: TrainConfig, progress: DecodeProgress | None) -> dict[str, DecodedSplit]:
    """Decode every split; with the cache, rank 0 fills it once and the other ranks then read it
    (without the cache every rank decodes into its own memory)."""
    opts = job.options
    cache = None
    if opts.use_cache:
        cache = open_cache(config.preprocess, opts.cache_dir, max_pixels=opts.max_pixels)

    def decode() -> dict[str, DecodedSplit]:
        return decode_splits(
            job.ds,
            config,
            cache,
            skip_bad=opts.skip_bad,
            progress=progress,
            log=job.log,
            max_pixels=opts.max_pixels,
        )

    if cache is None:
        return decode()
    return main_first(job.group, "decoding the dataset into the cache", decode)  # type: ignore[return-value]


def save_outputs(
    final: FinalModel,
    config: TrainConfig,
    record: RunRecord,
    state: TrainState,
    decoded: dict[str, DecodedSplit],
    out: Outputs,
    log: Log,
) -> dict[str, str]:
    """Rank 0's part: the model file, the reports and the finished run record."""
    monitor = keep_monitor(config, decoded["training"].labels, len(final.classifier.class_names))
    judge(final, config, state.epoch, log, monitor)
    save_model(final, record, state, decoded.get("validation"), out.model)
    outputs = write_reports(state, final.evaluation, out, log, saved_epoch=final.epoch)
    write_record(out.run_dir, record.run_json(status="finished"))
    return outputs


def log_class_counts(ds: Dataset, config: TrainConfig, log: Log) -> None:
    """Log the images per class of each split, and the imbalance warning (or note) when it applies."""
    counts = ds.counts()
    for line in count_lines(counts):
        log(f"class counts, {line}")
    warning = imbalance_warning(counts["training"], config.balance, config.recipe)
    if warning:
        log(warning)
