"""Shared fixtures: tiny synthetic datasets written to temporary folders (no downloads, no real data)."""

from __future__ import annotations

import os

# One intra-op thread in the tests and in every subprocess they start: on a 2-core machine shared with
# other work, two OpenMP threads can run a tiny model 100x slower, and the same thread count in parent
# and child keeps float summation order (so bitwise comparisons) identical.
os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


SEED_PARAMS_2 = 291_112  # the recipe's model.summary(): seed_resnet's trainable parameters for 2 classes


def run_cli(*args: object) -> tuple[int, str, str]:
    """Run ``imgclf.cli.main.main`` in-process: ``(exit code, stdout, stderr)``.

    ``main`` returns the exit code; argparse's usage errors leave through ``SystemExit``: both normalised.
    """
    import contextlib
    import io

    from imgclf.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def shape_image(kind: str, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A bright square ('square') or a dark-centred ring ('ring') on black, with jitter and noise."""
    h = w = size + int(rng.integers(-6, 7))
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
    r = size * rng.uniform(0.25, 0.35)
    img = np.zeros((h, w, 3), dtype=np.float64)
    if kind == "square":
        mask = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)
        img[mask] = (220, 120, 60)
    else:
        d = np.hypot(yy - cy, xx - cx)
        mask = (d < r) & (d > r * 0.5)
        img[mask] = (60, 120, 220)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


MODES = ["RGB", "RGB", "L", "RGBA", "P", "JPEG"]


def save_image(arr: np.ndarray, path: Path, mode: str) -> Path:
    """Save ``arr`` in one of the formats/modes the decoder must handle."""
    img = Image.fromarray(arr)
    if mode == "JPEG":
        path = path.with_suffix(".jpg")
        img.save(path, quality=92)
        return path
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    img.save(path)
    return path


def make_dataset(root: Path, counts: dict[str, int], *, seed: int = 0, classes=("ring", "square")) -> Path:
    """Write ``root/<split>/<class>/*.png`` with ``counts[split]`` images per class, mixed modes."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for cls in classes:
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                save_image(shape_image(cls, rng), folder / f"{cls}_{i:03d}.png", MODES[i % len(MODES)])
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Split layout, 2 classes: 12 training, 4 validation, 6 testing images per class."""
    return make_dataset(tmp_path / "data", {"training": 12, "validation": 4, "testing": 6})


@pytest.fixture
def tiny_config():
    """A fast recipe for tests (:func:`tiny_train_config`)."""
    return tiny_train_config()


def tiny_train_config(**changes):
    """A fast recipe for tests: small_cnn at 32x32, 2 epochs, fp32 (also for scoped fixtures)."""
    from imgclf.config import PreprocessSpec, TrainConfig

    cfg = TrainConfig(
        arch="small_cnn",
        arch_args={"widths": [8, 16]},
        epochs=2,
        batch_size=8,
        preprocess=PreprocessSpec(height=32, width=32),
        precision="fp32",
        device="cpu",
        seed=1,
    )
    return cfg.replace(**changes) if changes else cfg


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """One tiny model trained once per session (tiny_dataset layout, tiny_config recipe); read-only.

    Returns a namespace with ``dataset`` (Path), ``model_path`` (Path) and ``result`` (TrainResult).
    Copy the dataset before adding or breaking files in it.
    """
    from types import SimpleNamespace

    from imgclf.training.pipeline import train

    base = tmp_path_factory.mktemp("tiny_model")
    dataset = make_dataset(base / "data", {"training": 12, "validation": 4, "testing": 6})
    model_path = base / "tiny.imgclf"
    result = train(dataset, model_path, tiny_train_config())
    return SimpleNamespace(dataset=dataset, model_path=model_path, result=result)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep the decode-once cache of every test (and its subprocesses) out of the user's home."""
    os.environ["IMGCLF_CACHE_DIR"] = str(tmp_path_factory.mktemp("imgclf-cache"))
