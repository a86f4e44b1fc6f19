"""ONNX export of a multi-label model: the sigmoid is in the graph, the parity gate checks it, and the
thresholds travel in the .onnx's metadata, so the exported model answers the same label sets."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import imgclf
from helpers import make_classifier
from imgclf.interop.onnx_export import export_onnx
from imgclf.interop.onnx_meta import MANIFEST_KEY

pytest.importorskip("onnxruntime")

THRESHOLDS = [0.4, 0.6, 0.5]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("onnx_ml")
    clf = make_classifier(("cat", "dog", "fox"), size=32, seed=4)
    clf.manifest["task"] = {"type": "multi_label", "thresholds": THRESHOLDS, "balance": "weights"}
    imgclf.save(clf, base / "m.imgclf")
    result = export_onnx(base / "m.imgclf", base / "m.onnx")
    return base / "m.imgclf", base / "m.onnx", result


def test_thresholds_travel_in_the_onnx_metadata(exported):
    _, path, result = exported
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    manifest = json.loads(meta[MANIFEST_KEY])
    assert manifest["task"] == {"type": "multi_label", "thresholds": THRESHOLDS, "balance": "weights"}
    assert "sigmoid" in manifest["graph"]["output_meaning"]
    assert result.parity["max_abs_diff"] <= result.parity["tolerance"]


def test_the_onnx_model_gives_sigmoid_outputs_and_the_same_label_sets(exported):
    model, path, _ = exported
    torch_clf, onnx_clf = imgclf.load(model), imgclf.load(path)
    assert onnx_clf.multi_label and onnx_clf.thresholds.tolist() == THRESHOLDS
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(6)]
    want, got = torch_clf.predict_proba(images), onnx_clf.predict_proba(images)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got.sum(1), 1.0)  # independent sigmoids, not a softmax
    assert [p.labels for p in onnx_clf.predict(images)] == [p.labels for p in torch_clf.predict(images)]
