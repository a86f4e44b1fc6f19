"""OpenVINO export: fp32 and int8 IR round trips, preprocessing parity, refusals, and use without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import imgclf
from helpers import run_cli

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("openvino")
    fp32, int8 = base / "tiny.xml", base / "tiny.int8.xml"
    code, out32, err = run_cli("export", tiny_model.model_path, "--format", "openvino", "--out", fp32)
    assert code == 0, err
    code, out8, err = run_cli(
        "export",
        tiny_model.model_path,
        "--format",
        "openvino",
        "--quantize",
        "int8",
        "--calibration",
        tiny_model.dataset,
        "--out",
        int8,
    )
    assert code == 0, err
    images = sorted(str(p) for p in (tiny_model.dataset / "testing").rglob("*.png"))
    return tiny_model, fp32, int8, out32, out8, images


def test_fp32_ir_round_trip_answers_like_torch_from_the_same_pixels(exported):
    tiny, fp32, _, out32, _, images = exported
    assert out32.startswith(f"{fp32}\t") and "(tolerance 0.0001, OpenVINO), top-1 identical" in out32
    assert fp32.with_suffix(".bin").exists()
    clf, ref = imgclf.load(fp32), imgclf.load(tiny.model_path)
    assert type(clf).__name__ == "OpenvinoClassifier"
    assert clf.preprocess == ref.preprocess and clf.class_names == ref.class_names
    # The images are PNGs in several modes (grey, palette, alpha): each goes through the one decode path.
    got, want = clf.predict(images, top_k=2), ref.predict(images, top_k=2)
    assert [p.label for p in got] == [p.label for p in want]
    diff = max(
        abs(a.probabilities[k] - v)
        for a, b in zip(got, want, strict=True)
        for k, v in b.probabilities.items()
    )
    assert diff <= 1e-4
    code, text, err = run_cli("verify", fp32)
    assert code == 0 and "ok    weights: the .bin's digest matches the export's" in text, text + err
    assert "OpenVINO on the stored input vs PyTorch at export" in text
    code, text, err = run_cli("inspect", fp32)
    assert code == 0 and "openvino        IR, fp32, OpenVINO" in text, err


def test_int8_ir_round_trip_records_the_gate(exported):
    tiny, _, int8, _, out8, images = exported
    assert "int8: top-1 agreement with fp32 100.00% on 8 held-out images" in out8 and out8.endswith(
        "(OpenVINO)\n"
    )
    info = imgclf.inspect(int8)
    assert info["openvino"]["precision"] == "int8" and info["onnx"]["quantization"]["dtype"] == "int8"
    assert info["openvino"]["gate"]["top1_agreement"] == 1.0 and info["openvino"]["gate"]["test_images"] == 12
    got = imgclf.load(int8).predict_proba(images)
    want = imgclf.load(tiny.model_path).predict_proba(images)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert imgclf.verify(int8).ok


def test_served_and_evaluated_like_an_onnx(exported):
    from imgclf.serving.models import load_served

    tiny, fp32, int8, *_ = exported
    served = load_served("tiny", str(int8))
    assert served.classifier.class_names == ["ring", "square"]
    code, text, err = run_cli("evaluate", "--model", fp32, "--dataset", tiny.dataset)
    assert code == 0 and "accuracy" in text, err


def test_a_changed_bin_fails_verify_and_a_missing_one_fails_load(exported, tmp_path):
    _, fp32, *_ = exported
    xml, weights = tmp_path / "m.xml", tmp_path / "m.bin"
    xml.write_bytes(fp32.read_bytes())
    data = bytearray(fp32.with_suffix(".bin").read_bytes())
    data[-3] ^= 0x40  # inside the last weights: still loads, answers differently
    weights.write_bytes(bytes(data))
    code, text, _ = run_cli("verify", xml)
    assert code == 3 and "FAIL  weights: the .bin differs from the export's" in text
    weights.unlink()
    code, _, err = run_cli("predict", "--model", xml, "--images", tmp_path)
    assert code == 3 and "cannot open OpenVINO weights" in err


def test_a_plain_ir_is_not_an_imgclf_model(tiny_model, tmp_path):
    from imgclf.interop.onnx_export import export_onnx

    export_onnx(tiny_model.model_path, tmp_path / "m.onnx")
    ov.save_model(ov.convert_model(str(tmp_path / "m.onnx")), str(tmp_path / "plain.xml"))
    code, _, err = run_cli("inspect", tmp_path / "plain.xml")
    assert code == 3 and "not an imgclf model file: an OpenVINO model without imgclf metadata" in err


def test_export_refuses_a_name_without_xml_and_a_model_that_fails_the_gate(tiny_model, tmp_path):
    code, _, err = run_cli(
        "export", tiny_model.model_path, "--format", "openvino", "--out", tmp_path / "m.ir"
    )
    assert code == 2 and "an OpenVINO IR is written as NAME.xml" in err
    import torch

    clf = imgclf.load(tiny_model.model_path)
    with torch.no_grad():
        clf.model.head.bias += 1e4  # the huge-activation model of test_onnx_quantize
    imgclf.save(clf, tmp_path / "huge.imgclf")
    code, out, err = run_cli(
        "export", tmp_path / "huge.imgclf", "--format", "openvino", "--quantize", "int8",
        "--calibration", tiny_model.dataset, "--out", tmp_path / "huge.xml",
    )  # fmt: skip
    assert code == 8 and out == "" and "the int8 model disagrees with the fp32 model" in err
    assert not (tmp_path / "huge.xml").exists() and not (tmp_path / "huge.bin").exists()


CHILD = r"""
import contextlib, io, json, sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, BlockTorch())
from imgclf.cli.main import main

def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return [code, out.getvalue(), err.getvalue()]

models, images = sys.argv[1].split(","), sys.argv[2:]
result = {}
for m in models:
    result[m] = [cli("predict", "--model", m, "--images", *images), cli("verify", m), cli("inspect", m)]
result["torch_loaded"] = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(json.dumps(result))
"""


def test_exported_ir_and_int8_onnx_run_without_torch(exported, tmp_path):
    tiny, fp32, int8, _, _, images = exported
    int8_onnx = tmp_path / "tiny.int8.onnx"
    code, _, err = run_cli(
        "export", tiny.model_path, "--quantize", "int8", "--calibration", tiny.dataset, "--out", int8_onnx
    )
    assert code == 0, err
    models = [str(fp32), str(int8), str(int8_onnx)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(imgclf.__file__).parents[1])] + sys.path)}
    env["IMGCLF_PRECISION"] = "auto"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(models), *images[:3]],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result.pop("torch_loaded") == []
    want = [p.label for p in imgclf.load(tiny.model_path).predict(images[:3])]
    for model, (predict, verify, inspect) in result.items():
        assert predict[0] == 0 and predict[2] == "", (model, predict)
        assert [line.split("\t")[1] for line in predict[1].splitlines()] == want, model
        assert verify[0] == 0 and "verified" in verify[1], (model, verify)
        assert inspect[0] == 0 and ("quantization" in inspect[1] or model == str(fp32)), (model, inspect)
