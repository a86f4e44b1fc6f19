"""Test-time augmentation: the same image seen a few fixed ways, probabilities averaged.

The views follow the model's own training augmentation (recorded in its provenance): the image itself,
its mirror image when training flipped left-right (or upside down), and rotations by half the training
rotation range either way (edges replicated, as the recipe's ``nearest`` fill). A model without a
record gets the image and its left-right mirror.

Usage::

    views = tta_views(augment)                                   # ["identity", "hflip", "rot+10", "rot-10"]
    probs = average_over_views(predict_uint8, images, views)      # (N, C)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def tta_views(augment: dict[str, Any] | None) -> list[str]:
    """The view names for a model trained with ``augment`` (its provenance ``training.augment``)."""
    if not isinstance(augment, dict):
        return ["identity", "hflip"]
    views = ["identity"]
    if not augment.get("enabled", True):
        return views + ["hflip"]
    if augment.get("horizontal_flip"):
        views.append("hflip")
    if augment.get("vertical_flip"):
        views.append("vflip")
    rotation = augment.get("rotation")
    if isinstance(rotation, (int, float)) and rotation > 0:
        half = float(rotation) / 2
        views += [f"rot+{half:g}", f"rot-{half:g}"]
    return views


def _rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    a = np.deg2rad(degrees)
    theta = torch.tensor([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0]], dtype=torch.float32)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def apply_view(images: np.ndarray, view: str) -> np.ndarray:
    """``images`` (N, H, W, 3) uint8 seen as ``view``."""
    if view == "identity":
        return images
    if view == "hflip":
        return np.ascontiguousarray(images[:, :, ::-1])
    if view == "vflip":
        return np.ascontiguousarray(images[:, ::-1])
    if view.startswith("rot"):
        return _rotate(images, float(view[3:]))
    raise ValueError(f"unknown view {view!r}")


def average_over_views(
    predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, views: list[str]
) -> np.ndarray:
    """The mean of ``predict`` (uint8 batch → probabilities) over ``views`` of ``images``."""
    total = None
    for view in views:
        p = predict(apply_view(images, view)).astype(np.float64)
        total = p if total is None else total + p
    assert total is not None
    return (total / len(views)).astype(np.float32)
