"""The command line on an .onnx: export, predict (same answers as the .imgclf), inspect, verify, refusals."""

from __future__ import annotations

import json
import pickle

import pytest
from onnxfiles import demo_images, without_metadata

from helpers import make_classifier, run_cli
from imgclf.cli import export as export_cmd
from imgclf.interop import onnx_export, onnx_parity


def export_cli(*argv: object) -> int:
    """``imgclf export ...`` in-process; stdout/stderr are left to capsys."""
    from imgclf.cli.main import main

    return main(["export", *map(str, argv)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import imgclf

    base = tmp_path_factory.mktemp("onnx_cli")
    images = demo_images(base / "demo")
    model = base / "cells.imgclf"
    imgclf.save(make_classifier(("Parasitized", "Uninfected"), arch="small_cnn", args={}, size=32), model)
    onnx_export.export_onnx(model, base / "cells.onnx")
    return base, model, images


def test_export_writes_one_file_and_one_result_line(files, capsys):
    base, model, images = files
    (base / "cells.onnx").rename(base / "kept.onnx")
    try:
        assert export_cli(model, "--format", "onnx", "--parity-images", images) == 0  # default --out
    finally:
        (base / "kept.onnx").rename(base / "cells.onnx")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"{base / 'cells.onnx'}\t")
    assert "parity max |Δp|" in out and "on 23 inputs" in out and "top-1 identical" in out
    assert sorted(p.name for p in base.iterdir()) == ["cells.imgclf", "cells.onnx", "demo"]
    assert onnx_export.DEFAULT_OPSET == export_cmd.DEFAULT_OPSET


def _predictions(model, images, out):
    code, stdout, _ = run_cli(
        "predict", "--model", model, "--images", images, "--output", out, "--top-k", "2"
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return stdout, {r["path"]: r for r in rows}


def test_predict_from_the_onnx_equals_predict_from_the_model_file(files, tmp_path):
    base, model, images = files
    stdout_t, want = _predictions(model, images, tmp_path / "t.jsonl")
    stdout_o, got = _predictions(base / "cells.onnx", images, tmp_path / "o.jsonl")
    assert got.keys() == want.keys() and len(got) == 12
    for path, row in want.items():
        assert got[path]["label"] == row["label"]
        for name, p in row["probabilities"].items():
            assert abs(got[path]["probabilities"][name] - p) <= 1e-5
    assert [line.split("\t")[:2] for line in stdout_o.splitlines()] == [
        line.split("\t")[:2] for line in stdout_t.splitlines()
    ]


def test_inspect_and_verify_an_onnx(files):
    base, model, _ = files
    code, out, err = run_cli("inspect", base / "cells.onnx")
    assert code == 0 and err == ""
    assert (
        "format          imgclf-onnx version 1" in out and "classes         2: Parasitized, Uninfected" in out
    )
    assert "parity          max |Δp|" in out and "opset 18" in out
    code, out, _ = run_cli("inspect", base / "cells.onnx", "--json")
    info = json.loads(out)
    assert code == 0 and info["onnx"]["opset"] == 18 and info["class_names"] == ["Parasitized", "Uninfected"]
    code, out, _ = run_cli("verify", base / "cells.onnx")
    assert code == 0 and out.splitlines()[-1] == "verified: the model behaves exactly as when it was exported"
    assert all(line.startswith("ok") for line in out.splitlines()[:-1])


def test_foreign_onnx_files_are_refused_with_one_line_and_exit_3(files, tmp_path):
    base, model, images = files
    plain = without_metadata(base / "cells.onnx", tmp_path / "plain.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes((base / "cells.onnx").read_bytes()[:5000])
    pickled = tmp_path / "pickled.onnx"
    pickled.write_bytes(pickle.dumps({"state_dict": [0.5] * 10}))
    for path, message in (
        (plain, "an ONNX model without imgclf metadata"),
        (cut, "cannot load ONNX model"),
        (pickled, "looks like a Python pickle"),
    ):
        for argv in (("predict", "--model", path, "--images", images), ("inspect", path), ("verify", path)):
            code, out, err = run_cli(*argv)
            assert (code, out) == (3, ""), (argv, err)
            assert err.count("\n") == 1 and message in err, (argv, err)


def test_a_failed_gate_is_export_failed_and_leaves_no_file(files, tmp_path, monkeypatch):
    _, model, _ = files
    monkeypatch.setattr(onnx_parity, "run_session", lambda session, x: x[:, 0, :2, 0] * 0 + 0.5)
    code, out, err = run_cli("export", model, "--out", tmp_path / "m.onnx")
    assert (code, out) == (8, "") and list(tmp_path.iterdir()) == []
    assert err.count("\n") == 1 and "imgclf: error: export failed: the ONNX model disagrees" in err


def test_export_usage_errors_are_one_line_exit_2(files, tmp_path):
    _, model, _ = files
    for argv in (("--opset", "99"), ("--format", "tflite"), ("--exporter", "tf")):
        code, out, err = run_cli("export", model, "--out", tmp_path / "m.onnx", *argv)
        assert (code, out) == (2, "") and err.count("\n") == 1, (argv, err)
    assert list(tmp_path.iterdir()) == []
