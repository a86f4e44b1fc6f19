"""Batched random affine augmentation on the training device (one ``grid_sample`` per batch).

Random parameters are drawn on the CPU from a seeded ``torch.Generator`` (a few numbers per image),
so a run is reproducible whatever the device, and the generator's state can be checkpointed.
The transform follows Keras' ``ImageDataGenerator``: rotation, shift, shear (degrees), independent
x/y zoom, composed about the image centre, sampled bilinearly with the chosen fill; flips are folded
into the same affine matrix.

Usage::

    gen = torch.Generator().manual_seed(0)
    mats = affine_matrices(sample_params(len(x), AugmentSpec(), gen), 64, 64)
    x_aug = augment_batch(x, AugmentSpec(), mats)       # x: float (N, 3, H, W) on any device
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from imgclf.config import AugmentSpec

_PADDING = {"nearest": "border", "constant": "zeros", "reflect": "reflection"}


def sample_params(n: int, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Draw per-image parameters (n, 8): rotation, x/y shift fractions, shear (radians), zx, zy, flips.

    Always draws the same amount of randomness, so the generator advances identically whatever the
    spec (resuming and comparing runs stay simple).
    """
    u = torch.rand((n, 8), generator=generator, dtype=torch.float64) * 2 - 1  # uniform in [-1, 1)
    out = torch.empty_like(u)
    out[:, 0] = u[:, 0] * math.radians(spec.rotation)
    out[:, 1] = u[:, 1] * spec.width_shift
    out[:, 2] = u[:, 2] * spec.height_shift
    out[:, 3] = u[:, 3] * math.radians(spec.shear)
    out[:, 4] = 1 + u[:, 4] * spec.zoom
    out[:, 5] = 1 + u[:, 5] * spec.zoom
    out[:, 6] = ((u[:, 6] < 0) & spec.horizontal_flip).double()
    out[:, 7] = ((u[:, 7] < 0) & spec.vertical_flip).double()
    return out


def affine_matrices(params: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Turn parameters into ``affine_grid`` matrices (n, 2, 3) mapping output to input coordinates.

    Built in pixel units about the centre as Keras does (``rotation @ shift @ shear @ zoom``), then
    converted to the normalised coordinates ``affine_grid`` uses, so non-square images rotate
    correctly.
    """
    theta, fx, fy, shear, zx, zy, hflip, vflip = params.unbind(1)
    c, s = torch.cos(theta), torch.sin(theta)
    cs, ss = torch.cos(shear), torch.sin(shear)
    # Keras works in (row, col) coordinates; write the same product in (x=col, y=row) order.
    # rotation R = [[c, s], [-s, c]] in (x, y); shear S = [[cs, 0], [-ss, 1]]; zoom Z = diag(zy, zx).
    a11 = (c * cs - s * ss) * zy
    a12 = s * zx
    a21 = (-s * cs - c * ss) * zy
    a22 = c * zx
    # Shift in pixels: a fraction of the width along x, of the height along y.
    sx = fx * width
    sy = fy * height
    t1 = c * sx + s * sy
    t2 = -s * sx + c * sy
    # Pixel -> normalised: divide x by W/2 and y by H/2 (align_corners=False, centre at 0).
    hw = width / 2.0
    hh = height / 2.0
    m = torch.stack(
        [
            torch.stack([a11, a12 * hh / hw, t1 / hw], 1),
            torch.stack([a21 * hw / hh, a22, t2 / hh], 1),
        ],
        1,
    )
    # Flips act on output coordinates: negate the matching column.
    m[:, :, 0] = m[:, :, 0] * (1 - 2 * hflip).unsqueeze(1)
    m[:, :, 1] = m[:, :, 1] * (1 - 2 * vflip).unsqueeze(1)
    return m


def augment_batch(x: torch.Tensor, spec: AugmentSpec, matrices: torch.Tensor) -> torch.Tensor:
    """Apply one affine transform per image to a float batch (N, C, H, W) on its device.

    Args:
        x: The batch.
        spec: Augmentation settings (``enabled`` and ``fill`` are read here).
        matrices: (N, 2, 3) matrices from :func:`affine_matrices`, ideally already on ``x``'s device.
    """
    if not spec.enabled or x.shape[0] == 0:
        return x
    n, _, h, w = x.shape
    mats = matrices.to(device=x.device, dtype=torch.float32)
    grid = F.affine_grid(mats, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(
        x, grid.to(x.dtype), mode="bilinear", padding_mode=_PADDING[spec.fill], align_corners=False
    )
