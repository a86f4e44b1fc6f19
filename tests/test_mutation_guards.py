"""Tests that pin exact limits and checks where a plausible one-line bug used to pass the suite.

Each test names the bug it catches. Found by injecting bugs by hand (issue 17) and by ``make mutation``
(see docs/testing.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import imgclf
from helpers import (
    data_offset,
    edit_manifest,
    edit_tensors,
    flip,
    make_classifier,
    manifest_of,
    split,
    with_manifest,
)
from imgclf.errors import ModelFileError
from imgclf.evaluation import confusion_matrix, evaluate_probabilities
from imgclf.modelfile import probes
from imgclf.training.optim import KerasSGD

DOCS = Path(__file__).resolve().parents[1] / "docs" / "format.md"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("guards") / "m.imgclf"
    imgclf.save(make_classifier(seed=21, size=16), path)
    return path


# --- probe tolerance: the documented value, from both sides ---------------------------------------------


def documented_tolerance() -> float:
    """The probe tolerance as docs/format.md §6 states it."""
    found = re.search(r"against\s+the tolerance \(([0-9.e-]+)\)", DOCS.read_text(encoding="utf-8"))
    assert found, "docs/format.md no longer states the probe tolerance"
    return float(found.group(1))


def test_the_code_uses_the_documented_probe_tolerance():
    assert probes.TOLERANCE == documented_tolerance() == 1e-4


@pytest.mark.parametrize("factor, passes", [(0.9, True), (1.1, False)])
def test_a_drift_just_below_the_tolerance_passes_just_above_fails(model_file, tmp_path, factor, passes):
    """Catches a loosened (or tightened) default tolerance, e.g. 1e-4 -> 1e-2."""
    drift = factor * documented_tolerance()

    def edit(m):
        p = m["probes"][0]["probabilities"]
        p[0], p[1] = p[0] - drift, p[1] + drift

    path = tmp_path / "drift.imgclf"
    path.write_bytes(edit_manifest(model_file.read_bytes(), edit))
    report = imgclf.verify(path)  # the default tolerance
    assert report.ok is passes
    output = {name: (ok, detail) for name, ok, detail in report.checks}["probe 0 (synthetic) output"]
    assert output[0] is passes and f"max |Δp| = {drift:.3g} (tolerance 0.0001)" in output[1]


# --- digests: the model-file tests alone notice a disabled check -----------------------------------------


def _weight_byte(blob: bytes) -> int:
    """Offset of the first byte (lowest mantissa bits, little-endian) of a float32 weight's data."""
    header, _ = split(blob)
    name = next(k for k, v in header.items() if k.startswith("model.") and v["dtype"] == "F32")
    return data_offset(blob) + header[name]["data_offsets"][0]


@pytest.mark.parametrize("action", ["load", "verify", "inspect"])
def test_a_flipped_weight_bit_fails_the_tensor_digest(model_file, tmp_path, action):
    """The weight stays finite and the right shape: only the tensor digest can tell."""
    blob = model_file.read_bytes()
    path = tmp_path / "flipped.imgclf"
    path.write_bytes(flip(blob, _weight_byte(blob)))
    with pytest.raises(ModelFileError, match="tensor data does not match its digest"):
        getattr(imgclf, action)(path)


def test_a_flipped_probe_byte_fails_the_tensor_digest(model_file, tmp_path):
    blob = model_file.read_bytes()
    header, _ = split(blob)
    path = tmp_path / "probe_flipped.imgclf"
    path.write_bytes(flip(blob, data_offset(blob) + header["probe.0.input"]["data_offsets"][0]))
    with pytest.raises(ModelFileError, match="tensor data does not match its digest"):
        imgclf.load(path)


@pytest.mark.parametrize("action", ["load", "verify", "inspect"])
def test_an_edited_manifest_without_a_new_digest_fails_the_manifest_digest(model_file, tmp_path, action):
    """Still canonical JSON and still valid, so only the manifest digest can tell."""
    blob = model_file.read_bytes()

    def edit(m):
        m["class_names"] = m["class_names"][::-1]

    path = tmp_path / "edited.imgclf"
    path.write_bytes(edit_manifest(blob, edit, resign=False))
    with pytest.raises(ModelFileError, match="the manifest does not match its digest"):
        getattr(imgclf, action)(path)
    path.write_bytes(edit_manifest(blob, edit, resign=True))  # the same edit, re-signed, loads
    assert getattr(imgclf, action)(path) is not None


def test_a_digest_copied_from_another_file_fails(model_file, tmp_path):
    other = tmp_path / "other.imgclf"
    imgclf.save(make_classifier(seed=22, size=16), other)
    blob = model_file.read_bytes()
    mine = manifest_of(blob)
    mine["integrity"]["tensors_sha256"] = manifest_of(other.read_bytes())["integrity"]["tensors_sha256"]
    path = tmp_path / "swapped.imgclf"
    path.write_bytes(with_manifest(blob, mine))  # manifest digest re-signed, tensor digest wrong
    with pytest.raises(ModelFileError, match="tensor data does not match its digest"):
        imgclf.load(path)


# --- metrics: what an evaluation carries ------------------------------------------------------------------


