"""Training checkpoints: one safetensors file per save point, enough to continue a run bit for bit.

A checkpoint lives in ``RUN/checkpoints/`` and is named after where the run stands:
``epoch-0007.safetensors`` after epoch 7, ``epoch-0008-step-0012.safetensors`` after 12 steps of epoch 8
(written when a signal interrupts an epoch). Tensors: ``model.*`` (weights and buffers), ``best.*`` (the
best epoch's weights, with ``keep=best``), ``optimizer.<i>.velocity`` (the optimizer's velocities),
``gen.order`` / ``gen.aug`` (the data-order and augmentation generators at the epoch's start),
``rng.*`` (torch CPU/CUDA random states), ``epoch.*`` (an interrupted epoch's running sums) and, with a
weight average (``ema`` > 0), ``ema.*`` (the average) and ``averaged.*`` (the last epoch's averaged
weights with their recomputed batch-norm statistics).
Everything else — epoch, step, history, best metric, early-stop counter, Python/NumPy random states,
training config, class names, architecture, data fingerprint, versions — is JSON in the metadata key
``imgclf.training.checkpoint``. A SHA-256 over that JSON and every tensor (metadata key ``imgclf.sha256``)
catches a damaged file. No pickle.

Every file is written atomically; after each write only the newest two and the best epoch's checkpoint
are kept, so a damaged newest file still leaves the one before it.

Usage::

    path = write_checkpoint(run_dir, state, config, info)        # after an epoch (or on a signal)
    ckpt = latest_checkpoint(run_dir, run_id, log=print)         # newest one that validates
    restore(state, ckpt, log=print)                              # into a fresh create_state()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from imgclf._version import versions
from imgclf.config import TrainConfig
from imgclf.errors import ResumeError
from imgclf.fileio import atomic_write_bytes
from imgclf.training.determinism import capture_rng, restore_rng
from imgclf.training.loop import PartialEpoch, TrainState
from imgclf.training.optim import KerasSGD

__all__ = [
    "CHECKPOINT_DIR",
    "Checkpoint",
    "CheckpointDamaged",
    "checkpoint_name",
    "list_checkpoints",
    "encode",
    "write_checkpoint",
    "read_checkpoint",
    "latest_checkpoint",
    "restore",
]

CHECKPOINT_DIR = "checkpoints"
FORMAT = "imgclf-checkpoint"
FORMAT_VERSION = 1
STATE_KEY = "imgclf.training.checkpoint"
DIGEST_KEY = "imgclf.sha256"
KEEP_NEWEST = 2
_NAME = re.compile(r"^epoch-(\d{4,})(?:-step-(\d{4,}))?\.safetensors$")
_REQUIRED = {
    "format": str,
    "format_version": int,
    "run_id": str,
    "epoch": int,
    "step": int,
    "epoch_step": int,
    "history": list,
    "timings": list,
    "bad_epochs": int,
    "stopped_early": bool,
    "config": dict,
    "class_names": list,
    "optimizer": dict,
    "rng": dict,
    "versions": dict,
}

Log = Callable[[str], None]


class CheckpointDamaged(ValueError):
    """A checkpoint file cannot be used (truncated, corrupt, foreign); the message says why."""


@dataclass
class Checkpoint:
    """A validated checkpoint: its path, its JSON state and its tensors (on the CPU)."""

    path: str
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        """The file name, e.g. ``epoch-0007.safetensors``."""
        return os.path.basename(self.path)

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return int(self.state["epoch"])

    @property
    def epoch_step(self) -> int:
        """Steps done inside the next, unfinished epoch (0 at an epoch boundary)."""
        return int(self.state["epoch_step"])

    def describe(self) -> str:
        """``after epoch 7`` or ``in epoch 8 after step 12``."""
        if self.epoch_step:
            return f"in epoch {self.epoch + 1} after step {self.epoch_step}"
        return f"after epoch {self.epoch}"


def checkpoint_name(epoch: int, epoch_step: int = 0) -> str:
    """File name for a run that completed ``epoch`` epochs and ``epoch_step`` steps of the next."""
    if epoch_step:
        return f"epoch-{epoch + 1:04d}-step-{epoch_step:04d}.safetensors"
    return f"epoch-{epoch:04d}.safetensors"


def _position(name: str) -> tuple[int, int] | None:
    """(epochs completed, steps into the next epoch) parsed from a checkpoint file name."""
    m = _NAME.match(name)
    if not m:
        return None
    if m.group(2) is None:
        return int(m.group(1)), 0
    return int(m.group(1)) - 1, int(m.group(2))


def list_checkpoints(run_dir: str | os.PathLike) -> list[str]:
    """Paths of the checkpoint files in ``run_dir``, newest first (by name: epoch, then step)."""
    folder = os.path.join(os.fspath(run_dir), CHECKPOINT_DIR)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(pos, n) for n in names if (pos := _position(n)) is not None]
    return [os.path.join(folder, n) for _, n in sorted(found, reverse=True)]


def _digest(state_text: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(state_text.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\x00{name}\x00{t.dtype}\x00{list(t.shape)}\x00".encode())
        h.update(t.detach().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _cpu(t: torch.Tensor) -> torch.Tensor:
    # safetensors wants contiguous tensors; channels-last weights are copied to the standard layout.
    return t.detach().to("cpu").contiguous()


def encode(state: TrainState, config: TrainConfig, info: dict[str, Any]) -> bytes:
    """Serialise ``state`` (plus the run-level ``info``: run_id, class_names, ...) to safetensors bytes."""
    from safetensors.torch import save as st_save


    tensors = {f"model.{k}": _cpu(v) for k, v in state.model.state_dict().items()}
    if state.best_state is not None:
        tensors.update({f"best.{k}": _cpu(v) for k, v in state.best_state.items()})
    for index, values in state.optimizer.state_dict()["state"].items():
        for key, value in values.items():  # KerasSGD keeps tensors only (its velocities)
            tensors[f"optimizer.{index}.{key}"] = _cpu(value)
    if state.ema is not None:
        tensors.update({f"ema.{k}": _cpu(v) for k, v in state.ema.items()})
    if state.averaged is not None:
        tensors.update({f"averaged.{k}": _cpu(v) for k, v in state.averaged.items()})
    tensors["gen.order"] = state.order_gen.get_state()
    tensors["gen.aug"] = state.aug_gen.get_state()
    rng_data, rng_tensors = capture_rng()
    tensors.update(rng_tensors)
    if state.in_epoch is not None:
        tensors["epoch.loss_sum"] = _cpu(state.in_epoch.loss_sum)
        tensors["epoch.correct"] = _cpu(state.in_epoch.correct)
    body = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **info,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "epoch": state.epoch,
        "step": state.step,
        "epoch_step": state.in_epoch.step if state.in_epoch is not None else 0,
        "history": state.history,
        "timings": state.timings,
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "stopped_early": state.stopped_early,
        "config": config.to_dict(),
        "optimizer": {},  # per-parameter state that is not a tensor: none (kept for the format)
        "rng": rng_data,
        "versions": versions(),
    }
    # Python's JSON writes floats with repr (round-trips exactly) and keeps NaN (a diverged loss).
    text = json.dumps(body)  # insertion order kept: a restored history writes out identically
    return st_save(tensors, metadata={STATE_KEY: text, DIGEST_KEY: _digest(text, tensors)})


def write_checkpoint(
    run_dir: str | os.PathLike, state: TrainState, config: TrainConfig, info: dict[str, Any]
) -> str:
    """Atomically write a checkpoint of ``state`` into ``RUN/checkpoints/``, then prune old ones.

    Returns:
        The path written.

    Raises:
        StorageError: If the folder is unwritable or the disk is full (the previous files are intact).
    """
    folder = os.path.join(os.fspath(run_dir), CHECKPOINT_DIR)
    os.makedirs(folder, exist_ok=True)
    step = state.in_epoch.step if state.in_epoch is not None else 0
    path = os.path.join(folder, checkpoint_name(state.epoch, step))
    atomic_write_bytes(path, encode(state, config, info))
    _prune(run_dir, keep_also=checkpoint_name(state.best_epoch) if state.best_epoch else None)
    return path


def _prune(run_dir: str | os.PathLike, keep_also: str | None) -> None:
    """Delete all but the newest ``KEEP_NEWEST`` checkpoints and the best epoch's one."""
    for path in list_checkpoints(run_dir)[KEEP_NEWEST:]:
        if os.path.basename(path) != keep_also:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate one checkpoint file (digest, format, required fields).

    Raises:
        CheckpointDamaged: Saying what is wrong with the file.
    """
    from safetensors.torch import load as st_load

    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CheckpointDamaged(f"cannot read it ({exc.strerror or exc})") from None
    if len(data) < 8:
        raise CheckpointDamaged(f"too short ({len(data)} bytes)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise CheckpointDamaged(f"truncated: header says {size} bytes, file has {len(data) - 8}")
    try:
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        text, digest = meta[STATE_KEY], meta[DIGEST_KEY]
        tensors = st_load(data)
    except Exception as exc:  # noqa: BLE001 - any parser failure means the same thing: unusable file
        raise CheckpointDamaged(f"not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if _digest(text, tensors) != digest:
        raise CheckpointDamaged("integrity check failed (the file was modified or damaged)")
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise CheckpointDamaged(f"its state is not JSON ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointDamaged("its state is not a JSON object")
    if state.get("format") != FORMAT or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointDamaged(
            f"format {state.get('format')!r} version {state.get('format_version')!r}, "
            f"expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    wrong = [k for k, kind in _REQUIRED.items() if not isinstance(state.get(k), kind)]
    if wrong:
        raise CheckpointDamaged(f"fields missing or malformed: {', '.join(wrong)}")
    for name in ("gen.order", "gen.aug", "rng.torch"):
        if name not in tensors:
            raise CheckpointDamaged(f"tensor {name!r} is missing")
    if state["epoch_step"] and not {"epoch.loss_sum", "epoch.correct"} <= set(tensors):
        raise CheckpointDamaged("an interrupted epoch's running sums are missing")
    return Checkpoint(path, state, tensors)


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
    """Load ``ckpt`` into ``state`` (fresh from :func:`.loop.create_state`, same recipe).

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
