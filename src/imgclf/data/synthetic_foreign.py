"""Images that look nothing like a cell dataset, for measuring the out-of-distribution warning.

Seven families, drawn deterministically from a seed: uniform noise, Gaussian noise, flat colours, colour
gradients, checkerboards, drawn shapes on bright backgrounds, and crops of the two photographs that ship
with scikit-learn (when it is installed; otherwise that family is skipped).

Usage::

    images = foreign_images(70, size=64, seed=0)                  # list of (name, (64, 64, 3) uint8)
    families = {name.split("_")[0] for name, _ in images}
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def _noise(rng: np.random.Generator, s: int) -> np.ndarray:
    return rng.integers(0, 256, (s, s, 3), dtype=np.uint8)


def _gauss(rng: np.random.Generator, s: int) -> np.ndarray:
    return np.clip(rng.normal(rng.uniform(60, 200), rng.uniform(20, 60), (s, s, 3)), 0, 255).astype(np.uint8)


def _flat(rng: np.random.Generator, s: int) -> np.ndarray:
    return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (s, s, 3)).copy()


def _gradient(rng: np.random.Generator, s: int) -> np.ndarray:
    t = np.linspace(0, 1, s)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, s)[:, None, None]
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return np.broadcast_to(a + (b - a) * t, (s, s, 3)).astype(np.uint8)


def _checker(rng: np.random.Generator, s: int) -> np.ndarray:
    k = int(rng.integers(2, 9))
    grid = ((np.arange(s)[:, None] // k + np.arange(s)[None, :] // k) % 2).astype(bool)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return np.where(grid[..., None], a, b).astype(np.uint8)


def _shapes(rng: np.random.Generator, s: int) -> np.ndarray:
    img = Image.new("RGB", (s, s), tuple(int(v) for v in rng.integers(120, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.integers(0, s, 2)
        x1, y1 = x0 + rng.integers(4, s // 2), y0 + rng.integers(4, s // 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
            (int(x0), int(y0), int(x1), int(y1)), fill=fill
        )
    return np.asarray(img)


def _photo_source() -> list[np.ndarray]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return []
    return [np.asarray(i) for i in load_sample_images().images]


def foreign_images(count: int, *, size: int = 64, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``count`` images (``(family_index, array)`` pairs, families taking turns) of ``size`` × ``size``."""
    rng = np.random.default_rng(seed)
    photos = _photo_source()
    makers = [_noise, _gauss, _flat, _gradient, _checker, _shapes]
    names = ["noise", "gauss", "flat", "gradient", "checker", "shapes"]
    if photos:
        names.append("photo")
    out = []
    for i in range(count):
        family = names[i % len(names)]
        if family == "photo":
            photo = photos[int(rng.integers(len(photos)))]
            side = int(rng.integers(48, min(photo.shape[:2])))
            y, x = (int(rng.integers(0, d - side + 1)) for d in photo.shape[:2])
            crop = Image.fromarray(photo[y : y + side, x : x + side]).resize(
                (size, size), Image.Resampling.BILINEAR
            )
            arr = np.asarray(crop)
        else:
            arr = makers[names.index(family)](rng, size)
        out.append((f"{family}_{i:04d}", arr))
    return out
