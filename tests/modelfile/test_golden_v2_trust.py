"""The version-2 golden file with the optional trust blocks: a model whose training fitted a calibration
temperature and an out-of-distribution threshold must load, verify, and predict with both, forever.

``tests/fixtures/golden_v2_trust.imgclf`` was written once by ``tests/fixtures/make_golden_v2_trust.py``
and is never regenerated. If this test fails, the reader broke compatibility: fix the reader, do not
rewrite the file. (``golden_v2.imgclf``, a multi-label file, has neither block.)
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
from test_golden import golden_images

import imgclf
from imgclf.cli.main import main

FIXTURES = Path(__file__).parents[1] / "fixtures"
GOLDEN = FIXTURES / "golden_v2_trust.imgclf"
EXPECTED = FIXTURES / "golden_v2_trust_expected.json"


def foreign_images() -> list[np.ndarray]:
    """Three deterministic images from integer arithmetic only, unlike the training classes: flat grey,
    a hashed-noise pattern, and a bright diagonal ramp."""
    yy, xx = np.mgrid[0:40, 0:40]
    grey = np.full((40, 40, 3), 128)
    noise = np.stack([(xx * 73 + yy * 151) % 256, (xx * 199 + yy * 31) % 256, (xx * yy * 97) % 256], axis=2)
    ramp = np.stack([255 - (xx + yy) * 3, (xx + yy) * 3, np.full_like(xx, 240)], axis=2)
    return [np.ascontiguousarray(im, dtype=np.uint8) for im in (grey, noise, ramp)]


def _images() -> list[np.ndarray]:
    return golden_images() + foreign_images()


def test_foreign_images_never_change():
    digest = hashlib.sha256(b"".join(im.tobytes() for im in foreign_images())).hexdigest()
    assert digest == FOREIGN_DIGEST


def test_the_golden_v2_trust_file_loads_with_both_blocks_and_predicts_as_recorded():
    expected = json.loads(EXPECTED.read_text())
    clf = imgclf.load(GOLDEN)
    assert clf.class_names == expected["class_names"] and not clf.multi_label
    assert clf.manifest["calibration"] == expected["calibration"] and clf.manifest["ood"] == expected["ood"]
    assert clf.temperature == expected["calibration"]["temperature"] != 1.0
    probs = clf.predict_proba(_images())
    np.testing.assert_allclose(probs, np.asarray(expected["probabilities"]), rtol=0, atol=1e-6)
    predictions = clf.predict(_images())
    assert [p.label for p in predictions] == expected["labels"]
    assert [p.unlike_training_data for p in predictions] == expected["unlike_training_data"]
    assert set(expected["unlike_training_data"]) == {True, False}  # the threshold separates something


def test_probabilities_apply_the_temperature():
    import torch

    from imgclf.calibration import softmax
    from imgclf.classifier import predict_logits
    from imgclf.images.preprocess import preprocess_uint8

    clf = imgclf.load(GOLDEN)
    x = np.stack([preprocess_uint8(im, clf.preprocess) for im in _images()])
    logits = predict_logits(clf.model, x, clf.preprocess).numpy()
    probs = clf.predict_proba_uint8(x)
    np.testing.assert_allclose(probs, softmax(logits, clf.temperature), rtol=0, atol=1e-6)
    assert not np.allclose(probs, torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-4)


def test_the_flags_follow_the_stored_thresholds():
    from imgclf.classifier import image_features, input_moments, ood_scores
    from imgclf.images.preprocess import preprocess_uint8

    clf = imgclf.load(GOLDEN)
    block = clf.manifest["ood"]
    x = np.stack([preprocess_uint8(im, clf.preprocess) for im in _images()])
    by_features = ood_scores(image_features(clf, x, block["layer"]), block) > block["threshold"]
    by_colour = ood_scores(input_moments(x), block["moments"]) > block["moments"]["threshold"]
    assert clf.unlike_training_data(x).tolist() == (by_features | by_colour).tolist()
    wide = copy.deepcopy(block)
    wide["threshold"] = wide["moments"]["threshold"] = 1e300  # nothing is beyond it
    clf.manifest["ood"] = wide
    assert not clf.unlike_training_data(x).any()
    assert all(p.unlike_training_data is False for p in clf.predict(_images()))


def test_the_golden_v2_trust_file_verifies_and_inspects(capsys):
    expected = json.loads(EXPECTED.read_text())
    assert imgclf.verify(GOLDEN).ok  # its probes were computed with the temperature
    info = imgclf.inspect(GOLDEN)
    assert info["task"] == expected["task"] and info["task"]["type"] == "single_label"
    assert info["calibration"] == expected["calibration"] and info["ood"] == expected["ood"]
    for key in ("format", "format_version", "architecture", "preprocess", "decode_rule", "parameters"):
        assert info[key] == expected["inspect"][key], key
    assert main(["inspect", str(GOLDEN)]) == 0
    out = capsys.readouterr().out
    assert "imgclf version 2" in out and "no calibration" not in out and "no OOD threshold" not in out


def test_the_golden_v2_trust_file_is_unchanged_on_disk():
    data = GOLDEN.read_bytes()
    assert len(data) < 100_000
    assert hashlib.sha256(data).hexdigest() == DIGEST


FOREIGN_DIGEST = "500660076271e327e4900d1191490545cd9f3510f0a2194620058673eaa118e0"
DIGEST = "4e64f68e8b68686e48ecb57487a8a739b342eb77faeda5498833de54d4e2968a"
