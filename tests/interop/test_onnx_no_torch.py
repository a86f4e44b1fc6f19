"""With torch not importable, ``import imgclf``, loading an .onnx, predict, inspect and verify still work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from onnxfiles import export_pair

CHILD = r"""
import contextlib, io, json, sys

class BlockTorch:
    # torch is not installed, as far as this process can tell
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, BlockTorch())
onnx_path, imgclf_path, images, montage = sys.argv[1:5]

import imgclf
clf = imgclf.load(onnx_path)
preds = clf.predict(images.split(","), top_k=2)
from imgclf.cli.main import main

def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return [code, out.getvalue(), err.getvalue()]

result = {
    "labels": [p.label for p in preds],
    "probabilities": [p.probabilities for p in preds],
    "predict": cli("predict", "--model", onnx_path, "--images", *images.split(","), "--montage", montage),
    "inspect": cli("inspect", onnx_path),
    "verify": cli("verify", onnx_path),
    "imgclf_file": cli("predict", "--model", imgclf_path, "--images", images.split(",")[0]),
    "torch_loaded": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
}
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return export_pair(tmp_path_factory.mktemp("onnx_no_torch"), "small_cnn", parity_images=False)


def test_onnx_prediction_inspect_and_verify_work_without_torch(pair, tmp_path):
    import imgclf

    images = pair.paths[:4]
    montage = tmp_path / "montage.png"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(imgclf.__file__).parents[1])] + sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(pair.onnx), str(pair.imgclf), ",".join(images), str(montage)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["torch_loaded"] == []
    want = imgclf.load(pair.imgclf).predict(images, top_k=2)
    assert result["labels"] == [p.label for p in want]
    for got, p in zip(result["probabilities"], want, strict=True):
        assert all(abs(got[k] - v) <= 1e-5 for k, v in p.probabilities.items())
    code, out, err = result["predict"]
    assert code == 0 and len(out.splitlines()) == 4 and montage.stat().st_size > 0, err
    code, out, err = result["inspect"]
    assert code == 0 and "imgclf-onnx" in out, err
    code, out, err = result["verify"]
    assert code == 0 and out.endswith("when it was exported\n"), err
    code, out, err = result["imgclf_file"]  # the .imgclf needs torch: refused in one line, the usage code
    assert code == 2 and out == "" and "cannot read an .imgclf model file without PyTorch" in err


def test_loading_a_model_file_imports_no_onnx_code(pair):
    code = (
        "import sys, imgclf; clf = imgclf.load(sys.argv[1]); clf.predict(sys.argv[2]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'onnxscript') "
        "or m.startswith('imgclf.interop.onnx')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(pair.imgclf), pair.paths[0]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
