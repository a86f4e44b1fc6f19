"""Write a small synthetic "malaria cell" dataset for demos, tutorials and end-to-end tests.

Each image is one pinkish cell on black; ``Parasitized`` cells carry 1-3 purple ring or dot stains,
``Uninfected`` cells are clean or hold faint pale debris. Harder variants (for benchmarks) come from the
keyword arguments: more pixel noise, smaller or fainter stains, other counts (fewer images, class
imbalance) and two more classes, ``Ring`` and ``Dot`` (1-3 stains, all of that kind); the defaults write
the original dataset byte for byte. A share of the files are JPEG, grayscale,
RGBA and palette PNGs so the demo also exercises every decoding path of :mod:`imgclf.images.preprocess`.

Usage::

    from imgclf.data.synthetic import write_demo_dataset
    counts = write_demo_dataset("demo", scale=1.0, seed=42)   # demo/{training,validation,testing}/...
    hard = {s: {"Uninfected": 60, "Ring": 30, "Dot": 20} for s in SPLITS}
    write_demo_dataset("hard", counts=hard, noise=12.0, stain_size=0.6, stain_strength=0.7)
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.errors import UsageError

SPLITS: tuple[str, ...] = ("training", "validation", "testing")
CLASSES: tuple[str, ...] = ("Parasitized", "Uninfected")
KINDS: tuple[str, ...] = (*CLASSES, "Ring", "Dot")  # class names the generator can draw
BASE_COUNTS: dict[str, dict[str, int]] = {
    "training": {"Parasitized": 175, "Uninfected": 185},
    "validation": {"Parasitized": 18, "Uninfected": 22},
    "testing": {"Parasitized": 50, "Uninfected": 50},
}

# File kind by position in a folder (index modulo 20): a fixed schedule rather than chance, so even the
# smallest folder at scale 1 (18 images) holds every kind: 10% JPEG, 5% each of L, RGBA and P.
_SCHEDULE = {0: "jpeg", 10: "jpeg", 2: "L", 5: "RGBA", 7: "P"}
_PROGRESS_EVERY = 25


def _scaled(count: int, scale: float) -> int:
    # Round half up (not Python's banker's rounding) so counts are easy to predict by hand.
    return max(1, int(math.floor(count * scale + 0.5)))


def _smooth(t: np.ndarray) -> np.ndarray:
    """Smoothstep of ``t`` clipped to [0, 1]: soft, anti-aliased edges without supersampling."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _render(
    rng: np.random.Generator, kind: str, look: tuple[float, float, float] = (3.0, 1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one cell; returns ``(rgb, alpha)``: float (3, H, W) colour of the cell alone and its coverage.

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


def _encode(rgb: np.ndarray, alpha: np.ndarray, kind: str, rng: np.random.Generator, path: Path) -> None:
    """Composite on black and save ``path`` in the given file kind."""
    on_black = np.ascontiguousarray(np.clip(rgb * alpha + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0))
    img = Image.fromarray(on_black)
    if kind == "jpeg":
        img.save(path, format="JPEG", quality=90)
        return
    if kind == "L":
        img = img.convert("L")
    elif kind == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    elif kind == "RGBA":
        a = np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            # Transparent background: straight (unpremultiplied) colour, which imgclf composites on black.
            colour = np.clip(rgb + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0) * (a > 0)[..., None]
            img = Image.fromarray(np.dstack([colour, a]))
        else:
            img = Image.fromarray(np.dstack([on_black, np.full_like(a, 255)]))
    img.save(path, format="PNG")


def _prepare_output(root: Path, *, scale: float, seed: int, overwrite: bool) -> Path:
    """Check the arguments and the output folder; with ``overwrite``, delete its split folders."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise UsageError(
            "demo-data scale must be a positive number",
            received=scale,
            expected="a number > 0, e.g. 1.0",
            fix="pass --scale 1",
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(
            "demo-data seed must be a non-negative integer",
            received=seed,
            expected="an integer >= 0",
            fix="pass --seed 42",
        )
    if root.exists() and not root.is_dir():
        raise UsageError(
            "demo-data output is not a folder",
            received=str(root),
            expected="a new or empty folder",
            fix="choose another path",
        )
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise UsageError(
                "demo-data output folder is not empty",
                received=str(root),
                expected="a new or empty folder",
                fix="choose another folder or delete it",
            )
        for split in SPLITS:
            if (root / split).is_dir():
                shutil.rmtree(root / split)
    return root


def write_demo_dataset(
    out: str | os.PathLike,
    *,
    scale: float = 1.0,
    seed: int = 42,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
    counts: dict[str, dict[str, int]] | None = None,
    noise: float = 3.0,
    stain_size: float = 1.0,
    stain_strength: float = 1.0,
) -> dict[str, dict[str, int]]:
    """Write the synthetic cell dataset to ``out/{training,validation,testing}/{Parasitized,Uninfected}``.

    Args:
        out: Output folder; created if missing. It must be new or empty unless ``overwrite`` is set.
        scale: Multiplies every per-folder count of :data:`BASE_COUNTS` (rounded, at least 1 each).
        seed: Non-negative integer; the same seed writes byte-identical files.
        progress: Called with the number of images written since its previous call (for a progress bar).
        overwrite: Allow a non-empty ``out``; only its three split folders are deleted first.
        counts: ``{split: {class: count}}`` written instead of :data:`BASE_COUNTS` times ``scale``;
            classes from :data:`KINDS`, splits from :data:`SPLITS` (each file still depends only on
            seed, split, class and index).
        noise: Standard deviation of the per-pixel noise (0-255 scale).
        stain_size: Multiplies the stains' size (0.5: half as large).
        stain_strength: Multiplies the stains' opacity (below 1: fainter).

    Returns:
        The number of images written, ``{split: {class: count}}``.

    Raises:
        UsageError: ``out`` is not empty (without ``overwrite``) or not a folder, or ``scale``/``seed``
            are out of range.
    """
    root = _prepare_output(Path(out), scale=scale, seed=seed, overwrite=overwrite)
    _check_look(counts, noise, stain_size, stain_strength)
    plan = counts or {s: {c: _scaled(n, scale) for c, n in BASE_COUNTS[s].items()} for s in SPLITS}
    look = (float(noise), float(stain_size), float(stain_strength))
    written: dict[str, dict[str, int]] = {}
    pending = 0
    for split_id, split in enumerate(SPLITS):
        written[split] = {}
        for cls, n in plan.get(split, {}).items():
            class_id = KINDS.index(cls)
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                # One generator per file: any file can be regenerated alone, independent of the scale.
                rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, class_id, i]))
                rgb, alpha = _render(rng, cls, look)
                kind = _SCHEDULE.get(i % 20, "RGB")
                suffix = ".jpg" if kind == "jpeg" else ".png"
                _encode(rgb, alpha, kind, rng, folder / f"{cls[0]}{i + 1:04d}{suffix}")
                pending += 1
                if progress is not None and pending >= _PROGRESS_EVERY:
                    progress(pending)
                    pending = 0
            written[split][cls] = n
    if progress is not None and pending:
        progress(pending)
    return written


def _check_look(
    counts: dict[str, dict[str, int]] | None, noise: float, stain_size: float, stain_strength: float
) -> None:
    """Raise :class:`UsageError` for unknown splits/classes, bad counts or out-of-range looks."""
    for name, value, lo, hi in (
        ("noise", noise, 0.0, 255.0),
        ("stain_size", stain_size, 0.05, 3.0),
        ("stain_strength", stain_strength, 0.0, 1.0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise UsageError(
                f"demo-data {name} is out of range",
                received=repr(value),
                expected=f"a number in [{lo}, {hi}]",
                fix=f"pass {name} within those bounds",
            )
    for split, per_class in (counts or {}).items():
        bad = [c for c, n in per_class.items() if c not in KINDS or type(n) is not int or n < 0]
        if split not in SPLITS or bad:
            raise UsageError(
                "demo-data counts must map splits to classes to image counts",
                received=f"{split}: {per_class}",
                expected=f"splits from {', '.join(SPLITS)}, classes from {', '.join(KINDS)}, counts >= 0",
                fix="correct the counts",
            )
