"""int8 ONNX export: calibration sampling, the agreement gate, the CLI round trip and a model that fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import imgclf
from helpers import run_cli
from imgclf.errors import ExportError, UsageError
from imgclf.interop.onnx_quantize import agreement_gate, calibration_set


@pytest.fixture(scope="module")
def int8_pair(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    code, stdout, stderr = run_cli(
        "export",
        tiny_model.model_path,
        "--quantize",
        "int8",
        "--calibration",
        tiny_model.dataset,
        "--out",
        out,
    )
    assert code == 0, stderr
    return tiny_model, out, stdout


def test_calibration_uses_the_training_split_only_and_is_deterministic(tiny_model):
    a = calibration_set(tiny_model.dataset, ["ring", "square"], count=10)
    b = calibration_set(tiny_model.dataset, ["ring", "square"], count=10)
    assert a == b
    assert len(a.calibration) == 10 and all("/training/" in p for p in a.calibration)
    assert len(a.heldout) == 8 and all("/validation/" in p for p, _ in a.heldout)
    assert len(a.test) == 12 and {lab for _, lab in a.test} == {0, 1}
    assert a.heldout_split == "validation"


def test_calibration_refuses_other_classes(tiny_model):
    with pytest.raises(UsageError, match="--calibration holds other classes than the model"):
        calibration_set(tiny_model.dataset, ["cat", "dog"])


def test_agreement_gate_figures_and_refusals():
    fp32 = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    same = agreement_gate(fp32, fp32 + 0.01, fp32, fp32, np.array([0, 1, 0, 0]))
    assert same["top1_agreement"] == 1.0 and same["test_accuracy_fp32"] == same["test_accuracy_int8"] == 0.75
    flipped = fp32[:, ::-1]
    with pytest.raises(ExportError) as err:
        agreement_gate(fp32, flipped)
    assert "top-1 agrees with fp32 on 0.0% of 4 held-out images (needs >= 99%)" in str(err.value)
    # Agreement alone is not enough: the test split's accuracy may not drop by more than one point.
    with pytest.raises(ExportError, match=r"test accuracy 75.0% -> 25.0% on 4 images \(drop 50.0 points"):
        agreement_gate(fp32, fp32, fp32, flipped, np.array([0, 1, 0, 0]))


def test_int8_export_round_trip(int8_pair):
    tiny, out, stdout = int8_pair
    assert stdout.startswith(f"{out}\t") and "int8: top-1 agreement with fp32 100.00% on 8 held-out" in stdout
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Softmax"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)
    meta = json.loads({p.key: p.value for p in model.metadata_props}["imgclf.manifest"])
    quant = meta["quantization"]
    assert quant["dtype"] == "int8" and quant["calibration"]["images"] == 24
    assert quant["agreement"]["top1_agreement"] == 1.0 and quant["agreement"]["test_images"] == 12
    clf, ref = imgclf.load(out), imgclf.load(tiny.model_path)
    images = sorted(str(p) for p in (tiny.dataset / "testing").rglob("*.png"))
    got, want = clf.predict_proba(images), ref.predict_proba(images)
    assert (got.argmax(1) == want.argmax(1)).all() and np.abs(got - want).max() < 0.1
    code, text, err = run_cli("verify", out)
    assert code == 0 and "vs the quantized model at export" in text, text + err
    code, text, err = run_cli("inspect", out)
    assert code == 0 and "quantization    int8 (int8 static QDQ" in text, err


def test_int8_export_refuses_a_model_with_huge_activations(tiny_model, tmp_path):
    # The same offset on every logit changes no probability in fp32, but the logits' range becomes so wide
    # that uint8 activations cannot tell the classes apart: the gate must see it and write nothing.
    clf = imgclf.load(tiny_model.model_path)
    with torch.no_grad():
        clf.model.head.bias += 1e4
    huge = tmp_path / "huge.imgclf"
    imgclf.save(clf, huge)
    out = tmp_path / "huge.int8.onnx"
    code, stdout, stderr = run_cli(
        "export", huge, "--quantize", "int8", "--calibration", tiny_model.dataset, "--out", out
    )
    assert code == 8 and stdout == ""
    assert (
        "the int8 model disagrees with the fp32 model" in stderr
        and "held-out images (needs >= 99%)" in stderr
    )
    assert "test accuracy" in stderr and not out.exists()
    assert not list(Path(tmp_path).glob("*.onnx*"))


def test_quantize_needs_calibration(tiny_model, tmp_path):
    code, _, stderr = run_cli(
        "export", tiny_model.model_path, "--quantize", "int8", "--out", tmp_path / "x.onnx"
    )
    assert code == 2 and "--quantize and --calibration go together" in stderr
