"""Shared fixtures: tiny synthetic datasets written to temporary folders (no downloads, no real data).

Helpers that tests import live in ``tests/helpers.py``; this file only defines fixtures.
"""

from __future__ import annotations

import os

# One intra-op thread in the tests and in every subprocess they start: on a 2-core machine shared with
# other work, two OpenMP threads can run a tiny model 100x slower, and the same thread count in parent
# and child keeps float summation order (so bitwise comparisons) identical.
os.environ["OMP_NUM_THREADS"] = "1"
# fp32 prediction unless a test asks for another precision: results compare bitwise with the library's.
os.environ["IMGCLF_PRECISION"] = "fp32"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from helpers import make_dataset, tiny_train_config  # noqa: E402

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Split layout, 2 classes: 12 training, 4 validation, 6 testing images per class."""
    return make_dataset(tmp_path / "data", {"training": 12, "validation": 4, "testing": 6})


@pytest.fixture
def tiny_config():
    """A fast recipe for tests (:func:`tiny_train_config`)."""
    return tiny_train_config()


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
