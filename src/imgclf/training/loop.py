"""The training loop: data resident on the device, batched augmentation, Keras-style SGD time decay.

The ``stable`` recipe's parts also live here: a per-step cosine schedule with warm-up (:func:`lr_at`),
gradient clipping, and a weight average (:mod:`.ema`) that validation and the saved file use.

``fit`` never prints; progress goes to callbacks (the CLI draws a progress bar with one). Everything a
run depends on lives in :class:`TrainState`, so a checkpoint of it (:mod:`.checkpoint`) resumes the
run exactly, even from the middle of an epoch: each epoch draws its sample order and augmentation
parameters up front from two generators, so "generator states at the epoch's start + steps done" is the
whole position. History records hold only deterministic numbers; wall-clock times go to ``timings``.

Usage::

    state = create_state(config, num_classes=2)
    state = fit(config, state, train_split, val_split, callbacks=[MyCallback()])
    model = state.model
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgclf.classifier import predict_logits
from imgclf.config import TrainConfig
from imgclf.data.decode import DecodedSplit
from imgclf.errors import UsageError
from imgclf.images.preprocess import to_tensor
from imgclf.models import registry
from imgclf.training.augment import affine_matrices, augment_batch, sample_params
from imgclf.training.determinism import deterministic_algorithms
from imgclf.training.ema import averaged_weights, bn_images, start_average, update_average
from imgclf.training.optim import KerasSGD

__all__ = [
    "TrainState",
    "PartialEpoch",
    "Callback",
    "create_state",
    "fit",
    "resolve_device",
    "resolve_precision",
    "cpu_has_native_bf16",
    "steps_per_epoch",
    "lr_at",
]


@dataclass
class PartialEpoch:
    """How far an interrupted epoch got (the generators are rewound to the epoch's start).

    Attributes:
        step: Steps of the epoch already done (0 < step < steps per epoch).
        loss_sum: Running sum of the epoch's batch losses (float32 scalar tensor).
        correct: Running count of correctly classified training images (int64 scalar tensor).
    """

    step: int
    loss_sum: torch.Tensor
    correct: torch.Tensor


@dataclass
class TrainState:
    """Everything a run depends on; checkpointing this resumes the run exactly.

    Attributes:
        model: The network (unwrapped, never compiled).
        optimizer: Keras-style SGD (:class:`imgclf.training.optim.KerasSGD`) with L2 groups.
        epoch: Epochs completed.
        step: Optimizer steps completed (drives the time decay).
        order_gen: Generator for each epoch's sample order, in its state at the start of the current
            epoch (or of the next one, between epochs).
        aug_gen: Generator for augmentation parameters, likewise.
        history: One dict per completed epoch (epoch, loss, accuracy, val_loss, val_accuracy, lr):
            deterministic, so a resumed run's history equals an uninterrupted one's.
        timings: Wall-clock ``{"epoch", "seconds"}`` per epoch (kept apart from ``history``).
        best_metric: Best value of the monitored metric so far.
        best_epoch: Epoch (1-based) that reached ``best_metric``.
        bad_epochs: Epochs since ``best_metric`` last improved (for early stopping).
        best_state: Copy of the weights at ``best_epoch`` (only with ``keep=best``).
        stopped_early: True if patience ran out.
        in_epoch: Progress inside an unfinished epoch (after an interruption), else ``None``.
        interrupted: True if ``fit`` returned because ``should_stop`` said so.
        ema: The weight average by parameter name (``config.ema > 0``), else ``None``.
        averaged: With ``ema``: the last epoch's averaged weights and recomputed batch-norm statistics
            (what ``keep=last`` saves), else ``None``.
    """

    model: nn.Module
    optimizer: KerasSGD
    epoch: int = 0
    step: int = 0
    order_gen: torch.Generator = field(default_factory=torch.Generator)
    aug_gen: torch.Generator = field(default_factory=torch.Generator)
    history: list[dict[str, float]] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False
    in_epoch: PartialEpoch | None = None
    interrupted: bool = False
    ema: dict[str, torch.Tensor] | None = None
    averaged: dict[str, torch.Tensor] | None = None


class Callback:
    """Hooks ``fit`` calls; override the ones you need. None of them may change the run."""

    def on_train_begin(
        self, config: TrainConfig, state: TrainState, steps: int, device: torch.device
    ) -> None:
        """Before the first epoch (also after a resume)."""

    def on_epoch_begin(self, epoch: int, steps: int) -> None:
        """Before each epoch; ``epoch`` is 1-based."""

    def on_step_end(self, step: int, steps: int, loss: float | None) -> None:
        """After each optimizer step; ``loss`` is ``None`` where reading it would stall the GPU."""

    def on_epoch_end(self, state: TrainState, record: dict[str, float]) -> None:
        """After each epoch's validation, with the epoch's history record."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last epoch (or early stop)."""


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device, failing clearly if CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                "CUDA device requested but none is available",
                received=name,
                expected="a machine with an NVIDIA GPU",
                fix="use --device cpu or --device auto",
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(
                "CUDA device index out of range",
                received=name,
                expected=f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}",
                fix="pick an existing GPU",
            )
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None`` means plain float32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def steps_per_epoch(n: int, batch_size: int) -> tuple[int, int]:
    """``(steps, batch)``: Keras' ``steps_per_epoch = N // batch`` full batches (one batch if N < batch)."""
    batch = min(batch_size, n)
    return max(1, n // batch), batch


def lr_at(config: TrainConfig, step: int, steps: int = 1) -> float:
    """The learning rate of optimizer step ``step`` (counted from 0) with ``steps`` steps per epoch.

    ``time_decay`` (Keras): ``lr / (1 + decay * step)``. ``cosine``: with ``W = round(warmup * steps)``
    warm-up steps and ``T = epochs * steps`` in all, ``lr * ((step + 1) / W)`` while ``step < W``, then
    ``lr * (1 + cos(pi * p)) / 2`` with ``p = min(1, (step - W) / (T - W))``.
    """
    if config.schedule == "time_decay":
        return config.lr / (1.0 + config.effective_decay * step)
    total = config.epochs * steps
    warm = min(round(config.warmup * steps), total)
    if step < warm:
        return config.lr * ((step + 1) / warm)
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _seeds(seed: int) -> tuple[int, int, int]:
    s = np.random.SeedSequence(seed).generate_state(3, dtype=np.uint64)
    return tuple(int(v) & ((1 << 63) - 1) for v in s)  # type: ignore[return-value]


def create_state(config: TrainConfig, num_classes: int, device: torch.device | None = None) -> TrainState:
    """Seed everything, build the model and the optimizer for a fresh run."""
    device = device or resolve_device(config.device)
    init_seed, order_seed, aug_seed = _seeds(config.seed)
    torch.manual_seed(init_seed)
    model = registry.build(config.arch, num_classes, config.preprocess.size, config.arch_args)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups = [
        {"params": params, "weight_decay": 2.0 * coef}  # d/dw of Keras' coef * w**2
        for coef, params in registry.l2_groups(model)
        if params
    ]
    optimizer = KerasSGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return TrainState(
        model=model,
        optimizer=optimizer,
        order_gen=torch.Generator().manual_seed(order_seed),
        aug_gen=torch.Generator().manual_seed(aug_seed),
        ema=start_average(model) if config.ema else None,
    )


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62  # unknown: assume it fits


def stage_images(images: np.ndarray, device: torch.device, share: float = 0.5) -> torch.Tensor | None:
    """Put a uint8 image array on ``device`` if it takes at most ``share`` of the free memory there.

    Returns ``None`` when it does not fit: ``fit`` then gathers each batch from ``images`` (typically a
    memory-mapped cache) instead, with identical results.
    """
    if images.nbytes > share * _available_bytes(device):
        return None
    if isinstance(images, np.memmap) or not images.flags.writeable:
        images = np.array(images)  # read the memory map into RAM once
    return torch.from_numpy(images).to(device)


def _improved(config: TrainConfig, value: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if config.monitor.endswith("loss") else value > best


def _evaluate(
    model: nn.Module, split: DecodedSplit, config: TrainConfig, device: torch.device
) -> tuple[float, float]:
    # Always float32, as prediction runs: a network trained under bf16 autocast can, after a bad swing,
    # score 1.00 in bf16 and 0.52 in float32 (large residual-stream offsets rounded away), and the
    # monitored metric must judge the model that will actually be saved and used.
    logits = predict_logits(
        model, split.images, config.preprocess, batch_size=config.eval_batch_size, device=device
    )
    labels = torch.from_numpy(split.labels)
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def fit(
    config: TrainConfig,
    state: TrainState,
    train: DecodedSplit,
    val: DecodedSplit | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    should_stop: Callable[[], bool] | None = None,
) -> TrainState:
    """Train ``state`` for the remaining epochs of ``config``; return the updated state.

    Args:
        config: The run's settings.
        state: From :func:`create_state` (or restored from a checkpoint, possibly mid-epoch).
        train: Decoded training split.
        val: Decoded validation split (may be empty or ``None``: then the monitored metric falls
            back to the training loss/accuracy).
        callbacks: Progress and checkpoint hooks.
        should_stop: Polled after each step and between epochs; when it returns True, ``fit`` finishes
            the current step and returns with ``state.interrupted`` set and, inside an epoch,
            ``state.in_epoch`` recording how far it got (the last step of an epoch is always followed
            by its validation, so an interruption there leaves a complete epoch).

    Raises:
        UsageError: With ``config.deterministic``, if an operation has no deterministic kernel.
    """
    device = next(state.model.parameters()).device
    with deterministic_algorithms(config.deterministic, device):
        return _fit(config, state, train, val, callbacks, should_stop)


def _fit(
    config: TrainConfig,
    state: TrainState,
    train: DecodedSplit,
    val: DecodedSplit | None,
    callbacks: Sequence[Callback],
    should_stop: Callable[[], bool] | None,
) -> TrainState:
    if len(train) == 0:
        raise UsageError(
            "no training images", received=0, expected="at least one image", fix="check the dataset"
        )
    device = next(state.model.parameters()).device
    dtype = resolve_precision(config.precision, device)
    if device.type == "cuda" and not config.deterministic:
        torch.backends.cudnn.benchmark = True
    model = state.model
    net: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if config.compile else model
    spec, aug = config.preprocess, config.augment
    x_all = stage_images(train.images, device)
    y_all = torch.from_numpy(train.labels).to(device)
    n = len(train)
    steps, batch = steps_per_epoch(n, config.batch_size)
    memory = torch.channels_last if config.channels_last else torch.contiguous_format
    report_every = 1 if device.type == "cpu" else 25
    state.interrupted = False
    for cb in callbacks:
        cb.on_train_begin(config, state, steps, device)

    def batch_images(idx: torch.Tensor) -> torch.Tensor:
        if x_all is not None:
            return x_all[idx]
        # Streaming from a memory-mapped cache: gather this batch's rows on the host.
        return torch.from_numpy(np.take(train.images, idx.cpu().numpy(), axis=0)).to(
            device, non_blocking=True
        )

    def train_step(idx: torch.Tensor, mats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        yb = y_all[idx]
        x = augment_batch(to_tensor(batch_images(idx), spec), aug, mats).contiguous(memory_format=memory)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=config.label_smoothing)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm, foreach=True)
        state.optimizer.step()
        return loss.detach(), (logits.detach().argmax(1) == yb).sum()

    def stop_requested() -> bool:
        return should_stop is not None and should_stop()

    model.train()
    while state.epoch < config.epochs and not state.stopped_early:
        if stop_requested():
            state.interrupted = True
            break
        epoch = state.epoch + 1
        for cb in callbacks:
            cb.on_epoch_begin(epoch, steps)
        started = time.perf_counter()
        # The generators hold the epoch's starting states: keep them to rewind to on interruption.
        gen_states = state.order_gen.get_state(), state.aug_gen.get_state()
        perm = torch.randperm(n, generator=state.order_gen)[: steps * batch].to(device)
        mats = affine_matrices(sample_params(steps * batch, aug, state.aug_gen), spec.height, spec.width)
        mats = mats.to(device=device, dtype=torch.float32)
        resumed, state.in_epoch = state.in_epoch, None
        loss_sum = resumed.loss_sum.to(device) if resumed else torch.zeros((), device=device)
        correct = resumed.correct.to(device) if resumed else torch.zeros((), device=device, dtype=torch.long)
        lr = lr_at(config, state.step, steps)
        for i in range(min(resumed.step, steps) if resumed else 0, steps):
            lr = lr_at(config, state.step, steps)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            sl = slice(i * batch, (i + 1) * batch)
            loss, hits = train_step(perm[sl], mats[sl])
            loss_sum += loss
            correct += hits
            state.step += 1
            if state.ema is not None:
                update_average(state.ema, model, config.ema, state.step)
            shown = loss.item() if (i + 1) % report_every == 0 or i + 1 == steps else None
            for cb in callbacks:
                cb.on_step_end(i + 1, steps, shown)
            if i + 1 < steps and stop_requested():
                state.order_gen.set_state(gen_states[0])
                state.aug_gen.set_state(gen_states[1])
                state.in_epoch = PartialEpoch(i + 1, loss_sum.detach().cpu(), correct.detach().cpu())
                state.interrupted = True
                break
        if state.interrupted:
            break
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": loss_sum.item() / steps,
            "accuracy": correct.item() / (steps * batch),
            "lr": lr,
        }
        with _judged_weights(config, state, train, memory):
            if val is not None and len(val):
                record["val_loss"], record["val_accuracy"] = _evaluate(net, val, config, device)
                model.train()
            _track_best(config, state, record)
        state.history.append(record)
        state.timings.append({"epoch": epoch, "seconds": time.perf_counter() - started})
        state.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_end(state, record)
    for cb in callbacks:
        cb.on_train_end(state)
    return state


