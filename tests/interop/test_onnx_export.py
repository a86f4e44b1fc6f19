"""``imgclf.interop.onnx_export``: the round trip for every architecture, the metadata and the parity gate."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnxfiles import export_pair

import imgclf
from imgclf.errors import ExportError, UsageError
from imgclf.interop import onnx_export, onnx_parity
from imgclf.interop.onnx_meta import MANIFEST_KEY, PARITY_TOLERANCE
from imgclf.models import registry


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    base = tmp_path_factory.mktemp("onnx_export")
    return {arch: export_pair(base / arch, arch) for arch in registry.names()}


def _stored_probe_inputs(path) -> np.ndarray:
    from imgclf.modelfile.format import read_container
    from imgclf.modelfile.manifest import parse

    c = read_container(path)
    return np.stack([c.tensor(p.input_tensor).numpy() for p in parse(c).probes])


@pytest.mark.parametrize("arch", registry.names())
@pytest.mark.parametrize("batch_size", [1, 7])
def test_onnx_answers_like_pytorch_for_every_architecture(pairs, arch, batch_size):
    pair = pairs[arch]
    torch_clf, onnx_clf = imgclf.load(pair.imgclf), imgclf.load(pair.onnx)
    assert type(onnx_clf).__name__ == "OnnxClassifier" and isinstance(onnx_clf, imgclf.Classifier)
    probes = _stored_probe_inputs(pair.imgclf)
    for want, got in (
        (
            torch_clf.predict_proba(pair.paths, batch_size=batch_size),
            onnx_clf.predict_proba(pair.paths, batch_size=batch_size),
        ),
        (
            torch_clf.predict_proba_uint8(probes, batch_size=batch_size),
            onnx_clf.predict_proba_uint8(probes, batch_size=batch_size),
        ),
    ):
        assert got.shape == want.shape and got.dtype == np.float32
        assert float(np.max(np.abs(got - want))) <= PARITY_TOLERANCE
        assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))
        assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)  # the softmax is inside the graph


def test_the_file_is_one_checked_self_describing_onnx(pairs):
    pair = pairs["small_cnn"]
    assert sorted(p.name for p in pair.onnx.parent.iterdir() if p.suffix != ".imgclf") == [
        "demo",
        "small_cnn.onnx",
    ]
    model = onnx.load_model(str(pair.onnx))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= onnx_export.MAX_IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", onnx_export.DEFAULT_OPSET)]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # the batch size is dynamic
    meta = {p.key: p.value for p in model.metadata_props}
    manifest = json.loads(meta[MANIFEST_KEY])
    source = imgclf.inspect(pair.imgclf)
    assert manifest["format"] == "imgclf-onnx" and manifest["format_version"] == 1
    assert manifest["class_names"] == source["class_names"]
    assert manifest["preprocess"] == source["preprocess"]
    assert manifest["source"]["tensors_sha256"] == source["integrity"]["tensors_sha256"]
    assert manifest["export"]["opset"] == onnx_export.DEFAULT_OPSET
    assert {"imgclf", "torch", "onnx", "onnxruntime"} <= set(manifest["export"]["versions"])
    parity = manifest["parity"]
    assert parity == pair.result.parity
    assert parity["inputs"] == 4 + onnx_parity.GENERATED_INPUTS + len(pair.paths)
    assert 0 <= parity["max_abs_diff"] <= PARITY_TOLERANCE and parity["batch_sizes"] == [1, 7]
    assert len(manifest["probes"]) == 4 and all(f"imgclf.probe.{i}.input" in meta for i in range(4))


def _first_batch_of_7_row_2(out):
    """Perturb one output: row 2 of the first batch of 7 (the third probe) by 5e-5."""
    _first_batch_of_7_row_2.calls = getattr(_first_batch_of_7_row_2, "calls", 0) + (len(out) == 7)
    if len(out) == 7 and _first_batch_of_7_row_2.calls == 1:
        out = out.copy()
        out[2] += np.float32(5e-5)
    return out


@pytest.mark.parametrize(
    ("shift", "message"),
    [
        (_first_batch_of_7_row_2, r"max \|Δp\| = 5(\.0\d)?e-05 on probe 2 \(synthetic\) at batch 7;"),
        (
            lambda out: out[:, ::-1].copy(),
            r"top-1 class differs on probe 0 \(synthetic\) at batch 1 \(\d+ case",
        ),
    ],
    ids=["one-value-drifts", "swapped-classes"],
)
def test_the_gate_refuses_a_disagreeing_runtime_and_writes_nothing(
    pairs, tmp_path, monkeypatch, shift, message
):
    real = onnx_parity.run_session
    _first_batch_of_7_row_2.calls = 0
    monkeypatch.setattr(onnx_parity, "run_session", lambda session, x: shift(real(session, x)))
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError) as info:
        onnx_export.export_onnx(pairs["small_cnn"].imgclf, out)
    assert info.value.exit_code == 8
    assert "the ONNX model disagrees with the PyTorch model" in str(info.value)
    assert re.search(message, str(info.value)), str(info.value)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind


def test_the_gate_passes_without_the_perturbation(pairs, tmp_path):
    # the same export as above, unpatched: what made it fail was the perturbation alone
    result = onnx_export.export_onnx(pairs["small_cnn"].imgclf, tmp_path / "m.onnx")
    assert result.parity["max_abs_diff"] <= PARITY_TOLERANCE and (tmp_path / "m.onnx").is_file()


@pytest.mark.parametrize(
    ("opset", "exporter"), [(12, "torchscript"), (21, "torchscript"), (17, "dynamo"), (18, "tf")]
)
def test_unsupported_opsets_and_exporters_are_usage_errors(pairs, tmp_path, opset, exporter):
    with pytest.raises(UsageError):
        onnx_export.export_onnx(
            pairs["small_cnn"].imgclf, tmp_path / "m.onnx", opset=opset, exporter=exporter
        )
    assert list(tmp_path.iterdir()) == []


def test_export_prints_nothing_on_stdout(pairs, tmp_path, capfd):
    onnx_export.export_onnx(pairs["small_cnn"].imgclf, tmp_path / "m.onnx", opset=17)
    assert capfd.readouterr().out == ""


@pytest.mark.slow
def test_the_dynamo_exporter_passes_the_gate_too(pairs, tmp_path, capfd):
    pair = pairs["small_cnn"]
    result = onnx_export.export_onnx(pair.imgclf, tmp_path / "d.onnx", exporter="dynamo", opset=18)
    assert capfd.readouterr().out == ""  # its progress lines went to stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "d.onnx"]  # no .onnx.data beside it
    got = imgclf.load(tmp_path / "d.onnx").predict_proba(pair.paths)
    want = imgclf.load(pair.imgclf).predict_proba(pair.paths)
    assert result.parity["max_abs_diff"] <= PARITY_TOLERANCE
    assert float(np.max(np.abs(got - want))) <= PARITY_TOLERANCE
