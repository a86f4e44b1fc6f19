"""Tests of imgclf.plots: montage geometry and labels, colours, plots; no plotting on the predict path."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.errors import StorageError
from imgclf.images.preprocess import decode
from imgclf.plots import TILE, build_montage, class_colors, montage_tile, plot_confusion, plot_history


def _solid(color: tuple[int, int, int], size: int = TILE) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def _distinct_colors(n: int) -> list[tuple[int, int, int]]:
    return [(10 + 15 * i, 250 - 13 * i, (37 * i) % 256) for i in range(n)]


def test_montage_of_16_tiles_is_a_512_square_with_tiles_in_reading_order():
    colors = _distinct_colors(16)
    sheet = build_montage([_solid(c) for c in colors])
    assert sheet.size == (512, 512) and sheet.mode == "RGB"
    a = np.asarray(sheet)
    for i, color in enumerate(colors):
        row, col = divmod(i, 4)
        cell = a[row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE]
        assert (cell == color).all(), f"cell {i} (row {row}, column {col})"


def test_montage_with_fewer_tiles_leaves_the_rest_black():
    colors = _distinct_colors(5)
    sheet = build_montage([_solid(c) for c in colors])
    assert sheet.size == (4 * TILE, 2 * TILE)
    a = np.asarray(sheet)
    assert (a[TILE:, 0:TILE] == colors[4]).all()
    assert (a[TILE:, TILE:] == 0).all()
    assert build_montage([]).size == (4 * TILE, TILE)
    assert build_montage([_solid(c, 32) for c in colors], columns=2, size=32).size == (64, 96)


@pytest.fixture
def gray_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(rng.normal(128, 3, (100, 120, 3)), 0, 255).astype(np.uint8)


def test_montage_tile_draws_the_label_in_the_class_colour(gray_image):
    color = class_colors(2)[1]
    tile = montage_tile(gray_image, "square 97%", color)
    assert tile.size == (TILE, TILE) and tile.mode == "RGB"
    plain = np.asarray(Image.fromarray(decode(gray_image)).resize((TILE, TILE), Image.Resampling.BILINEAR))
    a = np.asarray(tile)
    top_left = a[:32, :100]
    assert not np.array_equal(top_left, plain[:32, :100])
    assert (top_left == color).all(axis=-1).sum() >= 10  # the text itself, in the class colour
    assert (top_left == 0).all(axis=-1).sum() >= 50  # on a black box, readable on any image
    np.testing.assert_array_equal(a[40:], plain[40:])  # the rest is the resized image, untouched


def test_montage_tile_accepts_a_path_and_escapes_control_characters(gray_image, tmp_path):
    path = tmp_path / "cell.png"
    Image.fromarray(gray_image).save(path)
    from_path = montage_tile(str(path), "ring", (230, 25, 75))
    assert np.array_equal(np.asarray(from_path), np.asarray(montage_tile(gray_image, "ring", (230, 25, 75))))
    weird = montage_tile(gray_image, "bad\x1b[31mname\n", (230, 25, 75))
    shown = montage_tile(gray_image, "bad?[31mname?", (230, 25, 75))
    assert np.array_equal(np.asarray(weird), np.asarray(shown))


@pytest.mark.parametrize("n", [2, 3, 10, 11, 50])
def test_class_colors_are_distinct_valid_rgb(n):
    colors = class_colors(n)
    assert len(colors) == n and len(set(colors)) == n
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colors)
    assert colors == class_colors(n)  # stable across calls
    assert class_colors(2) == [(230, 25, 75), (60, 180, 75)]  # red / green as in the recipe
    assert all(max(c) >= 60 for c in colors)  # visible on the black label box


HISTORY = [
    {
        "epoch": e,
        "loss": 1 / e,
        "accuracy": 0.5 + e / 20,
        "val_loss": 1.2 / e,
        "val_accuracy": 0.4 + e / 20,
        "lr": 0.1,
        "seconds": 1.0,
    }
    for e in range(1, 6)
]


def _png(path) -> Image.Image:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_plot_history_writes_a_png(tmp_path):
    path = tmp_path / "plot.png"
    plot_history(HISTORY, path)
    img = _png(path)
    assert img.size == (900, 600)
    assert path.stat().st_size > 10_000
    colours = np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)
    assert len(colours) > 20  # curves, text and the ggplot background, not a blank canvas
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temporary file left behind


def test_plot_history_without_validation_curves_and_with_a_single_epoch(tmp_path):
    path = tmp_path / "plot.png"
    plot_history([{"epoch": 1, "loss": 0.7, "accuracy": 0.5, "lr": 0.1}], path)
    assert _png(path).size == (900, 600)


def test_plot_history_into_a_missing_folder_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError):
        plot_history(HISTORY, tmp_path / "missing" / "plot.png")


def test_plot_confusion_writes_a_png(tmp_path):
    path = tmp_path / "cm.png"
    plot_confusion(np.array([[5, 1, 0], [2, 3, 1], [0, 0, 6]]), ["a", "b", "c"], path)
    img = _png(path)
    assert img.size[0] >= 400 and img.size[1] >= 350


def test_plot_confusion_takes_class_names_literally(tmp_path):
    # folder names that look like matplotlib mathtext used to crash the plot (an internal error in the CLI)
    path = tmp_path / "cm.png"
    names = ["$x^$", "$\\undefinedmacro$", "price $5", "bad\x1b[31mname"]
    plot_confusion(np.eye(4, dtype=np.int64), names, path)
    assert _png(path).size[0] >= 400


CHILD = """
import contextlib, io, json, sys
# Prefixes, not module lists: any module under imgclf.training (present or future) counts.
watched = ("matplotlib", "fastapi", "uvicorn", "imgclf.training", "imgclf.serving", "imgclf.interop")
# imgclf.load's dispatcher reads a file's first bytes and imports no ONNX or Keras code: allowed; so is
# the serve command's settings dataclass (stdlib only), which its parser reads for the "(default X)".
allowed = ("imgclf.serving", "imgclf.serving.settings")
seen = {}
def note(stage):
    seen[stage] = sorted(
        w for w in watched if any((m == w or m.startswith(w + ".")) and m not in allowed for m in sys.modules)
    )
