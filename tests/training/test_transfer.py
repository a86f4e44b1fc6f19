"""Transfer: a model pretrained on one task, fine-tuned with ``--init-from`` on another task with 10 images
per class, beats the same recipe from random weights (asserted on held-out images, over three seeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import run_cli, tiny_train_config
from imgclf.config import RECIPES
from imgclf.training.pipeline import train


def _shape(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A filled shape of a random colour on a random dark background: only the outline tells classes apart."""
    yy, xx = np.mgrid[0:size, 0:size]
    dy, dx = yy - size / 2 - rng.uniform(-4, 4), xx - size / 2 - rng.uniform(-4, 4)
    r = size * rng.uniform(0.2, 0.32)
    masks = {
        "square": (np.abs(dy) < r) & (np.abs(dx) < r),
        "circle": np.hypot(dy, dx) < r,
        "ring": (np.hypot(dy, dx) < r) & (np.hypot(dy, dx) > 0.55 * r),
        "hbar": (np.abs(dy) < r / 3) & (np.abs(dx) < r),
        "vbar": (np.abs(dx) < r / 3) & (np.abs(dy) < r),
        "triangle": (np.abs(dy) < r) & (np.abs(dx) < (dy + r) / 2),
        "cross": ((np.abs(dy) < r / 3) & (np.abs(dx) < r)) | ((np.abs(dx) < r / 3) & (np.abs(dy) < r)),
        "diamond": np.abs(dx) + np.abs(dy) < r,
    }
    img = np.where(masks[kind][..., None], rng.uniform(120, 255, 3), rng.uniform(0, 90, 3))
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def _write(root: Path, classes: list[str], counts: dict[str, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_shape(name, rng)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    base = tmp_path_factory.mktemp("transfer")
    first = _write(base / "first", ["square", "circle", "ring", "hbar"], {"training": 40}, seed=0)
    few = _write(base / "few", ["triangle", "cross", "diamond", "vbar"], {"training": 10, "testing": 25}, 1)
    config = tiny_train_config(
        arch_args={"widths": [8, 16, 32]},
        epochs=20,
        batch_size=16,
        val_split=0.0,
        test_split=0.0,
        schedule="one_cycle",
        keep="last",
    )
    train(first, base / "first.imgclf", config)
    return base, few, config


@pytest.mark.slow
def test_starting_from_a_pretrained_file_beats_starting_from_scratch(tasks):
    base, few, config = tasks
    recipe = config.replace(epochs=8, batch_size=8, recipe="finetune", **RECIPES["finetune"])
    scratch, tuned = [], []
    for seed in (1, 2, 3):
        run = recipe.replace(seed=seed)
        scratch.append(train(few, base / f"s{seed}.imgclf", run).evaluation.accuracy)
        tuned.append(
            train(
                few, base / f"t{seed}.imgclf", run.replace(init_from=str(base / "first.imgclf"))
            ).evaluation.accuracy
        )
    assert np.mean(tuned) > np.mean(scratch) + 0.2, (scratch, tuned)
    assert min(tuned) > 0.6, tuned


def test_the_cli_takes_architecture_and_preprocessing_from_the_parent(tasks, tmp_path):
    base, few, _ = tasks
    out = tmp_path / "m.imgclf"
    code, stdout, err = run_cli(
        "train",
        "--dataset",
        few,
        "--model",
        out,
        "--init-from",
        base / "first.imgclf",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--precision",
        "fp32",
    )
    assert code == 0, err
    assert "started from" in err and "loaded" in err and "head new" in err
    import imgclf

    info = imgclf.inspect(out)
    assert info["architecture"]["name"] == "small_cnn" and info["architecture"]["args"]["widths"] == [
        8,
        16,
        32,
    ]
    assert (info["preprocess"]["height"], info["preprocess"]["width"]) == (32, 32)
    assert info["training"]["recipe"] == "finetune" and info["training"]["schedule"] == "one_cycle"
    parent = imgclf.inspect(base / "first.imgclf")["integrity"]["tensors_sha256"]
    assert info["started_from"]["parent_tensors_sha256"] == parent
    code, shown, _ = run_cli("inspect", out)
    line = next(x for x in shown.splitlines() if x.startswith("fine-tuned from"))
    assert str(base / "first.imgclf") in line and "head new" in line
    assert f"sha256:{info['started_from']['sha256']}" in line
    code, _, err = run_cli(
        "train",
        "--dataset",
        few,
        "--model",
        tmp_path / "x.imgclf",
        "--init-from",
        base / "first.imgclf",
        "--arch",
        "seed_resnet",
        "--epochs",
        "1",
    )
    assert code == 2 and "--init-from names a model of another architecture" in err


def test_a_wrong_weights_file_is_exit_2_with_one_line(tasks, tmp_path):
    base, few, _ = tasks
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not weights at all")
    code, stdout, err = run_cli(
        "train",
        "--dataset",
        few,
        "--model",
        tmp_path / "m.imgclf",
        "--weights",
        bad,
        "--arch",
        "small_cnn",
        "--size",
        "32",
        "--epochs",
        "1",
    )
    assert code == 2 and stdout == ""
    assert err.strip().count("\n") == 0 and "unknown weights file format" in err
    assert not (tmp_path / "m.imgclf").exists()
