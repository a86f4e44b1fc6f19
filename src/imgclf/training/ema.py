"""An exponential moving average (EMA) of the weights, judged with batch-norm statistics of its own.

Averaging the weights of the last few hundred steps smooths out the swings of a noisy small-data run.
Batch-norm running statistics cannot be averaged the same way: they describe the activations of the
weights that produced them, not of the average. So before the averaged weights are evaluated or saved,
their statistics are recomputed by running them (in training mode, no gradients) over training images,
unaugmented, as evaluation and prediction will see them (the idea of SWA's ``update_bn``), in batches of
the training batch size. To keep the cost near 10 % of an epoch, only every k-th image is used
(:func:`bn_images`: a quarter of the set, at least 64 images): the statistics are averages over
thousands of pixel positions per channel, so a quarter estimates them closely.

The decay ramps up with the step count, ``min(decay, (1 + t) / (10 + t))``, so a short run averages over
its recent steps rather than being dominated by its random initial weights.

Usage::

    ema = start_average(model)                             # after create_state
    update_average(ema, model, decay=0.998, step=state.step)  # after each optimizer step
    with averaged_weights(model, ema, images, spec):       # evaluate/snapshot the averaged network
        evaluate(model)
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator

import numpy as np
import torch
from torch import nn

from imgclf.config import PreprocessSpec
from imgclf.images.preprocess import to_tensor

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
BN_SHARE = 4  # recompute from every BN_SHARE-th image ...
BN_MIN_IMAGES = 64  # ... but from at least this many (all of a smaller set)


def bn_images(images: np.ndarray) -> np.ndarray:
    """The images batch-norm statistics are recomputed from: every k-th, k = min(4, n // 64) (>= 1)."""
    step = max(1, min(BN_SHARE, len(images) // BN_MIN_IMAGES))
    return images[::step]


def start_average(model: nn.Module) -> dict[str, torch.Tensor]:
    """A fresh average: a copy of every parameter (by name, in the model's order, same memory layout)."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def ema_decay(decay: float, step: int) -> float:
    """The decay used after optimizer step ``step`` (1-based): ``min(decay, (1 + step) / (10 + step))``."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_average(average: dict[str, torch.Tensor], model: nn.Module, decay: float, step: int) -> None:
    """``average = d·average + (1 − d)·weights`` with ``d = ema_decay(decay, step)``."""
    d = ema_decay(decay, step)
    params = [p.detach() for _, p in model.named_parameters()]
    torch._foreach_lerp_(list(average.values()), params, 1.0 - d)


@torch.no_grad()
def recompute_bn(
    model: nn.Module,
    images: np.ndarray,
    spec: PreprocessSpec,
    *,
    batch_size: int = 256,
    memory_format: torch.memory_format = torch.contiguous_format,
    keep: Collection[nn.Module] = (),
) -> None:
    """Replace every batch-norm layer's running statistics by their average over ``images``.

    Each batch contributes equally (PyTorch's cumulative average, ``momentum=None``); the last,
    smaller batch therefore counts as much as a full one. The layers in ``keep`` (a frozen backbone's)
    keep their statistics and normalise with them during the pass, as evaluation will. The model's
    training flags are restored.
    """
    kept = {id(m) for m in keep}
    layers = [
        m for m in model.modules() if isinstance(m, BN_TYPES) and m.track_running_stats and id(m) not in kept
    ]
    if not layers or len(images) == 0:
        return
    device = next(model.parameters()).device
    momenta = [m.momentum for m in layers]
    modes = [(module, module.training) for module in model.modules()]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for frozen in keep:
        frozen.eval()
    try:
        for start in range(0, len(images), batch_size):
            x = to_tensor(images[start : start + batch_size], spec, device=device)
            model(x.contiguous(memory_format=memory_format))
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def averaged_weights(
    model: nn.Module,
    average: dict[str, torch.Tensor],
    images: np.ndarray,
    spec: PreprocessSpec,
    *,
    batch_size: int = 256,
    memory_format: torch.memory_format = torch.contiguous_format,
    keep_bn: Collection[nn.Module] = (),
) -> Iterator[nn.Module]:
    """Inside the block ``model`` holds the averaged weights and their recomputed BN statistics.

    The batch-norm layers in ``keep_bn`` keep theirs: a frozen backbone's, whose weights the average
    equals (the average starts from them and they have not moved).

    On leaving, the training weights and buffers are copied back exactly (bit for bit), so the run
    continues as if nothing happened.
    """
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(average[name])
        recompute_bn(model, images, spec, batch_size=batch_size, memory_format=memory_format, keep=keep_bn)
        yield model
    finally:
        with torch.no_grad():
            for name, v in model.state_dict().items():
                v.copy_(saved[name])
