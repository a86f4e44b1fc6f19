"""import-keras against Keras itself: every committed fixture reproduces Keras' probabilities, and each
conversion pitfall, handled the wrong way, breaks that parity (so the parity test can fail)."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from keras_helpers import KERAS_DIR, TOLERANCE, inputs, max_delta, reference, references, run_import

import imgclf
from helpers import run_cli
from imgclf.errors import ModelFileError, UsageError
from imgclf.interop import keras_config as interop_graph
from imgclf.interop import keras_import
from imgclf.interop.keras_import import import_keras
from imgclf.modelfile import verify
from imgclf.models import keras_graph as model_graph
from imgclf.models import registry

REFS = references()
IDS = [r["model"] for r in REFS]


def _probs(model_name: str, **options: object) -> tuple[np.ndarray, dict]:
    ref = reference(model_name)
    clf = import_keras(KERAS_DIR / ref["model"], ref["classes"], **options).classifier
    return clf.predict_proba(inputs(ref)), ref


def test_fixtures_cover_both_keras_versions_and_layouts() -> None:
    assert {r["keras"][0] for r in REFS} == {"2", "3"}
    assert {r["model"].rsplit(".", 1)[1] for r in REFS} == {"h5", "keras"}


@pytest.mark.parametrize("ref", REFS, ids=IDS)
def test_imported_probabilities_equal_keras(ref: dict) -> None:
    probs, _ = _probs(ref["model"])
    want = np.asarray(ref["probabilities"]["rgb"])
    assert max_delta(probs, ref) <= TOLERANCE
    assert (probs.argmax(1) == want.argmax(1)).all()
    assert want.max() < 0.99  # references away from 0/1: a wrong conversion shows


def test_bgr_and_mean_preprocessing_equal_keras() -> None:
    m = reference("shallownet_keras3.h5")["mean"]
    probs, ref = _probs("shallownet_keras3.h5", channel_order="bgr")
    assert max_delta(probs, ref, "bgr") <= TOLERANCE
    assert max_delta(probs, ref, "rgb") > TOLERANCE  # the channel order matters for this net
    probs, ref = _probs("shallownet_keras3.h5", mean=(m["R"], m["G"], m["B"]))
    assert max_delta(probs, ref, "mean") <= TOLERANCE


def test_cli_import_then_verify_and_predict(tmp_path) -> None:
    ref = reference("resnet_keras3.keras")
    out = tmp_path / "resnet.imgclf"
    code, stdout, stderr = run_import(
        KERAS_DIR / ref["model"], "--classes", ",".join(ref["classes"]), "--out", out
    )
    assert code == 0, stderr
    assert "nearest" in stdout and "flow_from_directory" in stdout and str(out) in stdout
    assert verify(out).ok
    clf = imgclf.load(out)
    assert clf.arch == "keras_graph" and clf.class_names == ref["classes"]
    assert clf.preprocess.interpolation == "nearest"
    assert max_delta(clf.predict_proba(inputs(ref)), ref) <= TOLERANCE
    about = clf.manifest["provenance"]["imported_from"]
    digest = __import__("hashlib").sha256((KERAS_DIR / ref["model"]).read_bytes()).hexdigest()
    assert about == {
        "format": "keras", "file": ref["model"], "sha256": digest, "keras_version": ref["keras"],
        "layout": "keras", "layers": about["layers"],
    }  # fmt: skip
    assert "nearest" in clf.manifest["provenance"]["preprocessing"]
    code, stdout, _ = run_cli("inspect", out)
    assert code == 0
    assert f"imported from   {ref['model']} (Keras {ref['keras']}, keras, sha256:{digest})" in stdout
    assert f'"layers": "<{about["layers"]} layers; --json lists them>"' in stdout
    preds = tmp_path / "preds.jsonl"
    code, _, stderr = run_cli("predict", "--model", out, "--images", *inputs(ref), "--output", preds)
    assert code == 0, stderr
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    got = np.array([[r["probabilities"][c] for c in ref["classes"]] for r in rows])
    assert max_delta(got, ref) <= TOLERANCE


def test_classes_from_a_dataset_folder_in_keras_order(tmp_path) -> None:
    data = tmp_path / "data" / "training"
    for name in ("Unknown", "Parasitized", "Uninfected"):  # created unsorted
        (data / name).mkdir(parents=True)
        (data / name / "a.png").write_bytes((KERAS_DIR / "input0.png").read_bytes())
    out = tmp_path / "m.imgclf"
    code, _, stderr = run_import(
        KERAS_DIR / "lenet_keras2.h5", "--classes-from", tmp_path / "data", "--out", out
    )
    assert code == 0, stderr
    assert imgclf.load(out).class_names == ["Parasitized", "Uninfected", "Unknown"]


def test_mean_json_and_scale_options(tmp_path) -> None:
    ref = reference("shallownet_keras3.h5")
    mean = tmp_path / "mean.json"
    mean.write_text(json.dumps(ref["mean"]))
    out = tmp_path / "m.imgclf"
    code, stdout, stderr = run_import(
        KERAS_DIR / ref["model"], "--classes", "a,b,c", "--mean-json", mean, "--scale", "1/255", "--out", out
    )
    assert code == 0, stderr
    assert max_delta(imgclf.load(out).predict_proba(inputs(ref)), ref, "mean") <= TOLERANCE
    mean.write_text('{"R": 1, "G": 2}')
    code, _, stderr = run_import(
        KERAS_DIR / ref["model"], "--classes", "a,b,c", "--mean-json", mean, "-o", out
    )
    assert code == 2 and "R, G and B" in stderr


def test_wrong_class_count_is_a_usage_error(tmp_path) -> None:
    out = tmp_path / "m.imgclf"
    code, _, stderr = run_import(KERAS_DIR / "lenet_keras2.h5", "--classes", "a,b", "--out", out)
    assert code == 2 and "3 names" in stderr
    assert not out.exists()
    with pytest.raises(UsageError, match="class names do not match"):
        import_keras(KERAS_DIR / "lenet_keras2.h5", ["a", "b", "c", "d"])


@pytest.mark.parametrize("name", ["lenet_keras2.h5", "zoo_keras3.keras"])
def test_loading_a_keras_file_points_to_import_keras(name: str) -> None:
    with pytest.raises(ModelFileError, match="imgclf import-keras"):
        imgclf.load(KERAS_DIR / name)


@pytest.mark.parametrize("argv", [["import-keras", "--help"], ["import-keras", "m.h5"]])
def test_help_and_usage_errors_import_neither_torch_nor_h5py(argv) -> None:
    code = (
        "import sys\n"
        "from imgclf.cli.main import main\n"
        "try:\n"
        f"    print(main({json.dumps(argv)}))\n"
        "except SystemExit as exc:\n"
        "    print(exc.code)\n"
        "print(sorted({'torch', 'h5py'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.split("\n")[-2:] == ["[]", ""]


def test_no_tensorflow_or_keras_is_imported() -> None:
    import_keras(KERAS_DIR / "zoo_keras3.keras", ["a", "b", "c"])
    assert not {"tensorflow", "keras", "tf_keras"} & set(sys.modules)


# --- each pitfall, handled the wrong way, breaks parity with Keras -----------------------------------


def test_pitfall_symmetric_same_padding(monkeypatch) -> None:
    def symmetric(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
        half = ((kernel - 1) * dilation) // 2
        return half, half

    monkeypatch.setattr(model_graph, "same_pads", symmetric)
    probs, ref = _probs("resnet_keras3.keras")
    assert max_delta(probs, ref) > TOLERANCE


def test_pitfall_channels_first_flatten(monkeypatch) -> None:
    original = model_graph.Op.forward

    def chw_flatten(self, *xs):
        return xs[0].flatten(1) if self.kind == "flatten" else original(self, *xs)

    monkeypatch.setattr(model_graph.Op, "forward", chw_flatten)
    probs, ref = _probs("lenet_keras2.h5")  # flattens a 6x6x8 feature map
    assert max_delta(probs, ref) > TOLERANCE


def test_pitfall_default_batchnorm_epsilon(monkeypatch) -> None:
    original = interop_graph._record

    def default_eps(path, layer):
        rec = original(path, layer)
        return {**rec, "eps": 1e-3} if rec["type"] == "batchnorm" else rec  # Keras' default, not 2e-5

    monkeypatch.setattr(interop_graph, "_record", default_eps)
    probs, ref = _probs("resnet_keras2.h5")
    assert max_delta(probs, ref) > TOLERANCE


@pytest.mark.parametrize(
    "name,wrong",
    [
        ("_dense", lambda roles: {**roles, "kernel": roles["kernel"].reshape(roles["kernel"].shape)}),
        ("_conv", lambda roles: {**roles, "kernel": roles["kernel"].transpose(1, 0, 2, 3)}),
    ],
    ids=["dense-not-transposed", "conv-kernel-HW-swapped"],
)
def test_pitfall_kernel_layouts(monkeypatch, name: str, wrong) -> None:
    original = keras_import._CONVERT["dense" if name == "_dense" else "conv2d"]

    def converted(roles):
        out = original(wrong(roles))
        if name == "_dense":  # the Keras (in, out) matrix read as if it were (out, in)
            out["weight"] = roles["kernel"].reshape(out["weight"].shape)
        return out

    monkeypatch.setitem(keras_import._CONVERT, "dense" if name == "_dense" else "conv2d", converted)
    probs, ref = _probs("lenet_keras2.h5")
    assert max_delta(probs, ref) > TOLERANCE


def test_batchnorm_momentum_is_converted_and_optimizer_weights_exist() -> None:
    clf = import_keras(KERAS_DIR / "resnet_keras2.h5", ["a", "b", "c"]).classifier
    bns = [m for m in clf.model.modules() if type(m).__name__.startswith("BatchNorm")]
    assert bns and all(abs(m.momentum - 0.1) < 1e-12 and m.eps == 2e-5 for m in bns)
    with h5py.File(KERAS_DIR / "lenet_keras2.h5", "r") as f:
        assert "optimizer_weights" in f  # present in the fixture, ignored by the import (parity holds)


def test_final_softmax_is_dropped_and_a_kept_one_refused() -> None:
    clf = import_keras(KERAS_DIR / "lenet_keras2.h5", ["a", "b", "c"]).classifier
    layers = clf.arch_args["layers"]
    assert layers[-1]["type"] == "dense" and layers[-1]["activation"] == "linear"
    bad = [*layers[:-1], {**layers[-1], "activation": "softmax"}]
    with pytest.raises(UsageError, match="no softmax"):
        registry.build_meta("keras_graph", 3, (24, 24), {"layers": bad})