def test_an_evaluation_carries_its_inputs_and_serialises_every_field():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    ev = evaluate_probabilities(probs, labels, ["a.png", "b.png", "c.png"], ("cat", "dog"))
    assert ev.probabilities is probs and ev.labels is labels and ev.paths == ["a.png", "b.png", "c.png"]
    wrong = {"path": "c.png", "true": "dog", "predicted": "cat", "confidence": float(probs[2, 0])}
    assert ev.to_dict() == {
        "report": ev.report,
        "balanced_accuracy": 0.75,  # recalls 1 and 1/2
        "macro_f1": ev.report["macro avg"]["f1-score"],
        "confusion_matrix": [[1, 0], [1, 1]],
        "class_names": ["cat", "dog"],
        "misclassified": [wrong],
    }


def test_evaluating_no_images_gives_zero_support_not_an_error():
    """What ``Classifier.predict_proba_uint8`` returns for no images: shape (0, C)."""
    ev = evaluate_probabilities(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), [], ["cat", "dog"])
    assert ev.confusion.tolist() == [[0, 0], [0, 0]] and ev.misclassified == []
    zeros = {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    assert ev.report["accuracy"] == 0.0
    assert ev.report["cat"] == ev.report["macro avg"] == ev.report["weighted avg"] == zeros


def test_confusion_matrix_takes_empty_lists_and_column_vectors_like_sklearn():
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    assert confusion_matrix([], [], 2).tolist() == [[0, 0], [0, 0]]
    column, flat = np.array([[1], [0], [1]]), np.array([1, 1, 1])
    expected = sk_confusion_matrix(column.ravel(), flat, labels=[0, 1]).tolist()
    assert confusion_matrix(column, flat, 2).tolist() == expected == [[0, 1], [0, 2]]
    assert confusion_matrix(flat, column, 2).tolist() == [[0, 0], [1, 2]]


def test_more_paths_than_predictions_is_an_error():
    with pytest.raises(ValueError):
        evaluate_probabilities(np.eye(2, dtype=np.float32), np.array([1, 0]), ["a", "b", "c"], ["x", "y"])


# --- optimizer --------------------------------------------------------------------------------------------


def test_a_group_without_weight_decay_has_none():
    w = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    opt = KerasSGD([{"params": [w]}], lr=0.1, momentum=0.9)
    assert opt.param_groups[0]["weight_decay"] == 0.0
    w.backward(torch.ones((), dtype=torch.float64))
    opt.step()
    assert w.item() == pytest.approx(2.0 - 0.1, abs=1e-15)


# --- probes: the size of a preprocessing drift ------------------------------------------------------------


def _drift_stored_input(tensors):
    """Move three values of probe 0's stored input by 1, 1 and 5 levels."""
    stored = tensors["probe.0.input"].clone()
    for (y, x, c), delta in zip([(0, 0, 0), (3, 4, 1), (7, 2, 2)], [1, 1, 5], strict=True):
        value = int(stored[y, x, c])
        stored[y, x, c] = value - delta if value >= delta else value + delta
    tensors["probe.0.input"] = stored


def test_preprocessing_drift_is_counted_and_sized_exactly(model_file, tmp_path):
    """The stored input moved (file re-signed): verify says by how much, and today's input is the original."""
    path = tmp_path / "drifted_input.imgclf"
    path.write_bytes(edit_tensors(model_file.read_bytes(), _drift_stored_input))
    rows = {name: (ok, detail) for name, ok, detail in imgclf.verify(path).checks}
    assert rows["probe 0 (synthetic) preprocessing"] == (
        False,
        "preprocessing changed (Pillow or imgclf?): 3 of 768 pixel values differ, by up to 5/255",
    )
    # today's input is the very input the probabilities were computed from: no end-to-end change
    assert rows["probe 0 end to end"] == (True, "with today's preprocessing: max |Δp| = 0")


def test_an_end_to_end_top1_change_is_called_out(model_file, tmp_path):
    def swap(m):
        p = m["probes"][0]["probabilities"]
        p[0], p[1] = p[1], p[0]

    blob = edit_manifest(edit_tensors(model_file.read_bytes(), _drift_stored_input), swap)
    path = tmp_path / "drifted_and_swapped.imgclf"
    path.write_bytes(blob)
    rows = {name: (ok, detail) for name, ok, detail in imgclf.verify(path).checks}
    ok, detail = rows["probe 0 end to end"]
    assert not ok and detail.endswith("; the top-1 class changed")


# --- digests: the canonical JSON that both digests and the stored manifest text rest on --------------------


def test_canonical_json_is_sorted_ascii_and_refuses_nan():
    """docs/format.md §3: keys sorted, no spaces, ASCII only (\\uXXXX escapes), no NaN/Infinity."""
    from imgclf.modelfile.digests import canonical_json

    assert canonical_json({"b": [1, 2.5], "a": {"é": "→"}}) == '{"a":{"\\u00e9":"\\u2192"},"b":[1,2.5]}'
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            canonical_json({"x": bad})


def test_a_manifest_stored_with_unsorted_keys_is_refused(model_file, tmp_path):
    """Same content, same (valid) digests, keys in another order: not the canonical text, so refused."""
    import json

    blob = model_file.read_bytes()
    manifest = manifest_of(blob)
    unsorted = json.dumps(dict(reversed(list(manifest.items()))), separators=(",", ":"), ensure_ascii=True)
    path = tmp_path / "unsorted.imgclf"
    path.write_bytes(with_manifest(blob, unsorted))
    with pytest.raises(ModelFileError, match="manifest is not in canonical form"):
        imgclf.load(path)
