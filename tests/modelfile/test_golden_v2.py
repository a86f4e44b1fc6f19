"""The version-2 golden file: a multi-label model (task, thresholds, balance) must load, verify and predict
the same, forever; version 1 files keep loading too (``test_golden.py``).

``tests/fixtures/golden_v2.imgclf`` was written once by ``tests/fixtures/make_golden_v2.py`` and is never
regenerated. If this test fails, the reader broke compatibility: fix the reader, do not rewrite the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from test_golden import golden_images

import imgclf
from imgclf.cli.main import main

FIXTURES = Path(__file__).parents[1] / "fixtures"
GOLDEN = FIXTURES / "golden_v2.imgclf"
EXPECTED = FIXTURES / "golden_v2_expected.json"


def test_the_golden_v2_file_loads_and_predicts_label_sets_as_recorded():
    expected = json.loads(EXPECTED.read_text())
    clf = imgclf.load(GOLDEN)
    assert clf.class_names == expected["class_names"] and clf.multi_label
    assert clf.thresholds.tolist() == expected["task"]["thresholds"]
    probs = clf.predict_proba(golden_images())
    np.testing.assert_allclose(probs, np.asarray(expected["probabilities"]), rtol=0, atol=1e-6)
    assert [p.labels for p in clf.predict(golden_images())] == expected["labels"]


def test_the_golden_v2_file_verifies_and_inspects(capsys):
    expected = json.loads(EXPECTED.read_text())
    assert imgclf.verify(GOLDEN).ok
    info = imgclf.inspect(GOLDEN)
    assert (
        info["task"] == expected["task"] == {**expected["task"], "type": "multi_label", "balance": "weights"}
    )
    for key in ("format", "format_version", "architecture", "preprocess", "decode_rule", "parameters"):
        assert info[key] == expected["inspect"][key], key
    assert main(["inspect", str(GOLDEN)]) == 0
    out = capsys.readouterr().out
    assert "imgclf version 2" in out and "task            multi-label, thresholds" in out


def test_the_golden_v2_file_is_unchanged_on_disk():
    data = GOLDEN.read_bytes()
    assert len(data) < 100_000
    assert hashlib.sha256(data).hexdigest() == DIGEST


DIGEST = "2a363abf75016b4e8f92d722b7dac5d3076f9846d36ef6e086af6e62b815ba8b"
