"""Test-time augmentation: the views follow the training augmentation, probabilities are their mean, and
``--tta`` reaches predict and evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import make_classifier, run_cli
from imgclf import modelfile
from imgclf.images.tta import apply_view, average_over_views, tta_views


def test_views_follow_the_recorded_augmentation():
    seed = {"enabled": True, "horizontal_flip": True, "vertical_flip": False, "rotation": 20.0}
    assert tta_views(seed) == ["identity", "hflip", "rot+10", "rot-10"]
    assert tta_views({**seed, "vertical_flip": True, "rotation": 0}) == ["identity", "hflip", "vflip"]
    assert tta_views(None) == ["identity", "hflip"]


def test_views_are_what_they_say():
    x = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(apply_view(x, "hflip")[:, :, 0], x[:, :, 7])
    assert np.array_equal(apply_view(x, "vflip")[:, 0], x[:, 7])
    assert np.array_equal(apply_view(x, "rot+0"), x)
    flat = np.full((1, 8, 8, 3), 77, np.uint8)
    assert np.array_equal(apply_view(flat, "rot+10"), flat)  # edges replicated: no black corners


def test_classifier_tta_is_the_mean_over_views():
    clf = make_classifier()
    x = np.random.default_rng(1).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    plain = clf.predict_proba_uint8(x)
    expected = average_over_views(clf.predict_proba_uint8, x, ["identity", "hflip"])
    clf.tta = True
    np.testing.assert_allclose(clf.predict_proba_uint8(x), expected, atol=1e-6)
    assert not np.allclose(clf.predict_proba_uint8(x), plain)


def test_tta_in_predict_and_evaluate(tiny_model):
    images = [str(p) for p in sorted((tiny_model.dataset / "testing").rglob("*.png"))[:4]]
    clf = modelfile.load(tiny_model.model_path)
    clf.tta = True
    expected = clf.predict(images)
    rc, out, err = run_cli("predict", "-m", str(tiny_model.model_path), "-i", *images, "--tta", "--json")
    assert rc == 0, err
    got = [json.loads(line)["confidence"] for line in out.splitlines()]
    assert got == pytest.approx([p.confidence for p in expected], abs=1e-6)
    rc, out, err = run_cli(
        "evaluate", "-m", str(tiny_model.model_path), "-d", str(tiny_model.dataset), "--tta", "--json"
    )
    assert rc == 0, err
    assert "accuracy" in json.loads(out)["report"]
