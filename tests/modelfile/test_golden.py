"""The golden file: a model written by format version 1 must load, verify and predict the same, forever.

``tests/fixtures/golden_v1.imgclf`` was written once by ``tests/fixtures/make_golden_v1.py`` and is never
regenerated. If this test fails, the reader broke compatibility: fix the reader or add a migration in
``modelfile.manifest`` — do not rewrite the file. ``golden_images`` is part of the fixture: keep it as is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

import imgclf
from imgclf.cli.main import main

FIXTURES = Path(__file__).parents[1] / "fixtures"
GOLDEN = FIXTURES / "golden_v1.imgclf"
EXPECTED = FIXTURES / "golden_v1_expected.json"


def golden_images() -> list[np.ndarray]:
    """Five deterministic RGB images from integer arithmetic only (no RNG whose stream could change):
    bars, a blob and a grid like the training classes, then two patterns unlike any of them."""
    yy, xx = np.mgrid[0:40, 0:40]
    bars = ((xx // 4) % 2)[..., None] * np.array([200, 60, 40])
    blob = (((xx - 19) ** 2 + (yy - 21) ** 2) < 121)[..., None] * np.array([40, 180, 90])
    grid = (((yy // 6) + (xx // 6)) % 2)[..., None] * np.array([60, 80, 220])
    ramp = np.stack([(xx * 6) % 256, (yy * 6) % 256, (xx + yy) * 3 % 256], axis=2)
    rings = (((xx - 20) ** 2 + (yy - 20) ** 2) // 40 % 2)[..., None] * np.array([250, 250, 250])
    return [np.ascontiguousarray(im, dtype=np.uint8) for im in (bars, blob, grid, ramp, rings)]


def test_golden_images_never_change():
    digest = hashlib.sha256(b"".join(im.tobytes() for im in golden_images())).hexdigest()
    assert digest == "bf9fd4335c3f4f82eaf8fe1154f2c1057bdd180d5623ac7c3279dfbcb159d76d"
    assert len(golden_images()) == 5 and golden_images()[0].shape == (40, 40, 3)


def test_the_golden_v1_file_loads_and_predicts_as_recorded():
    expected = json.loads(EXPECTED.read_text())
    clf = imgclf.load(GOLDEN)
    assert clf.class_names == expected["class_names"]
    probs = clf.predict_proba(golden_images())
    np.testing.assert_allclose(probs, np.asarray(expected["probabilities"]), rtol=0, atol=1e-6)
    assert [clf.class_names[i] for i in probs.argmax(axis=1)] == expected["labels"]


def test_the_golden_v1_file_verifies():
    report = imgclf.verify(GOLDEN)
    assert report.ok, [c for c in report.checks if not c[1]]
    assert sum(1 for name, _, _ in report.checks if name.endswith("output")) == 4


def test_inspecting_the_golden_v1_file(capsys):
    expected = json.loads(EXPECTED.read_text())["inspect"]
    info = imgclf.inspect(GOLDEN)
    for key in ("format", "format_version", "architecture", "preprocess", "decode_rule", "parameters"):
        assert info[key] == expected[key], key
    assert info["integrity"]["tensors_sha256"] == expected["tensors_sha256"]
    assert info["training"]["epochs"] == 2 and info["versions"]["imgclf"]
    assert main(["inspect", str(GOLDEN)]) == 0
    assert "imgclf version 1" in capsys.readouterr().out


def test_the_golden_file_is_small_and_unchanged_on_disk():
    """Regenerating the file would have to change this digest too: a change no review should accept."""
    data = GOLDEN.read_bytes()
    assert len(data) < 100_000
    assert (
        hashlib.sha256(data).hexdigest() == "2c51614203b9aae705bb11684d9d221c8af3bb32ea01f3f4738a848641924812"
    )


def test_todays_synthetic_probes_are_the_golden_files_probes():
    """The synthetic probes are fixed bytes: the ones the golden file stored when it was written."""
    from helpers import tensors_of
    from imgclf.modelfile.probes import synthetic_images

    stored = tensors_of(GOLDEN.read_bytes())
    today = synthetic_images()
    assert len(today) == 4
    for i, blob in enumerate(today):
        assert stored[f"probe.{i}"].numpy().tobytes() == blob, i