@contextlib.contextmanager
def _judged_weights(
    config: TrainConfig, state: TrainState, train: DecodedSplit, memory: torch.memory_format
) -> Iterator[None]:
    """The weights an epoch is judged and kept by: the training weights, or (with EMA) the average.

    With EMA, the averaged weights with their recomputed batch-norm statistics are also kept in
    ``state.averaged``; the training weights are back, bit for bit, after the block.
    """
    if state.ema is None:
        yield
        return
    with averaged_weights(
        state.model,
        state.ema,
        bn_images(train.images),
        config.preprocess,
        batch_size=config.batch_size,
        memory_format=memory,
    ):
        state.averaged = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
        yield


def _track_best(config: TrainConfig, state: TrainState, record: dict[str, Any]) -> None:
    """Update best metric/epoch/weights and the early-stopping counter after an epoch."""
    key = config.monitor if config.monitor in record else config.monitor.replace("val_", "")
    value = float(record[key])
    if _improved(config, value, state.best_metric):
        state.best_metric, state.best_epoch, state.bad_epochs = value, record["epoch"], 0
        if config.keep == "best":
            state.best_state = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
    else:
        state.bad_epochs += 1
        if config.patience is not None and state.bad_epochs >= config.patience:
            state.stopped_early = True


def final_weights(config: TrainConfig, state: TrainState) -> tuple[nn.Module, int]:
    """The model to save (``keep=best`` restores the best epoch's weights) and the epoch it is from."""
    if config.keep == "best" and state.best_state is not None and state.best_epoch is not None:
        state.model.load_state_dict(state.best_state)
        return state.model, state.best_epoch
    if state.averaged is not None:
        state.model.load_state_dict(state.averaged)
    return state.model, state.epoch
