"""Back to where a run stopped: the newest checkpoint that validates, restored into a fresh state.

Usage::

    ckpt = latest_checkpoint(run_dir, run_id, log=print)         # damaged newer files are set aside
    restore(state, ckpt, log=print)                              # into a fresh create_state()
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from imgclf.errors import ResumeError
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
from imgclf.training.state import PartialEpoch, TrainState


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
