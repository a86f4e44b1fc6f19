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

from imgclf.config import SPLITS
from imgclf.data.synthetic_cells import render_cell
from imgclf.errors import UsageError

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
    tally = _Tally(progress)
    for split_id, split in enumerate(SPLITS):
        written[split] = {}
        for cls, n in plan.get(split, {}).items():
            _write_class(root / split / cls, cls, n, (seed, split_id, KINDS.index(cls)), look, tally)
            written[split][cls] = n
    tally.flush()
    return written


def _write_class(
    folder: Path,
    cls: str,
    n: int,
    key: tuple[int, int, int],
    look: tuple[float, float, float],
    tally: _Tally,
) -> None:
    """Write the ``n`` images of class ``cls`` into ``folder``; ``key`` is ``(seed, split id, class id)``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # One generator per file: any file can be regenerated alone, independent of the scale.
        rng = np.random.default_rng(np.random.SeedSequence([*key, i]))
        rgb, alpha = render_cell(rng, cls, look)
        kind = _SCHEDULE.get(i % 20, "RGB")
        suffix = ".jpg" if kind == "jpeg" else ".png"
        _encode(rgb, alpha, kind, rng, folder / f"{cls[0]}{i + 1:04d}{suffix}")
        tally.add()


class _Tally:
    """Reports images written to ``progress`` in groups of ``_PROGRESS_EVERY`` (the rest on ``flush``)."""

    def __init__(self, progress: Callable[[int], None] | None) -> None:
        self.progress = progress
        self.pending = 0

    def add(self) -> None:
        self.pending += 1
        if self.progress is not None and self.pending >= _PROGRESS_EVERY:
            self.progress(self.pending)
            self.pending = 0

    def flush(self) -> None:
        if self.progress is not None and self.pending:
            self.progress(self.pending)
        self.pending = 0


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
