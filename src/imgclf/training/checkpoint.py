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
    ckpt = read_checkpoint(path)                                 # validated, or CheckpointDamaged

Finding the newest usable checkpoint and putting it back into a ``TrainState`` is :mod:`.resume`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from imgclf._version import versions
from imgclf.config import TrainConfig
from imgclf.fileio.reading import os_reason, read_bounded
from imgclf.fileio.writing import atomic_write_bytes
from imgclf.modelfile.foreign import CHECKPOINT_KEY
from imgclf.training.determinism import capture_rng
from imgclf.training.state import TrainState

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FORMAT = "imgclf-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 1 << 36  # weights plus optimizer state: generous, but a device or a FIFO is refused
STATE_KEY = CHECKPOINT_KEY  # inspect/load recognise checkpoints by it (imgclf.modelfile.foreign)
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
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
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
        data = read_bounded(path, MAX_CHECKPOINT_BYTES, "checkpoint")
    except OSError as exc:
        raise CheckpointDamaged(f"cannot read it ({os_reason(exc)})") from None
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
    except (ValueError, RecursionError) as exc:
        raise CheckpointDamaged(f"its state is not JSON ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointDamaged("its state is not a JSON object")
    if state.get("format") != CHECKPOINT_FORMAT or state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointDamaged(
            f"format {state.get('format')!r} version {state.get('format_version')!r}, "
            f"expected {CHECKPOINT_FORMAT!r} version {CHECKPOINT_FORMAT_VERSION}"
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
