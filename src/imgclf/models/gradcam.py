"""Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for a class lies, for any network.

The layer is found, not configured: one forward pass with hooks records every leaf module's output, and
the last one (in execution order) that is still a spatial map — four dimensions, more than one pixel, not
a pooling layer — is the last convolutional stage. That rule holds for every architecture imgclf builds
(``small_cnn``'s last ReLU, ``seed_resnet``'s final batch norm, an imported Keras graph's last conv block)
and for any backbone whose features end in a spatial map.

Usage::

    from imgclf.models import registry
    model = registry.build("small_cnn", num_classes=2, input_size=(32, 32), args={"widths": [8, 16]}).eval()
    layer = target_layer(model, (32, 32))                      # "features.7"
    heat = gradcam(model, torch.rand(1, 3, 32, 32), [1])        # (1, 32, 32), each map scaled to [0, 1]
    picture = overlay(np.zeros((40, 40, 3), np.uint8), heat[0])  # (40, 40, 3) uint8
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_POOLING = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
    nn.FractionalMaxPool2d,
)


def _is_pooling(module: nn.Module) -> bool:
    # An imported Keras graph's pooling layer is imgclf.models.keras_graph.Pool (named, not imported, so
    # this module stays free of the Keras builder).
    return isinstance(module, _POOLING) or type(module).__name__ == "Pool"


def _spatial_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, output shape)`` of every leaf module producing a 4-D non-pooled map, in execution order."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()) and not _is_pooling(module):

            def hook(_m: nn.Module, inputs: tuple, out: object, name: str = name) -> None:
                # a pass-through in eval mode (dropout, identity) hands back its input: not a layer of
                # its own; an in-place activation hands back its input too, transformed (a block's output)
                passed = any(out is i for i in inputs) and not getattr(_m, "inplace", False)
                if isinstance(out, torch.Tensor) and out.dim() == 4 and not passed:
                    seen.append((name, tuple(out.shape)))

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def target_layer(model: nn.Module, input_size: tuple[int, int]) -> str:
    """The name of the module Grad-CAM reads: the last spatial map before the network pools it away.

    Args:
        model: The network, mapping (N, 3, H, W) to (N, classes) logits.
        input_size: ``(height, width)`` of its input.

    Raises:
        ValueError: If the network produces no 4-D map at all (nothing to localise).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    seen = _spatial_outputs(model, torch.zeros((1, 3, *input_size), device=device))
    spatial = [name for name, shape in seen if shape[2] * shape[3] > 1]
    if spatial:
        return spatial[-1]
    if seen:
        return seen[-1][0]
    raise ValueError("the network has no convolutional feature map for Grad-CAM to read")


def gradcam(
    model: nn.Module, x: torch.Tensor, targets: Sequence[int] | None = None, layer: str | None = None
) -> np.ndarray:
    """Grad-CAM maps for a batch, upsampled to the input size and scaled to [0, 1] per image.

    ``relu(sum_k mean_ij(d y_c / d A_k) * A_k)`` at the ``layer`` (default :func:`target_layer`), for
    class ``c`` = ``targets[n]`` (default: each image's predicted class), bilinearly upsampled.

    Args:
        model: The network (eval mode is the caller's choice; imgclf's classifier holds it in eval).
        x: Model input (N, 3, H, W), already preprocessed.
        targets: One class index per image, or ``None`` for the predicted class.
        layer: A module name of ``model``; default: the automatic choice.

    Returns:
        float32 array (N, H, W); an image with no positive evidence gets all zeros.
    """
    raw = gradcam_raw(model, x, targets, layer)
    up = F.interpolate(raw[:, None], size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)[:, 0]
    peak = up.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (up / peak).clamp(0, 1).numpy().astype(np.float32)


def gradcam_raw(
    model: nn.Module, x: torch.Tensor, targets: Sequence[int] | None = None, layer: str | None = None
) -> torch.Tensor:
    """The unscaled Grad-CAM map at the layer's own resolution (N, h, w), on the CPU (see :func:`gradcam`)."""
    name = layer or target_layer(model, (x.shape[2], x.shape[3]))
    module = dict(model.named_modules())[name]
    store: dict[str, torch.Tensor] = {}

    def keep(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        store["a"] = out
        return out.clone()  # the rest of the network may change its input in place; the map must not

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            inp = x.detach().clone().requires_grad_(True)  # a graph even when the weights are frozen
            logits = model(inp)
            cls = (
                logits.argmax(dim=1)
                if targets is None
                else torch.as_tensor(list(targets), device=logits.device)
            )
            score = logits.gather(1, cls.view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    acts = store["a"].detach().float()
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * acts).sum(dim=1)).cpu()


def _colormap(v: np.ndarray) -> np.ndarray:
    """A blue → cyan → yellow → red ramp (jet-like) for values in [0, 1]; (..., 3) uint8."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def overlay(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``heatmap`` (h, w) in [0, 1], resized to the image, blended over ``rgb`` (H, W, 3 uint8)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    heat = Image.fromarray((np.clip(heatmap, 0, 1) * 255).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BILINEAR
    )
    colors = _colormap(np.asarray(heat, dtype=np.float32) / 255.0).astype(np.float32)
    return (rgb.astype(np.float32) * (1 - alpha) + colors * alpha).round().astype(np.uint8)
