"""Deciding whether a run may be resumed: the checkpoint versus this run's recipe, classes and data.

A resumed run must be the run the user would have had, so anything that changes it is refused with a
short diff (``ResumeError``, exit 6) unless ``force`` is given:

* the **recipe**: every :class:`~imgclf.config.TrainConfig` field except the operational ones in
  :data:`OPERATIONAL` (device, precision, memory layout, compilation, evaluation batch size,
  determinism flag), which may change (bitwise equality with an uninterrupted run is then not promised);
* ``epochs`` may be raised (train longer) or lowered to no fewer than the epochs done; the learning-rate
  decay then stays the original run's (``lr / original epochs``), so the schedule continues smoothly
  (a ``cosine`` schedule is re-planned over the new total instead, with a note);
* the **class names** and the **dataset**: files added, removed, relabelled or changed in content.

Architecture or class-count changes cannot be forced: the checkpoint's weights would not fit.

The whole job (read ``run.json``, then train with ``resume=True``) is
:func:`imgclf.training.pipeline.resume_run`; this module only plans and checks.

Usage::

    plan = plan_resume(run_dir, config, dataset, force=False, log=print)   # before decoding
    check_data(plan, dataset, decoded, force=False, log=print)            # after decoding
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from imgclf.config import TrainConfig
from imgclf.data.decode import DecodedSplit
from imgclf.data.folders import Dataset
from imgclf.data.identity import file_table
from imgclf.errors import ResumeError, RunFinished, UsageError
from imgclf.models import registry
from imgclf.progress import Log
from imgclf.training.checkpoint import Checkpoint
from imgclf.training.restore import latest_checkpoint
from imgclf.training.runfolder import read_record

OPERATIONAL = ("device", "precision", "channels_last", "compile", "eval_batch_size", "deterministic")
MAX_NAMED = 3


@dataclass
class ResumePlan:
    """What a resume starts from: the checkpoint, the run record and the config to continue with."""

    checkpoint: Checkpoint
    record: dict[str, Any]
    config: TrainConfig
    data_changed: bool = False


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "arch_args":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_diff(old: TrainConfig, new: TrainConfig) -> tuple[list[str], list[str]]:
    """``(recipe changes, operational changes)`` from ``old`` to ``new``, as ``"lr 0.1 → 0.05"`` lines.

    ``decay`` is compared by its effective value (when either sets it) and ``epochs`` is left out (see
    the module docs).
    """
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    with contextlib.suppress(UsageError):  # compare what gets built: {} and the defaults are the same
        a["arch_args"] = registry.resolve_args(old.arch, old.arch_args)
        b["arch_args"] = registry.resolve_args(new.arch, new.arch_args)
    if old.decay is not None or new.decay is not None:  # both None: derived from lr, reported as lr
        a["decay"], b["decay"] = old.effective_decay, new.effective_decay
    recipe, operational = [], []
    for key in a:
        if key == "epochs" or a[key] == b.get(key):
            continue
        line = f"{key} {a[key]!r} → {b.get(key)!r}".replace("'", "")
        (operational if key in OPERATIONAL else recipe).append(line)
    return recipe, operational


def _listed(items: list[str]) -> str:
    more = f", ... ({len(items) - MAX_NAMED} more)" if len(items) > MAX_NAMED else ""
    return ", ".join(items[:MAX_NAMED]) + more


def files_diff(old: dict[str, list], new: dict[str, list]) -> str | None:
    """Describe how the dataset changed (``None`` if it did not), comparing what both tables hold.

    Files are named by their path relative to the dataset folder (one file is in one split only).
    """

    def index(table: dict[str, list]) -> dict[str, list]:
        return {row[0]: [split, *row[1:]] for split, rows in table.items() for row in rows}

    a, b = index(old), index(new)
    both = sorted(set(a) & set(b))
    groups = {
        "added": sorted(set(b) - set(a)),
        "removed": sorted(set(a) - set(b)),
        "moved to another split": [k for k in both if a[k][0] != b[k][0]],
        "relabelled": [k for k in both if a[k][0] == b[k][0] and a[k][1] != b[k][1]],
        # content digests exist only once decoded: compared where both tables have them
        "changed content": [
            k for k in both if a[k][:2] == b[k][:2] and len(a[k]) == len(b[k]) == 3 and a[k] != b[k]
        ],
    }
    parts = [f"{len(names)} file(s) {what} ({_listed(names)})" for what, names in groups.items() if names]
    return "dataset changed: " + ", ".join(parts) if parts else None


def _refuse_or_warn(problems: list[str], force: bool, log: Log) -> None:
    if not problems:
        return
    if not force:
        raise ResumeError(
            "resume refused: " + "; ".join(problems),
            fix="resume with the original dataset and settings, or add --force to continue anyway "
            "(the result will not equal an uninterrupted run)",
        )
    log("warning: resuming despite changes (--force): " + "; ".join(problems))


def plan_resume(
    run_dir: str | os.PathLike, config: TrainConfig, dataset: Dataset, *, force: bool, log: Log
) -> ResumePlan:
    """Find the checkpoint to resume and check the recipe, classes and file list against it.

    Returns:
        The plan, whose ``config`` is ``config`` with the original decay pinned if ``epochs`` changed.

    Raises:
        ResumeError: No usable checkpoint; or (without ``force``) the run changed, with the diff.
        UsageError: ``epochs`` below the epochs already done.
    """
    record = read_record(run_dir)
    ckpt = latest_checkpoint(run_dir, record.get("run_id"), log=log)
    try:
        saved = TrainConfig.from_dict(ckpt.state["config"])
    except UsageError as exc:
        raise ResumeError("the checkpoint's training config is invalid", received=str(exc)) from None
    _refuse_finished(run_dir, record, ckpt, saved, config)
    least = ckpt.epoch + (1 if ckpt.epoch_step else 0)  # an epoch in progress must be finished
    if config.epochs < least:
        raise UsageError(
            "--epochs is below the epochs already trained",
            received=f"--epochs {config.epochs}, checkpoint {ckpt.describe()}",
            expected=f"at least {least}",
            fix=f"use --epochs {saved.epochs} (the run's own) or more",
        )
    if config.epochs != saved.epochs and config.schedule == "cosine":
        log(
            f"note: training for {config.epochs} epochs instead of {saved.epochs}; the cosine schedule "
            f"is re-planned over {config.epochs} epochs, so the learning rate jumps where it resumes"
        )
    elif config.epochs != saved.epochs and config.decay is None and saved.decay is None:
        config = config.replace(decay=saved.effective_decay)  # the schedule the run was on
        log(
            f"note: training for {config.epochs} epochs instead of {saved.epochs}; the learning-rate "
            f"decay stays {saved.effective_decay:g} (lr / {saved.epochs})"
        )
    problems, operational = recipe_diff(saved, config)
    if problems:
        problems = ["recipe changed: " + ", ".join(problems)]
    if operational:
        log(
            "note: changed since the checkpoint: " + ", ".join(operational) + " (results may differ slightly)"
        )
    if list(ckpt.state["class_names"]) != dataset.class_names:
        old, new = list(ckpt.state["class_names"]), dataset.class_names
        gone, extra = [c for c in old if c not in new], [c for c in new if c not in old]
        problems.append(f"classes changed: removed {gone or 'none'}, added {extra or 'none'}")
    change = files_diff(record.get("files") or {}, file_table(dataset))
    if change:
        problems.append(change)
    _refuse_or_warn(problems, force, log)
    return ResumePlan(checkpoint=ckpt, record=record, config=config, data_changed=change is not None)


def _refuse_finished(
    run_dir: str | os.PathLike,
    record: dict[str, Any],
    ckpt: Checkpoint,
    saved: TrainConfig,
    config: TrainConfig,
) -> None:
    """Raise :class:`RunFinished` when the run saved its model and no more epochs are asked for."""
    done = ckpt.epoch
    if record.get("status") != "finished" or config.epochs > max(done, saved.epochs):
        return
    raise RunFinished(
        f"the run in {os.fspath(run_dir)} is finished ({done} of {saved.epochs} epochs; model "
        f"{record.get('model')}); nothing was changed",
        fix=f"to train longer, pass --epochs N with N > {max(done, saved.epochs)}",
    )


def check_data(
    plan: ResumePlan,
    dataset: Dataset,
    decoded: dict[str, DecodedSplit],
    fingerprint: str,
    *,
    force: bool,
    log: Log,
) -> None:
    """After decoding: refuse (unless ``force``) if any file's content changed since the checkpoint.

    Raises:
        ResumeError: With the files that changed.
    """
    if plan.data_changed or plan.checkpoint.state.get("data_fingerprint") in (None, fingerprint):
        return  # unchanged, or already reported (and forced) from the file list
    change = files_diff(plan.record.get("files") or {}, file_table(dataset, decoded))
    _refuse_or_warn([change or "dataset changed (its fingerprint differs)"], force, log)
