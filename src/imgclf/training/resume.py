"""Resuming a run: whether it may be resumed, and the newest checkpoint that validates, restored.

Deciding compares the checkpoint with this run's recipe, classes and data.

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
:func:`imgclf.training.pipeline.resume_run`; this module plans, checks and restores: it finds the newest
checkpoint that validates (damaged newer files are set aside) and loads it into a fresh state.

Usage::

    plan = plan_resume(run_dir, config, dataset, force=False, log=print)   # before decoding
    restore(state, plan.checkpoint, log=print)                            # into a fresh create_state()
    check_data(plan, dataset, decoded, fingerprint, force=False, log=print)   # after decoding
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from imgclf.config import TrainConfig
from imgclf.data.decode import DecodedSplit
from imgclf.data.folders import Dataset
from imgclf.data.identity import file_table
from imgclf.errors import ResumeError, RunFinished, UsageError
from imgclf.models import registry
from imgclf.progress import Log
from imgclf.training.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    CheckpointDamaged,
    list_checkpoints,
    read_checkpoint,
)
from imgclf.training.determinism import restore_rng
from imgclf.training.optim import KerasSGD
from imgclf.training.runfolder import read_record
from imgclf.training.state import PartialEpoch, TrainState

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
    recipe: list[str] = []
    operational: list[str] = []
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


def latest_checkpoint(run_dir: str | os.PathLike, run_id: str | None, *, log: Log) -> Checkpoint:
    """The newest checkpoint of run ``run_id`` that validates; damaged newer ones are set aside.

    A damaged file is renamed to ``NAME.damaged`` (kept as evidence, never picked again) and a
    warning names it and the older checkpoint used instead.

    Raises:
        ResumeError: If there is no checkpoint, or none is usable (never silently starts afresh).
    """
    paths = list_checkpoints(run_dir)
    if not paths:
        raise ResumeError(
            "nothing to resume: the run folder has no checkpoint",
            received=os.path.join(os.fspath(run_dir), CHECKPOINT_DIR),
            expected="checkpoints/epoch-NNNN.safetensors written by `imgclf train`",
            fix="start the run without --resume",
        )
    damaged: list[str] = []
    for path in paths:
        try:
            ckpt = read_checkpoint(path)
            if run_id is not None and ckpt.state["run_id"] != run_id:
                raise CheckpointDamaged("it belongs to another run (run id differs from run.json)")
        except CheckpointDamaged as exc:
            damaged.append(f"{os.path.basename(path)}: {exc}")
            with contextlib.suppress(OSError):
                os.replace(path, path + ".damaged")
            log(f"warning: checkpoint {path} is unusable ({exc}); renamed to .damaged, trying an older one")
            continue
        if damaged:
            log(f"warning: resuming from the older checkpoint {ckpt.name} ({ckpt.describe()})")
        return ckpt
    raise ResumeError(
        f"no usable checkpoint among {len(paths)}: " + "; ".join(damaged[:3]),
        received=os.path.join(os.fspath(run_dir), CHECKPOINT_DIR),
        expected="at least one intact checkpoint",
        fix="start the run again without --resume (in a new --run-dir to keep the damaged files)",
    )


def restore(state: TrainState, ckpt: Checkpoint, *, log: Log) -> None:
    """Load ``ckpt`` into ``state`` (fresh from :func:`.state.create_state`, same recipe).

    Raises:
        ResumeError: If the checkpoint's weights or optimizer state do not fit this model.
    """
    t, s = ckpt.tensors, ckpt.state
    device = next(state.model.parameters()).device
    try:
        state.model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")}, strict=True)
        _restore_optimizer(state.optimizer, t, s["optimizer"])
        _restore_average(state, t)
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:
        raise ResumeError(
            "the checkpoint's weights do not fit the model",
            received=f"{ckpt.path} ({str(exc).splitlines()[0][:200]})",
            expected="the architecture and class set the checkpoint was made with",
            fix="resume with the original --arch/--arch-arg and dataset classes, or start a new run",
        ) from None
    best = {k[5:]: v.to(device) for k, v in t.items() if k.startswith("best.")}
    state.best_state = best or None
    averaged = {k[9:]: v.to(device) for k, v in t.items() if k.startswith("averaged.")}
    state.averaged = averaged or None
    state.epoch, state.step = int(s["epoch"]), int(s["step"])
    state.history, state.timings = list(s["history"]), list(s["timings"])
    state.best_metric, state.best_epoch = s.get("best_metric"), s.get("best_epoch")
    state.bad_epochs, state.stopped_early = int(s["bad_epochs"]), bool(s["stopped_early"])
    state.order_gen.set_state(t["gen.order"])
    state.aug_gen.set_state(t["gen.aug"])
    state.in_epoch = None
    if s["epoch_step"]:
        state.in_epoch = PartialEpoch(int(s["epoch_step"]), t["epoch.loss_sum"], t["epoch.correct"])
    restore_rng(s["rng"], t, log)
    saved_torch = s["versions"].get("torch")
    if saved_torch != torch.__version__:
        log(
            f"warning: the checkpoint was written with torch {saved_torch}, this is torch "
            f"{torch.__version__}: the run continues, but need not match an uninterrupted run bit for bit"
        )


def _restore_average(state: TrainState, tensors: dict[str, torch.Tensor]) -> None:
    """Copy the saved weight average into ``state.ema`` (each in its parameter's memory layout).

    A checkpoint without one (a forced resume that turned ``ema`` on) starts the average afresh.
    """
    saved = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    if state.ema is None or not saved:
        return
    if set(saved) != set(state.ema):
        raise ValueError(f"weight average for {sorted(set(saved) ^ set(state.ema))[:3]} does not fit")
    for name, value in saved.items():
        if value.shape != state.ema[name].shape:
            raise ValueError(f"weight average {name} ({tuple(value.shape)}) does not fit")
        state.ema[name].copy_(value)


def _restore_optimizer(optimizer: KerasSGD, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
    saved: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            index, key = name[len("optimizer.") :].split(".", 1)
            saved.setdefault(int(index), {})[key] = value
    for index, values in extra.items():
        saved.setdefault(int(index), {}).update(values)
    # Keep the fresh optimizer's hyper-parameters (this run's recipe); take only the per-parameter state.
    optimizer.load_state(saved)