model, images, montage, dataset = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
import imgclf
note("import imgclf")
clf = imgclf.load(model)
note("imgclf.load")
clf.predict(images, top_k=2)
clf.predict_proba(images)
note("predict")
from imgclf.cli.main import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(["predict", "--model", model, "--images", *images, "--montage", montage])
note("imgclf predict --montage (CLI)")
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["evaluate", "--model", model, "--dataset", dataset, "--no-cache"]) == 0
note("imgclf evaluate (CLI)")
print(json.dumps({"seen": seen, "code": code, "lines": len(out.getvalue().splitlines())}))
"""


def test_predict_and_evaluate_paths_import_no_plotting_or_training_code(tiny_model, tmp_path):
    images = sorted(str(p) for p in (tiny_model.dataset / "testing").rglob("*.png"))[:4]
    montage = tmp_path / "montage.png"
    argv = [
        sys.executable,
        "-c",
        CHILD,
        str(tiny_model.model_path),
        json.dumps(images),
        str(montage),
        str(tiny_model.dataset),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout)
    assert child["code"] == 0 and child["lines"] == len(images)
    assert child["seen"] == {
        "import imgclf": [],
        "imgclf.load": [],
        "predict": [],
        "imgclf predict --montage (CLI)": [],
        "imgclf evaluate (CLI)": [],
    }
    assert Image.open(montage).size == (512, 128)


def test_huge_early_validation_losses_are_named_instead_of_flattening_the_other_curves(tmp_path):
    from imgclf.plots import loss_ceiling

    history = [
        {"epoch": 1, "loss": 2.4, "accuracy": 0.5, "val_loss": 605.0, "val_accuracy": 0.45},
        {"epoch": 2, "loss": 0.4, "accuracy": 0.8, "val_loss": float("nan"), "val_accuracy": 0.45},
        {"epoch": 3, "loss": 0.2, "accuracy": 0.9, "val_loss": 2.0, "val_accuracy": 0.9},
        {"epoch": 4, "loss": float("inf"), "accuracy": 0.9, "val_loss": 0.1, "val_accuracy": 0.95},
    ]
    top, clipped = loss_ceiling(history)
    assert top == pytest.approx(2.64)  # 1.1 x the largest finite training loss
    assert [e for e, _ in clipped] == [1, 2]  # 605 and NaN are off the chart; 2.0 and 0.1 are on it
    assert loss_ceiling([{"epoch": 1, "loss": 0.1, "val_loss": 0.3}]) == (1.05, [])  # accuracies fit whole
    plot_history(history, tmp_path / "plot.png")
    assert _png(tmp_path / "plot.png").size == (900, 600)


def test_matplotlib_is_a_normal_dependency_so_plain_pip_install_can_plot():
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert any(d.split(">")[0].split("=")[0].strip() == "matplotlib" for d in project["dependencies"])
    assert "plots" not in project["optional-dependencies"]  # the empty extra is gone (issue 23)


def _legend_and_curves(fig):
    """(legend box, curve points' box) in display pixels, after drawing."""
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    points = np.concatenate(
        [ax.transData.transform(line.get_xydata()) for line in ax.get_lines() if line.get_label()[0] != "_"]
    )
    points = points[np.isfinite(points).all(axis=1)]
    return legend, points, ax


def test_plot_history_legend_sits_where_no_curve_is_and_the_saved_epoch_is_marked(tmp_path):
    from imgclf.plots import history_figure

    history = [
        {
            "epoch": e,
            "loss": 0.7 - 0.05 * e,
            "accuracy": 0.5 + 0.04 * e,
            "val_loss": 0.69 - 0.04 * e,
            "val_accuracy": 0.55 + 0.04 * e,
            "lr": 0.1,
        }
        for e in range(1, 8)
    ]
    fig = history_figure(history, "t", saved_epoch=5)
    legend, points, ax = _legend_and_curves(fig)
    inside = (
        (points[:, 0] >= legend.x0)
        & (points[:, 0] <= legend.x1)
        & (points[:, 1] >= legend.y0)
        & (points[:, 1] <= legend.y1)
    )
    assert not inside.any()  # no curve point under the legend
    assert legend.x0 >= ax.get_window_extent().x1  # outside the axes, so also clear of val_acc's first epochs
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["train_loss", "val_loss", "train_acc", "val_acc", "saved epoch 5"]
    marker = [line for line in ax.get_lines() if line.get_label() == "saved epoch 5"]
    assert len(marker) == 1 and list(marker[0].get_xdata()) == [5, 5]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plot_history_has_no_legend_entry_for_a_curve_not_drawn():
    import matplotlib.pyplot as plt

    from imgclf.plots import history_figure

    no_val = [{"epoch": e, "loss": 0.5, "accuracy": 0.7, "lr": 0.1} for e in (1, 2, 3)]
    fig = history_figure(no_val, "t")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train_loss", "train_acc"]
    plt.close(fig)
    clipped = [{**r, "val_loss": 500.0, "val_accuracy": 0.5} for r in no_val]  # all above the chart
    fig = history_figure(clipped, "t")
    shown = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert shown == ["train_loss", "val_loss", "val_loss above the chart", "train_acc", "val_acc"]
    plt.close(fig)


def _curves(ax):
    """{label: Line2D} of the axes' lines."""
    return {line.get_label(): line for line in ax.get_lines()}


def test_a_validation_loss_spike_keeps_every_point_of_the_curve_visible():
    import matplotlib.pyplot as plt

    from imgclf.plots import history_figure

    history = [
        {"epoch": e, "loss": 0.6 - 0.05 * e, "accuracy": 0.6 + 0.03 * e, "val_loss": v, "val_accuracy": 0.7}
        for e, v in zip(range(1, 8), [0.7, 0.6, 40.0, 0.5, float("nan"), float("inf"), 0.4], strict=True)
    ]
    fig = history_figure(history, "t")
    ax = fig.axes[0]
    fig.canvas.draw()
    low, high = ax.get_ylim()
    curves = _curves(ax)
    val = curves["val_loss"]
    assert list(val.get_xdata()) == [1, 2, 3, 4, 5, 6, 7]  # a point at every epoch: no gap in the line
    y = np.asarray(val.get_ydata(), dtype=float)
    assert np.isfinite(y).all() and (y >= low).all() and (y <= high).all()
    assert y[[0, 1, 3, 6]] == pytest.approx([0.7, 0.6, 0.5, 0.4])  # points on the chart keep their values
    assert val.get_marker() == "o"  # every epoch is a marker, not just a line corner
    above, nan = curves["val_loss above the chart"], curves["val_loss not a number"]
    assert list(above.get_xdata()) == [3, 6] and list(above.get_ydata()) == [high, high]
    assert above.get_marker() == "^" and not above.get_clip_on()  # drawn on the top edge, not cut away
    assert list(nan.get_xdata()) == [5] and nan.get_marker() == "x"
    notes = " ".join(t.get_text() for t in ax.texts)
    assert "val_loss above the chart at epoch 3, 6 (up to inf)" in notes
    assert "val_loss not a number at epoch 5" in notes
    for name in ("train_loss", "train_acc", "val_acc"):
        assert curves[name].get_marker() == "o" and len(curves[name].get_xdata()) == 7
    plt.close(fig)


def test_confusion_plot_has_a_title_and_unrotated_labels_when_they_fit():
    import matplotlib.pyplot as plt

    from imgclf.plots import confusion_figure

    names = ["Parasitized", "Uninfected"]
    title = "malaria.imgclf on testing: accuracy 0.9200 (100 images)"
    fig = confusion_figure(np.eye(2, dtype=np.int64) * 5, names, title)
    ax = fig.axes[0]
    assert " ".join(ax.get_title().split()) == title
    fig.canvas.draw()
    box, page = ax.title.get_window_extent(), fig.get_window_extent()
    assert page.x0 <= box.x0 and box.x1 <= page.x1  # the title is not cut off
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {0.0}
    plt.close(fig)
    long = [f"a rather long class name {i}" for i in range(6)]
    fig = confusion_figure(np.eye(6, dtype=np.int64), long)
    assert {t.get_rotation() for t in fig.axes[0].get_xticklabels()} == {45.0}
    plt.close(fig)


def test_montage_tile_of_a_wrong_prediction_has_a_red_border_and_the_true_class(gray_image):
    from imgclf.plots import WRONG, montage_tile

    right = np.asarray(montage_tile(gray_image, "ring 90%", (0, 255, 0)))
    wrong = np.asarray(montage_tile(gray_image, "ring 90%", (0, 255, 0), true_if_wrong="square"))
    assert right.shape == wrong.shape == (128, 128, 3)
    edge = np.concatenate([wrong[:, 0], wrong[:, -1], wrong[0], wrong[-1]])
    assert (edge == WRONG).all()
    assert not (np.concatenate([right[:, -1], right[-1]]) == WRONG).all(axis=1).any()
    bottom = wrong[100:124, 8:60]
    assert (bottom == WRONG).all(axis=2).sum() > 20  # "true: square" drawn in red near the bottom


def test_predict_montage_marks_a_wrong_prediction_of_an_image_in_a_class_folder(gray_image, tmp_path):
    from types import SimpleNamespace

    from imgclf.cli.predict import _tile
    from imgclf.plots import WRONG

    path = tmp_path / "ring" / "a.png"
    path.parent.mkdir()
    Image.fromarray(gray_image).save(path)
    names = ["ring", "square"]

    def tile(label: str, index: int) -> np.ndarray:
        prediction = SimpleNamespace(source=str(path), label=label, confidence=0.9, index=index, labels=None)
        return np.asarray(_tile(prediction, names))

    assert (tile("square", 1)[:, 0] == WRONG).all()  # true class ring (its folder), predicted square
    assert not (tile("ring", 0)[:, 0] == WRONG).all(axis=1).any()  # right: no border
