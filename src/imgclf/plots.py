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
from imgclf.fileio.writing import atomic_write_bytes
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
    """True if matplotlib (a dependency, imported for plots only) is installed; imports nothing."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a None entry in sys.modules
        return False


def require_matplotlib(what: str, fix: str) -> None:
    """Fail before any work when a plot was asked for and matplotlib is missing.

    Raises:
        UsageError: ``{what} needs matplotlib``.
    """
    if not have_matplotlib():
        raise UsageError(
            f"{what} needs matplotlib",
            received="matplotlib is not installed",
            expected="matplotlib (a dependency of imgclf, missing from this environment)",
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
    saved_epoch: int | None = None,
) -> None:
    """Write the recipe's plot: train/val loss and train/val accuracy per epoch, one figure.

    Args:
        history: Per-epoch records (``epoch``, ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``).
        path: The PNG to write (atomically).
        title: The chart's title.
        saved_epoch: The epoch whose weights went into the model file, marked on the chart.
    """
    import matplotlib.pyplot as plt

    fig = history_figure(history, title, saved_epoch)
    _save_figure(fig, path)
    plt.close(fig)


def history_figure(history: Sequence[dict[str, float]], title: str, saved_epoch: int | None = None) -> Any:
    """The figure :func:`plot_history` writes: 900x600 px, legend outside the axes (never over a curve),
    integer epoch ticks, a dashed line at the saved epoch; curves with nothing to draw get no entry.

    Every point of every curve stays visible: each epoch is a marker, and a value above the chart (a
    validation-loss spike, an infinite loss) or not a number is drawn on the chart's top edge as a triangle
    (``^``) or a cross (``x``), its curve running up to it, and is named in a note on the chart.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [int(r["epoch"]) for r in history]
    top, _ = loss_ceiling(history)
    notes: list[str] = []
    with plt.style.context("ggplot"):
        fig, ax = plt.subplots(figsize=(9, 6))
        for key, label in (
            ("loss", "train_loss"),
            ("val_loss", "val_loss"),
            ("accuracy", "train_acc"),
            ("val_accuracy", "val_acc"),
        ):
            values = [None if r.get(key) is None else float(r[key]) for r in history]
            if all(v is None for v in values):  # nothing recorded (no validation split): no curve, no entry
                continue
            shown = [np.nan if v is None else v if v <= top else top for v in values]  # NaN > top: False
            (line,) = ax.plot(epochs, shown, label=label, marker="o", markersize=4)
            for marker, what, off in (
                ("^", "above the chart", [(e, v) for e, v in zip(epochs, values, strict=True)
                                          if v is not None and v > top]),
                ("x", "not a number", [(e, v) for e, v in zip(epochs, values, strict=True)
                                       if v is not None and math.isnan(v)]),
            ):  # fmt: skip
                if not off:
                    continue
                ax.plot(
                    [e for e, _ in off], [top] * len(off), linestyle="none", marker=marker, markersize=9,
                    color=line.get_color(), clip_on=False, label=f"{label} {what}",
                )  # fmt: skip
                at = ", ".join(str(e) for e, _ in off[:8]) + (", ..." if len(off) > 8 else "")
                peak = f" (up to {max(v for _, v in off):.3g})" if marker == "^" else ""
                notes.append(f"{label} {what} at epoch {at}{peak}")
        if saved_epoch is not None:
            saved = f"saved epoch {saved_epoch}"
            ax.axvline(saved_epoch, color="0.3", linestyle="--", linewidth=1, label=saved)
        ax.set_ylim(-0.05, top)
        if notes:
            box = {"facecolor": "white", "alpha": 0.8, "edgecolor": "none"}
            text = "\n".join(notes)
            ax.text(0.99, 0.96, text, transform=ax.transAxes, ha="right", va="top", fontsize=9, bbox=box)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("Epoch #")
        ax.set_ylabel("Loss/Accuracy")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        fig.tight_layout()
    return fig


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


def plot_confusion(
    confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> None:
    """Write a confusion-matrix heat map with counts in each cell (and ``title``, e.g. model, split and
    accuracy)."""
    import matplotlib.pyplot as plt

    fig = confusion_figure(confusion, class_names, title)
    _save_figure(fig, path)
    plt.close(fig)


def _labels_fit(fig: Any, texts: Sequence[Any], gap: float = 4.0) -> bool:
    """True when horizontal tick labels neither overlap each other nor leave the figure."""
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    width = fig.get_window_extent(renderer).width
    inside = all(b.x0 >= 0 and b.x1 <= width for b in boxes)
    return inside and all(a.x1 + gap <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False))


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str | None = None) -> Any:
    """The figure :func:`plot_confusion` writes; column labels are rotated only when they do not fit."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n = len(class_names)
    # class names are folder names, not markup: no control characters, and a "$" must not start mathtext
    labels = [
        "".join(ch if ch.isprintable() else "?" for ch in name).replace("$", r"\$") for name in class_names
    ]
    width = max(4, n * 0.8 + 2)
    fig, ax = plt.subplots(figsize=(width, max(3.5, n * 0.8 + 1.5)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), labels=labels)
    if not _labels_fit(fig, ax.get_xticklabels()):
        ax.set_xticks(range(n), labels=labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=labels)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.grid(False)
    if title:
        import textwrap

        shown = "".join(ch if ch.isprintable() else "?" for ch in title).replace("$", r"\$")
        ax.set_title(textwrap.fill(shown, width=int(width * 10)), fontsize=10)  # ~10 characters per inch
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
    return fig


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


WRONG = (230, 30, 30)  # the border and "true: X" of a wrong prediction
BORDER = 4


def _label(
    draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, color: tuple[int, int, int], font: Any
) -> None:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)[:24]
    box = draw.textbbox(xy, text, font=font)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text(xy, text, fill=color, font=font)


def montage_tile(
    source: ImageSource,
    label: str,
    color: tuple[int, int, int],
    size: int = TILE,
    true_if_wrong: str | None = None,
) -> Image.Image:
    """The original image resized to ``size`` × ``size`` with its label drawn in ``color``.

    ``true_if_wrong``, the true class of a wrong prediction (known when the image sits in a dataset's
    class folder), marks the tile: a red border and ``true: X`` at the bottom.
    """
    rgb = decode(source, draft=size)
    tile = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(tile)
    font = _font(max(10, size // 9))
    if true_if_wrong is not None:
        draw.rectangle((0, 0, size - 1, size - 1), outline=WRONG, width=BORDER)
    _label(draw, (BORDER + 2, BORDER + 2), label, color, font)
    if true_if_wrong is not None:
        bottom = size - BORDER - 4 - max(10, size // 9)
        _label(draw, (BORDER + 2, bottom), f"true: {true_if_wrong}", WRONG, font)
    return tile


def build_montage(tiles: Sequence[Image.Image], columns: int = COLUMNS, size: int = TILE) -> Image.Image:
    """Arrange tiles in rows of ``columns`` (4 × 4 for the recipe's 16 images); empty cells stay black."""
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * size, rows * size))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * size, (i // columns) * size))
    return sheet
