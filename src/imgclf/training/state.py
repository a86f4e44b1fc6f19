"""Everything a run depends on (:class:`TrainState`), how a fresh one is seeded and built, and which
weights a finished run keeps.

A checkpoint of a ``TrainState`` (:mod:`.checkpoint`) resumes the run exactly, even from the middle of
an epoch: each epoch draws its sample order and augmentation parameters up front from two generators, so
"generator states at the epoch's start + steps done" is the whole position.

Usage::

    state = create_state(config, num_classes=2)
    model, epoch = final_weights(config, state)   # after fit: keep=best restores the best epoch
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from imgclf.config import TrainConfig
from imgclf.models import registry
from imgclf.training.device import resolve_device
from imgclf.training.ema import start_average
from imgclf.training.finetune import param_groups
from imgclf.training.optim import KerasSGD


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
    groups = param_groups(model, config)  # weight_decay: d/dw of Keras' coef * w**2
    optimizer = KerasSGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return TrainState(
        model=model,
        optimizer=optimizer,
        order_gen=torch.Generator().manual_seed(order_seed),
        aug_gen=torch.Generator().manual_seed(aug_seed),
        ema=start_average(model) if config.ema else None,
    )


def final_weights(config: TrainConfig, state: TrainState) -> tuple[nn.Module, int]:
    """The model to save (``keep=best`` restores the best epoch's weights) and the epoch it is from."""
    if config.keep == "best" and state.best_state is not None and state.best_epoch is not None:
        state.model.load_state_dict(state.best_state)
        return state.model, state.best_epoch
    if state.averaged is not None:
        state.model.load_state_dict(state.averaged)
    return state.model, state.epoch
