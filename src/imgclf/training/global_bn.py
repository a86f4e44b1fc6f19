"""Batch norm over the global batch of a multi-process run, on any backend (gloo on the CPU included).

Under DDP each rank sees only its ``B/N`` rows of a global batch. Plain batch norm then normalises with
those rows alone and updates its running statistics from them: a different computation from the
single-process step on the same global batch (the gradients differ, and so does the whole run from the
first step on), and the per-rank running variances, averaged, are not the variance of the global batch.
:func:`use_global_batch_norm` makes every batch-norm layer of a model compute its training-mode mean
and variance over the whole global batch instead (one all-reduce of ``3·C`` numbers per layer forward,
one in the backward pass through autograd), so each step, and each running-statistics update, is the
single-process one up to float summation order, and every rank holds the same statistics.

PyTorch's ``SyncBatchNorm`` does the same on CUDA only (its kernels have no CPU implementation); this
one is plain tensor arithmetic and a differentiable all-reduce.

The layers keep their identity, parameters, buffers and ``state_dict`` keys (only their class is
switched to a subclass whose training-mode forward reduces across ranks); outside a process group, in
evaluation mode or without gradients (e.g. :func:`imgclf.training.ema.recompute_bn`, where every rank
runs the same images) they compute exactly what plain batch norm does.

Usage::

    restore = use_global_batch_norm(model)   # before wrapping it in DistributedDataParallel
    ...                                       # train
    restore()                                 # plain batch-norm layers again (same objects)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def _global_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``x`` over all ranks' rows, and the global count.

    Each rank contributes its count, sum and sum of squares around its own mean (accurate locally), in
    float64 so that pooling them (``E[x²] − mean²``) loses nothing a float32 result would keep.
    """
    dims = [0, *range(2, x.dim())]
    count = x.numel() // x.shape[1]
    var, mean = torch.var_mean(x.float(), dim=dims, correction=0)
    mean, var = mean.double(), var.double()
    n = torch.full_like(mean, float(count))
    total = _SumOverRanks.apply(torch.stack([n, n * mean, n * (var + mean * mean)]))
    n_all = total[0]
    g_mean = total[1] / n_all
    g_var = (total[2] / n_all - g_mean * g_mean).clamp_min(0.0)
    return g_mean, g_var, n_all


class _SumOverRanks(torch.autograd.Function):
    """An all-reduce (sum) that autograd differentiates: the gradient of a sum over the ranks is the sum
    of the ranks' gradients (``torch.distributed.nn``'s own is deprecated in favour of a private API)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


class _GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Training-mode statistics over every rank's rows (see the module docstring)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's parameter name
        if not (self.training and torch.is_grad_enabled() and _world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        mean, var, n_all = _global_stats(input)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)  # type: ignore[arg-type]
                unbiased = var * (n_all / (n_all - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = [1, -1] + [1] * (input.dim() - 2)
        invstd = torch.rsqrt(var + self.eps).float()
        out = (input.float() - mean.float().view(shape)) * invstd.view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


class _GlobalBatchNorm1d(_GlobalBatchNorm, nn.BatchNorm1d):
    pass


class _GlobalBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    pass


class _GlobalBatchNorm3d(_GlobalBatchNorm, nn.BatchNorm3d):
    pass


_GLOBAL: dict[type, type] = {
    nn.BatchNorm1d: _GlobalBatchNorm1d,
    nn.BatchNorm2d: _GlobalBatchNorm2d,
    nn.BatchNorm3d: _GlobalBatchNorm3d,
}


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def use_global_batch_norm(model: nn.Module) -> Callable[[], None]:
    """Switch every plain batch-norm layer of ``model`` (in place) to global-batch statistics.

    Returns:
        A function that switches them back to their own classes.
    """
    switched = [(m, type(m)) for m in model.modules() if type(m) in _GLOBAL]
    for module, cls in switched:
        module.__class__ = _GLOBAL[cls]

    def restore() -> None:
        for module, cls in switched:
            module.__class__ = cls

    return restore
