"""Fine-tuning from trained weights: head-only epochs first, then discriminative learning rates.

As fastai's ``fine_tune``: for ``freeze_epochs`` epochs only the head trains (the backbone's weights and
its batch-norm statistics stay as loaded), then everything trains, the backbone at ``backbone_lr`` times
the head's rate. The phase is a function of the epoch number alone, so a run resumed in either phase (or
across the boundary) trains exactly as an uninterrupted one.

Usage::

    groups = param_groups(model, config)          # optimizer groups with an ``lr_scale`` each
    frozen = set_phase(model, config, epoch)      # at the start of every epoch; returns frozen params
"""

from __future__ import annotations

from typing import Any

from torch import nn

from imgclf.config import TrainConfig
from imgclf.errors import UsageError
from imgclf.models import registry
from imgclf.models.timm_backbone import head_names


def _head_param_ids(model: nn.Module) -> set[int]:
    names = head_names(model)
    return {id(p) for n, p in model.named_parameters() if n in names}


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's groups: the architecture's L2 groups, split into head and backbone when the run
    starts from trained weights (the backbone's ``lr_scale`` is ``backbone_lr``; the head's 1)."""
    head = _head_param_ids(model) if config.pretrained else set()
    groups: list[dict[str, Any]] = []
    for coef, params in registry.l2_groups(model):
        for part, scale in (
            ([p for p in params if id(p) in head], 1.0),
            ([p for p in params if id(p) not in head], config.backbone_lr if head else 1.0),
        ):
            if part:
                groups.append({"params": part, "weight_decay": 2.0 * coef, "lr_scale": scale})
    return groups


def is_frozen(config: TrainConfig, epoch: int) -> bool:
    """Whether 1-based ``epoch`` trains the head only (every epoch of a linear probe)."""
    return config.linear_probe or epoch <= config.effective_freeze_epochs


def set_phase(
    model: nn.Module, config: TrainConfig, epoch: int, *, toggle_grad: bool = True
) -> list[nn.Parameter]:
    """Put ``model`` (in training mode) into ``epoch``'s phase; return the parameters that must not move.

    In a head-only epoch the backbone's batch-norm layers run in eval mode (their statistics stay as
    loaded) and, with ``toggle_grad``, the backbone's parameters stop requiring gradients (a cheaper
    backward). Under DistributedDataParallel, whose gradient buckets are fixed when it wraps the model,
    ``toggle_grad`` is off and the caller drops the returned parameters' gradients before each step.
    """
    if config.effective_freeze_epochs == 0 and not config.linear_probe:
        return []
    frozen = is_frozen(config, epoch)
    head = _head_param_ids(model)
    if frozen and not head:
        raise UsageError(
            "head-only epochs need a model with a linear head",
            received=type(model).__name__,
            expected="an architecture ending in a linear layer",
            fix="use --freeze-epochs 0 (and no --linear-probe)",
        )
    still = [p for p in model.parameters() if id(p) not in head] if frozen else []
    if toggle_grad:
        for p in model.parameters():
            p.requires_grad_(not frozen or id(p) in head)
    if frozen:
        for m in backbone_bn(model):
            m.eval()
    return still


def backbone_bn(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers outside the head: their statistics stay as loaded in head-only epochs."""
    head = _head_param_ids(model)
    head_modules = {id(m) for m in model.modules() if any(id(p) in head for p in m.parameters(recurse=False))}
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_modules
    ]


def frozen_bn(model: nn.Module, config: TrainConfig, epoch: int) -> list[nn.Module]:
    """The batch-norm layers whose statistics no epoch up to ``epoch`` has changed (none once one trained
    the backbone): an average of the weights (EMA) keeps their statistics instead of recomputing them."""
    return backbone_bn(model) if is_frozen(config, epoch) else []
