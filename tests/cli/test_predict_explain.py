"""``imgclf predict --explain DIR``: one Grad-CAM overlay per image, the montage shows them, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import run_cli


def test_explain_writes_one_overlay_per_image_and_the_montage_uses_them(tiny_model, tmp_path):
    images = sorted((tiny_model.dataset / "testing").rglob("*.png"))[:3]
    out = tmp_path / "cams"
    montage = tmp_path / "m.png"
    rc, stdout, err = run_cli(
        "predict", "-m", str(tiny_model.model_path), "-i", *map(str, images), "--explain", str(out),
        "--montage", str(montage),
    )  # fmt: skip
    assert rc == 0, err
    assert len(stdout.splitlines()) == 3 and "wrote 3 Grad-CAM overlay(s)" in err
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(p.stem + ".gradcam.png" for p in images)
    for image in images:
        cam = np.asarray(Image.open(out / (image.stem + ".gradcam.png")))
        assert cam.shape == np.asarray(Image.open(image).convert("RGB")).shape
        assert not np.array_equal(cam, np.asarray(Image.open(image).convert("RGB")))
    # the montage's first tile is the first overlay (resized), not the plain image
    rc, _, err = run_cli(
        "predict",
        "-m",
        str(tiny_model.model_path),
        "-i",
        str(images[0]),
        "--montage",
        str(tmp_path / "plain.png"),
    )
    assert rc == 0, err
    assert not np.array_equal(
        np.asarray(Image.open(montage))[:128, :128],
        np.asarray(Image.open(tmp_path / "plain.png"))[:128, :128],
    )


def test_explain_names_same_named_files_apart(tiny_model, tmp_path):
    a = tiny_model.dataset / "testing" / "ring" / "ring_000.png"
    other = tmp_path / "x" / "ring_000.png"
    other.parent.mkdir()
    other.write_bytes((tiny_model.dataset / "testing" / "square" / "square_000.png").read_bytes())
    rc, _, err = run_cli(
        "predict",
        "-m",
        str(tiny_model.model_path),
        "-i",
        str(a),
        str(other),
        "--explain",
        str(tmp_path / "c"),
    )
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ring_000-2.gradcam.png",
        "ring_000.gradcam.png",
    ]


def test_explain_refuses_a_file_as_folder_and_a_sharded_run(tiny_model, tmp_path):
    image = str(next((tiny_model.dataset / "testing").rglob("*.png")))
    target = tmp_path / "f"
    target.write_text("x")
    rc, stdout, err = run_cli(
        "predict", "-m", str(tiny_model.model_path), "-i", image, "--explain", str(target)
    )
    assert rc == 2 and stdout == "" and "--explain names a folder for the overlays" in err
    rc, _, err = run_cli(
        "predict", "-m", str(tiny_model.model_path), "-i", image, "--explain", str(tmp_path / "d"),
        "--shard", "1/2", "-o", str(tmp_path / "p.csv"),
    )  # fmt: skip
    assert rc == 2 and "--explain does not combine with a sharded run" in err


def test_explain_and_tta_refuse_an_onnx_model(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from imgclf.interop.onnx_export import export_onnx

    onnx = tmp_path / "m.onnx"
    export_onnx(tiny_model.model_path, onnx)
    image = str(next((tiny_model.dataset / "testing").rglob("*.png")))
    rc, stdout, err = run_cli("predict", "-m", str(onnx), "-i", image, "--explain", str(tmp_path / "c"))
    assert rc == 2 and stdout == "" and "--explain needs the .imgclf model file" in err
    rc, stdout, err = run_cli("predict", "-m", str(onnx), "-i", image, "--tta")
    assert rc == 2 and stdout == "" and "--tta needs the .imgclf model file" in err
