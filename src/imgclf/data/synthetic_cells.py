"""Drawing one synthetic "malaria cell": the pictures behind :mod:`imgclf.data.synthetic`'s demo dataset.

A pinkish cell with an irregular outline and blotchy shading; ``Parasitized`` cells carry 1-3 purple
ring or dot stains (``Ring`` and ``Dot`` cells only that kind), ``Uninfected`` cells are clean or hold
faint pale debris. Every random draw comes from the generator passed in, in a fixed order, so the same
generator state always draws the same cell (the demo files are byte-identical across runs).

Usage::

    rng = np.random.default_rng(np.random.SeedSequence([42, 0, 0, 0]))
    rgb, alpha = render_cell(rng, "Parasitized", (3.0, 1.0, 1.0))   # float (3, H, W), (H, W)
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def _smooth(t: np.ndarray) -> np.ndarray:
    """Smoothstep of ``t`` clipped to [0, 1]: soft, anti-aliased edges without supersampling."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def render_cell(
    rng: np.random.Generator, kind: str, look: tuple[float, float, float] = (3.0, 1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one cell of class ``kind``; returns ``(rgb, alpha)``: float (3, H, W) colour of the cell alone
    and its coverage. ``look`` is ``(noise, stain size factor, stain opacity factor)``.

    Channels come first because broadcasting over a trailing axis of 3 is several times slower in numpy.
    """
    w, h = (int(v) for v in rng.integers(90, 161, size=2))
    yy = np.arange(h, dtype=np.float32)[:, None] + 0.5  # open grids broadcast to (h, w) when combined
    xx = np.arange(w, dtype=np.float32)[None, :] + 0.5
    side = min(w, h)

    r = side * rng.uniform(0.31, 0.40)
    a, b = r * rng.uniform(0.9, 1.1), r * rng.uniform(0.82, 1.0)
    # Leave room for the wobble (up to ~10%) so the cell is never clipped by the image border.
    mx, my = max(0.0, w / 2 - 1.12 * max(a, b)), max(0.0, h / 2 - 1.12 * max(a, b))
    cx, cy = w / 2 + rng.uniform(-mx, mx), h / 2 + rng.uniform(-my, my)
    theta = rng.uniform(0, math.pi)
    dx, dy = xx - cx, yy - cy
    u = (dx * math.cos(theta) + dy * math.sin(theta)) / a
    v = (-dx * math.sin(theta) + dy * math.cos(theta)) / b
    phi = np.arctan2(v, u)
    wobble = np.ones_like(phi)
    for k in range(2, 5):  # low angular harmonics make the outline irregular but still cell-like
        wobble += np.float32(rng.uniform(0.0, 0.03)) * np.cos(
            k * phi + np.float32(rng.uniform(0, 2 * math.pi))
        )
    d = np.sqrt(u * u + v * v) / wobble
    alpha = _smooth((1.0 - d) / rng.uniform(0.04, 0.10))

    base = np.empty((3, 1, 1), dtype=np.float32)
    base[0] = rng.uniform(200, 242)
    base[1] = base[0] - rng.uniform(60, 95)
    base[2] = base[1] + rng.uniform(-25, 25)  # B below G reads salmon, above G reads pink
    # Real red cells are paler in the middle (biconcave) and blotchy; coarse noise upsampled by Pillow
    # gives smooth blotches cheaply.
    coarse = Image.fromarray(rng.normal(0.0, 1.0, size=(6, 6)).astype(np.float32))
    blotch = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    shade = 0.98 - 0.12 * np.clip(d, 0, 1) + 0.035 * blotch
    noise, stain_size, stain_strength = look  # a class from KINDS; look: noise, stain size and opacity
    rgb = base * shade + noise * rng.standard_normal(size=(3, h, w), dtype=np.float32)

    _add_marks(
        rng, rgb, alpha, base, kind, (xx, yy), (cx, cy, a, b, theta), (2.0 * r, stain_size, stain_strength)
    )
    return rgb, alpha


def _add_marks(
    rng: np.random.Generator,
    rgb: np.ndarray,
    alpha: np.ndarray,
    base: np.ndarray,
    kind: str,
    grid: tuple[np.ndarray, np.ndarray],
    ellipse: tuple[float, float, float, float, float],
    stains: tuple[float, float, float],
) -> None:
    """Paint stains (parasitized) or, sometimes, pale debris specks into ``rgb`` in place.

    ``ellipse`` is the cell's ``(cx, cy, a, b, theta)``; the random draws happen in the order the demo
    data has always used, so the files stay byte-identical. ``stains`` is ``(cell diameter, stain size
    factor, stain opacity factor)``; ``Ring`` and ``Dot`` cells draw only that kind of stain.
    """
    diameter, stain_size, stain_strength = stains
    xx, yy = grid
    cx, cy, a, b, theta = ellipse
    if kind != "Uninfected":
        # Stains span 22-32 % of the cell: the recipe (SGD lr 0.1, 11 steps per epoch) swings hard in its
        # first epochs, and with smaller stains some seeds / float orders never recovered in 25 epochs.
        marks = [("ring" if rng.random() < 0.55 else "dot") for _ in range(int(rng.integers(1, 4)))]
        if kind in ("Ring", "Dot"):
            marks = [kind.lower()] * len(marks)
        size_range, colour_of = (0.11 * stain_size, 0.16 * stain_size), _stain_colour
    elif rng.random() < 0.3:
        marks = ["speck"] * int(rng.integers(1, 4))
        size_range, colour_of = (0.015, 0.03), lambda g: _debris_colour(g, base)
    else:
        marks = []
    for kind in marks:
        # Uniform position in the inner 65% of the ellipse, in the cell's own rotated frame.
        t, psi = 0.65 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        pu, pv = a * t * math.cos(psi), b * t * math.sin(psi)
        sx = cx + pu * math.cos(theta) - pv * math.sin(theta)
        sy = cy + pu * math.sin(theta) + pv * math.cos(theta)
        rs = diameter * rng.uniform(*size_range)
        dist = np.sqrt((xx - sx) ** 2 + (yy - sy) ** 2)
        if kind == "ring":
            half = rs * rng.uniform(0.22, 0.32)  # thick enough to survive a 2x bilinear downscale
            cover = _smooth((half - np.abs(dist - (rs - half))) / 1.2 + 0.5)
        else:
            cover = _smooth((rs - dist) / 1.2 + 0.5)
        cover *= np.float32(rng.uniform(0.85, 1.0) * stain_strength) * alpha
        rgb += cover * (colour_of(rng) - rgb)


def _stain_colour(rng: np.random.Generator) -> np.ndarray:
    """A clearly purple/violet Giemsa-like stain: red and blue well above green."""
    g = rng.uniform(20, 50)
    return np.array([rng.uniform(95, 150), g, rng.uniform(135, 195)], dtype=np.float32).reshape(3, 1, 1)


def _debris_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """Pale, low-contrast debris: the cell colour darkened a little, never strongly purple."""
    tint = np.array([[[0.0]], [[4.0]], [[8.0]]], dtype=np.float32)
    return base * np.float32(rng.uniform(0.88, 0.95)) + tint
