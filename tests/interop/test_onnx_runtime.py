"""``imgclf.interop.onnx_runtime`` and ``imgclf.loading``: NumPy input path, loading, refusals, verify."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import pytest
import torch
from onnxfiles import export_pair, without_metadata

import imgclf
from imgclf.config import PreprocessSpec
from imgclf.errors import ImageError, ModelFileError, UsageError
from imgclf.images.preprocess import to_array, to_tensor
from imgclf.interop.onnx_meta import MANIFEST_KEY
from imgclf.loading import file_kind


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return export_pair(tmp_path_factory.mktemp("onnx_runtime"), "small_cnn", parity_images=False)


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(height=9, width=7),
        PreprocessSpec(height=9, width=7, rescale=1 / 127.5, mean=(1.0, 1.0, 1.0)),
        PreprocessSpec(height=9, width=7, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ],
    ids=["recipe", "minus-one-to-one", "imagenet"],
)
def test_the_numpy_input_is_bitwise_the_torch_input(spec):
    batch = np.random.default_rng(1).integers(0, 256, size=(5, 9, 7, 3), dtype=np.uint8)
    want = to_tensor(batch, spec).contiguous().numpy()
    got = to_array(batch, spec)
    assert got.dtype == np.float32 and got.shape == (5, 3, 9, 7) and got.flags.c_contiguous
    assert got.tobytes() == want.tobytes()


def test_to_array_refuses_what_to_tensor_refuses():
    with pytest.raises(UsageError, match="to_array needs a uint8 batch"):
        to_array(np.zeros((2, 4, 4, 3), dtype=np.float32), PreprocessSpec(height=4, width=4))


def test_files_are_told_apart_by_their_bytes_not_their_names(pair, tmp_path):
    from imgclf.modelfile.foreign import describe

    assert file_kind(pair.onnx) == "onnx" and file_kind(pair.imgclf) == "imgclf"
    renamed = tmp_path / "model.imgclf"
    renamed.write_bytes(pair.onnx.read_bytes())
    assert file_kind(renamed) == "onnx"
    pickled = tmp_path / "model.onnx"
    pickled.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    assert file_kind(pickled) == "imgclf"  # the model-file loader words the refusal
    head = pair.onnx.read_bytes()[:4096]
    assert describe(head, b"", "x.bin") == "an ONNX model (protobuf)"  # the foreign-file sniffer agrees


def test_the_onnx_classifier_keeps_the_classifier_interface(pair):
    clf = imgclf.load(pair.onnx)
    torch_clf = imgclf.load(pair.imgclf)
    assert clf.class_names == torch_clf.class_names and clf.preprocess == torch_clf.preprocess
    assert clf.manifest["format"] == "imgclf-onnx" and "parity" in clf.manifest
    assert "OnnxClassifier(arch='small_cnn'" in repr(clf)
    image = (np.arange(40 * 30 * 3) % 251).astype(np.uint8).reshape(40, 30, 3)
    encoded = pair.imgclf.read_bytes()[:10]  # not an image
    got = clf.predict([image, encoded, image[..., ::-1]], top_k=2, errors="return")
    want = torch_clf.predict([image, encoded, image[..., ::-1]], top_k=2, errors="return")
    assert [p.label for p in got] == [p.label for p in want]
    assert got[1].error == want[1].error and got[1].label is None
    assert abs(got[0].confidence - want[0].confidence) <= 1e-5 and len(got[0].top_k) == 2
    assert len(list(clf.iter_predict([image] * 5, batch_size=2))) == 5
    x = to_array(np.stack([image[:32, :30].repeat(2, axis=1)[:, :32]] * 3), clf.preprocess)
    assert np.abs(clf.predict_proba_input(x) - torch_clf.predict_proba_input(x)).max() <= 1e-5
    assert clf.predict_proba([]).shape == (0, 2)
    assert imgclf.load(pair.onnx, device="cpu", threads=1).predict_proba(image).shape == (1, 2)
    with pytest.raises(UsageError, match="an .onnx runs on the CPU only"):
        imgclf.load(pair.onnx, device="cuda")
    with pytest.raises(ImageError):
        clf.predict([encoded])


def test_a_plain_onnx_model_is_refused(pair, tmp_path):
    plain = without_metadata(pair.onnx, tmp_path / "plain.onnx")
    with pytest.raises(ModelFileError, match="an ONNX model without imgclf metadata") as info:
        imgclf.load(plain)
    assert info.value.exit_code == 3 and "\n" not in str(info.value)


def test_a_truncated_onnx_is_refused(pair, tmp_path):
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(pair.onnx.read_bytes()[: pair.onnx.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="cannot load ONNX model") as info:
        imgclf.load(truncated)
    assert "\n" not in str(info.value)


def test_a_renamed_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(pickle.dumps(torch.nn.Linear(2, 2)))
    with pytest.raises(ModelFileError, match="looks like a Python pickle"):
        imgclf.load(path)


def _rewrite(src, dst, edit):
    model = onnx.load_model(str(src))
    edit(model)
    dst.write_bytes(model.SerializeToString())
    return dst


def test_metadata_that_does_not_match_the_graph_is_refused(pair, tmp_path):
    import json

    def two_more_classes(model):
        for p in model.metadata_props:
            if p.key == MANIFEST_KEY:
                m = json.loads(p.value)
                m["class_names"] += ["x", "y"]
                p.value = json.dumps(m)

    bad = _rewrite(pair.onnx, tmp_path / "bad.onnx", two_more_classes)
    with pytest.raises(ModelFileError, match="probe 0 must give|does not match its metadata"):
        imgclf.load(bad)


def test_verify_passes_then_catches_modified_weights(pair, tmp_path):
    report = imgclf.verify(pair.onnx)
    assert report.ok, report.checks
    names = [name for name, _, _ in report.checks]
    assert names[0] == "graph" and "probe 3 (synthetic) output" in names

    def scale_first_weight(model):
        t = model.graph.initializer[0]
        arr = onnx.numpy_helper.to_array(t) * np.float32(1.5)
        t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))

    bad = _rewrite(pair.onnx, tmp_path / "tampered.onnx", scale_first_weight)
    report = imgclf.verify(bad)
    failed = [name for name, ok, _ in report.checks if not ok]
    assert "graph" in failed and not report.ok
    info = imgclf.inspect(pair.onnx)
    assert info["onnx"]["parity"]["max_abs_diff"] <= 1e-5
    assert info["integrity"]["tensors_sha256"] == imgclf.inspect(pair.imgclf)["integrity"]["tensors_sha256"]
