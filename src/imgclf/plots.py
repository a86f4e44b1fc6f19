"""Pictures for people: the training-curve plot, the confusion-matrix plot and the labelled montage.

matplotlib is imported only inside the plotting functions; the montage needs Pillow alone, so the
predict path stays light.

Usage::

    plot_history(history, "plot.png")
    colors = class_colors(len(class_names))
    sheet = build_montage([montage_tile(path, label, colors[i]) for path, label, i in results])
    save_png(sheet, "montage.png")                              # 4 tiles of 128 x 128 per row
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imgclf.errors import UsageError
from imgclf.fileio import atomic_write_bytes
from imgclf.images.preprocess import ImageSource, decode

TILE = 128
COLUMNS = 4
_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """One distinct RGB colour per class (red, green, blue, ... as in the recipe's red/green)."""
    out = []
    for i in range(num_classes):
        if i < len(_PALETTE):
            out.append(_PALETTE[i])
        else:
            rng = np.random.default_rng(i)
            out.append(tuple(int(v) for v in rng.integers(60, 256, size=3)))  # type: ignore[arg-type]
    return out


def have_matplotlib() -> bool:
    """True if matplotlib (an optional dependency, needed for plots only) is installed; imports nothing."""
    return importlib.util.find_spec("matplotlib") is not None


def require_matplotlib(what: str, fix: str) -> None:
    """Fail before any work when a plot was asked for and matplotlib is missing.

    Raises:
        UsageError: ``{what} needs matplotlib``.
    """
    if not have_matplotlib():
        raise UsageError(
            f"{what} needs matplotlib",
            received="matplotlib is not installed",
            expected="matplotlib (an optional dependency)",
            fix=fix,
        )


def _save_figure(fig: Any, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Write a PIL image as PNG, atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def plot_history(
    history: Sequence[dict[str, float]],
    path: str | os.PathLike,
    title: str = "Training Loss and Accuracy on Dataset",
) -> None:
    """Write the recipe's plot: train/val loss and train/val accuracy per epoch, one figure."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in history]
    with plt.style.context("ggplot"):
        fig, ax = plt.subplots(figsize=(8, 6))
        for key, label in (
            ("loss", "train_loss"),
            ("val_loss", "val_loss"),
            ("accuracy", "train_acc"),
            ("val_accuracy", "val_acc"),
        ):
            values = [r.get(key) for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], label=label)
        top, clipped = loss_ceiling(history)
        if clipped:
            ax.set_ylim(-0.05, top)
            epochs_text = ", ".join(str(e) for e, _ in clipped[:8]) + (", ..." if len(clipped) > 8 else "")
            highest = max(v for _, v in clipped)
            ax.text(
                0.99,
                0.98,
                f"val_loss above the chart at epoch {epochs_text} (up to {highest:.3g})",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=9,
            )
        ax.set_title(title)
        ax.set_xlabel("Epoch #")
        ax.set_ylabel("Loss/Accuracy")
        ax.legend(loc="lower left")
        fig.tight_layout()
        _save_figure(fig, path)
        plt.close(fig)


def loss_ceiling(history: Sequence[dict[str, float]]) -> tuple[float, list[tuple[int, float]]]:
    """``(top, clipped)``: the plot's upper limit and the ``(epoch, val_loss)`` points above it.

    Early in training a batch-normalised network's validation loss can be hundreds (running statistics
    lag the weights); drawn to scale, that flattens the other three curves into a line at zero. So the
    axis stops just above the largest training loss (at least 1.05, to show accuracies whole) and the
    validation losses beyond it are named on the chart instead.
    """
    train = [float(r["loss"]) for r in history if r.get("loss") is not None and math.isfinite(r["loss"])]
    top = max(1.05, 1.1 * max(train, default=1.0))
    clipped = [
        (int(r["epoch"]), float(r["val_loss"]))
        for r in history
        if r.get("val_loss") is not None and not float(r["val_loss"]) <= top
    ]
    return top, clipped


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """Write a confusion-matrix heat map with counts in each cell."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n = len(class_names)
    # class names are folder names, not markup: no control characters, and a "$" must not start mathtext
    labels = [
        "".join(ch if ch.isprintable() else "?" for ch in name).replace("$", r"\$") for name in class_names
    ]
    fig, ax = plt.subplots(figsize=(max(4, n * 0.8 + 2), max(3.5, n * 0.8 + 1.5)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), labels=labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=labels)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    top = confusion.max() if confusion.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(int(confusion[i, j])),
                ha="center",
                va="center",
                color="white" if confusion[i, j] > top / 2 else "black",
            )
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def montage_tile(
    source: ImageSource, label: str, color: tuple[int, int, int], size: int = TILE
) -> Image.Image:
    """The original image resized to ``size`` × ``size`` with its label drawn in ``color``."""
    rgb = decode(source, draft=size)
    tile = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(tile)
    font = _font(max(10, size // 9))
    text = "".join(ch if ch.isprintable() else "?" for ch in label)[:24]
    box = draw.textbbox((3, 3), text, font=font)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((3, 3), text, fill=color, font=font)
    return tile


def build_montage(tiles: Sequence[Image.Image], columns: int = COLUMNS, size: int = TILE) -> Image.Image:
    """Arrange tiles in rows of ``columns`` (4 × 4 for the recipe's 16 images); empty cells stay black."""
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * size, rows * size))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * size, (i // columns) * size))
    return sheet
