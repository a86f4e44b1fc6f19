"""The optional ``calibration`` and ``ood`` manifest blocks: old files lack them and still load, new files
round-trip them, malformed blocks are refused, and every prediction path applies the temperature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import edit_manifest, make_classifier, run_cli
from imgclf import modelfile
from imgclf.calibration import softmax
from imgclf.classifier import predict_logits
from imgclf.errors import ModelFileError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden_v1.imgclf"
CALIBRATION = {"temperature": 2.5, "split": "validation", "images": 80, "ece_before": 0.2, "ece_after": 0.03}
OOD = {
    "score": "feature_distance",
    "layer": "features.6",
    "means": [[0.5] * 8, [0.25] * 8],
    "scale": [1.0] * 8,
    "threshold": 1.25,
    "split": "validation",
    "images": 80,
    "quantile": 0.95,
    "moments": {"means": [[0.5] * 6, [0.25] * 6], "scale": [0.01] * 6, "threshold": 30.0},
}


def test_a_v1_golden_file_loads_and_says_it_has_no_calibration_and_no_ood_threshold():
    clf = modelfile.load(GOLDEN)
    assert clf.temperature == 1.0 and "calibration" not in clf.manifest and "ood" not in clf.manifest
    info = modelfile.inspect(GOLDEN)
    assert info["calibration"] is None and info["ood"] is None
    rc, out, err = run_cli("inspect", str(GOLDEN))
    assert rc == 0, err
    assert "no calibration" in out and "no OOD threshold" in out
    assert modelfile.verify(GOLDEN).ok


def test_calibration_and_ood_round_trip_and_probabilities_use_the_temperature(tmp_path):
    clf = make_classifier(("a", "b", "c"))
    clf.manifest.update(calibration=dict(CALIBRATION), ood=dict(OOD))
    path = tmp_path / "m.imgclf"
    modelfile.save(clf, path)
    back = modelfile.load(path)
    assert back.manifest["calibration"] == CALIBRATION and back.manifest["ood"] == OOD
    assert back.temperature == 2.5
    assert modelfile.verify(path).ok  # the probes were computed at the same temperature
    x = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    logits = predict_logits(back.model, x, back.preprocess).numpy()
    np.testing.assert_allclose(back.predict_proba_uint8(x), softmax(logits, 2.5), atol=1e-6)
    from imgclf.images.preprocess import to_array

    np.testing.assert_allclose(
        back.predict_proba_input(to_array(x, back.preprocess)), softmax(logits, 2.5), atol=1e-6
    )
    rc, out, _ = run_cli("inspect", str(path))
    assert "calibration: temperature 2.5 (fitted on 80 validation images)" in out
    assert "feature_distance beyond 1.25" in out


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.update(calibration={**CALIBRATION, "temperature": 0}), "calibration.temperature"),
        (lambda m: m.update(calibration={**CALIBRATION, "code": "x"}), "calibration"),
        (lambda m: m.update(calibration={"split": "validation"}), "calibration"),
        (lambda m: m.update(ood={**OOD, "score": "import os"}), "ood.score"),
        (lambda m: m.update(ood={**OOD, "threshold": "high"}), "ood.threshold"),
        (lambda m: m.update(ood={**OOD, "means": [[0.5] * 7, [0.25] * 8]}), "ood.means"),
        (lambda m: m.update(ood={**OOD, "scale": [0.0] * 8}), "ood.scale"),
        (lambda m: m.update(ood={**OOD, "moments": {**OOD["moments"], "scale": [1.0] * 5}}), "ood.moments"),
        (lambda m: m.update(ood={**OOD, "moments": {**OOD["moments"], "code": 1}}), "ood.moments"),
    ],
)
def test_malformed_trust_blocks_are_refused(tmp_path, edit, field):
    path = tmp_path / "m.imgclf"
    modelfile.save(make_classifier(), path)
    path.write_bytes(edit_manifest(path.read_bytes(), edit))
    with pytest.raises(ModelFileError, match=f"manifest field {field} is malformed"):
        modelfile.load(path)


def test_onnx_export_applies_the_temperature_and_its_parity_gate_holds(tmp_path):
    pytest.importorskip("onnxruntime")
    from imgclf.interop.onnx_export import export_onnx
    from imgclf.loading import load

    clf = make_classifier(("a", "b"))
    with torch.no_grad():
        for p in clf.model.parameters():
            p.mul_(1.5)  # confident logits, so the temperature visibly changes the probabilities
    clf.manifest["calibration"] = {**CALIBRATION, "temperature": 4.0}
    path = tmp_path / "m.imgclf"
    modelfile.save(clf, path)
    export_onnx(path, tmp_path / "m.onnx")
    onnx_clf = load(tmp_path / "m.onnx")
    x = np.random.default_rng(1).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    calibrated = modelfile.load(path).predict_proba_uint8(x)
    np.testing.assert_allclose(onnx_clf.predict_proba_uint8(x), calibrated, atol=1e-5)
    logits = predict_logits(clf.model, x, clf.preprocess).numpy()
    np.testing.assert_allclose(calibrated, softmax(logits, 4.0), atol=1e-6)
    assert np.abs(softmax(logits) - calibrated).max() > 1e-4
