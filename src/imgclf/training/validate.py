"""Scoring a model on a split during training: ``(loss, accuracy)``, the numbers ``fit`` records per epoch.

Usage::

    val_loss, val_accuracy = evaluate_split(model, val, config, device, group=None)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.classifier import predict_logits
from imgclf.config import TrainConfig
from imgclf.data.decode import DecodedSplit
from imgclf.evaluation import class_balanced_scores

if TYPE_CHECKING:
    from imgclf.training.distributed import Group


def evaluate_split(
    model: nn.Module,
    split: DecodedSplit,
    config: TrainConfig,
    device: torch.device,
    group: Group | None,
    extra: dict[str, Any] | None = None,
) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``model`` on ``split`` in float32 (sharded and summed under ``group``).

    ``extra``, if given, receives ``val_balanced_accuracy`` and ``val_macro_f1`` (from the confusion
    matrix, summed over ranks), the measures the majority class of imbalanced data cannot game.
    """
    # Always float32, as prediction runs: a network trained under bf16 autocast can, after a bad swing,
    # score 1.00 in bf16 and 0.52 in float32 (large residual-stream offsets rounded away), and the
    # monitored metric must judge the model that will actually be saved and used.
    # Under several processes each rank scores a contiguous share (no padding: nothing counted twice)
    # and the sums and counts are added up, so the accuracy equals the single-process one exactly.
    part = group.shard(len(split)) if group is not None else slice(0, len(split))
    logits = predict_logits(
        model, split.images[part], config.preprocess, batch_size=config.eval_batch_size, device=device
    )
    labels = torch.from_numpy(split.labels[part])
    if labels.ndim == 2:
        return _multilabel(logits, labels, len(split), group, extra)
    if extra is not None:
        confusion = _confusion(logits, labels)
        if group is not None:
            (confusion,) = group.sum_(confusion)
        extra.update(class_balanced_scores(confusion.numpy(), prefix="val_"))
    if group is None:
        loss = F.cross_entropy(logits, labels).item()
        return loss, (logits.argmax(1) == labels).float().mean().item()
    loss_sum = F.cross_entropy(logits, labels, reduction="sum") if len(labels) else torch.zeros(())
    hits = (logits.argmax(1) == labels).sum() if len(labels) else torch.zeros((), dtype=torch.int64)
    loss_sum, hits = group.sum_(loss_sum.double(), hits.long())
    return loss_sum.item() / len(split), hits.item() / len(split)


def _confusion(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The (C, C) int64 confusion counts of argmax predictions (rows: true classes)."""
    c = logits.shape[-1]
    flat = labels.long() * c + logits.argmax(1)
    return torch.bincount(flat, minlength=c * c).reshape(c, c)


def _multilabel(
    logits: torch.Tensor, targets: torch.Tensor, n: int, group: Group | None, extra: dict[str, Any] | None
) -> tuple[float, float]:
    """Multi-label ``(BCE loss, exact-match accuracy)`` at the 0.5 probability cut; ``extra`` gets the
    macro-F1 and mean per-class balanced accuracy (from per-class counts, summed over ranks)."""
    loss_sum = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum").double() / max(
        targets.shape[1], 1
    )
    t, p = targets > 0.5, logits > 0
    counts = torch.stack([(t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0), (~t & ~p).sum(0)])
    hits = (t == p).all(1).sum()
    if group is not None:
        loss_sum, hits, counts = group.sum_(loss_sum, hits, counts)
    if extra is not None:
        tp, fp, fn, tn = (c.double() for c in counts)
        f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.zeros_like(tp))
        tpr = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), torch.zeros_like(tp))
        tnr = torch.where(tn + fp > 0, tn / (tn + fp).clamp(min=1), torch.zeros_like(tp))
        extra["val_macro_f1"] = f1.mean().item()
        extra["val_balanced_accuracy"] = ((tpr + tnr) / 2).mean().item()
    return loss_sum.item() / max(n, 1), hits.item() / max(n, 1)
