"""Every command, in an environment without each optional package: it works, or it says in one line with the
usage exit code which install provides the package. Never "internal error".

The environment is simulated in a child process by an import blocker on ``sys.meta_path`` (the package
seems not installed: importing it raises ``ModuleNotFoundError``, as it would).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_classifier, make_dataset

KERAS_FILE = Path(__file__).parents[1] / "fixtures" / "keras" / "lenet_keras2.h5"  # 3 outputs

CHILD = r"""
import contextlib, io, json, os, sys

BLOCKED = set(sys.argv[1].split(","))

class Blocker:
    # these packages are not installed, as far as this process can tell
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
base, keras_file, work = sys.argv[2:5]

from imgclf.cli.main import main

try:  # serve loads its models, then would listen: stop just before listening
    import imgclf.serving.server as server
    server.serve = lambda app, **kwargs: None
except ImportError:
    pass

def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return [code, err.getvalue()]

m, o, d = f"{base}/m.imgclf", f"{base}/m.onnx", f"{base}/data"
image = f"{d}/testing/ring/ring_000.png"
commands = {
    "train": ["train", "--dataset", d, "--model", f"{work}/t.imgclf", "--epochs", "1", "--size", "16",
              "--arch", "small_cnn", "--arch-arg", "widths=[4,8]", "--plot", f"{work}/plot.png"],
    "predict": ["predict", "--model", m, "--images", image, "--montage", f"{work}/montage.png"],
    "predict .onnx": ["predict", "--model", o, "--images", image, "--montage", f"{work}/montage2.png"],
    "evaluate": ["evaluate", "--model", m, "--dataset", d, "--confusion-plot", f"{work}/confusion.png"],
    "evaluate .onnx": ["evaluate", "--model", o, "--dataset", d],
    "inspect": ["inspect", m],
    "inspect .onnx": ["inspect", o],
    "verify": ["verify", m],
    "verify .onnx": ["verify", o],
    "export": ["export", m, "--format", "onnx", "--out", f"{work}/e.onnx"],
    "serve": ["serve", m],
    "serve .onnx": ["serve", o],
    "import-keras": ["import-keras", keras_file, "--classes", "a,b,c", "--out", f"{work}/k.imgclf"],
    "demo-data": ["demo-data", f"{work}/demo", "--scale", "0.01"],
    "demo": ["demo", "--out", f"{work}/demo-run", "--epochs", "1", "--scale", "0.02"],
    "cache": ["cache", "info"],
}
results = {name: cli(*argv) for name, argv in commands.items()}
print("RESULTS " + json.dumps(results))  # demo's own child processes write to this stdout too
"""

# Commands that must work with the package missing (besides those that never touch it).
MUST_WORK = {
    "torch": ["predict .onnx", "evaluate .onnx", "inspect .onnx", "verify .onnx", "serve .onnx", "demo-data",
              "cache"],
    "onnx": ["train", "predict", "predict .onnx", "evaluate", "evaluate .onnx", "inspect", "verify", "serve"],
    "onnxruntime": ["train", "predict", "evaluate", "inspect", "verify", "serve"],
    "fastapi": ["train", "predict", "predict .onnx", "evaluate", "evaluate .onnx", "export", "import-keras"],
    "uvicorn": ["train", "predict", "predict .onnx", "evaluate", "evaluate .onnx", "export", "import-keras"],
    "h5py": ["train", "predict", "predict .onnx", "evaluate", "evaluate .onnx", "export", "serve"],
    "matplotlib": ["predict", "predict .onnx", "evaluate .onnx", "inspect", "verify", "export", "serve"],
}  # fmt: skip
# The install each missing package's message must name.
INSTALL = {
    "torch": "pip install .",
    "onnx": "pip install '.[onnx]'",
    "onnxruntime": "pip install '.[onnx]'",
    "fastapi": "pip install '.[serve]'",
    "uvicorn": "pip install '.[serve]'",
    "h5py": "pip install '.[keras]'",
    "matplotlib": "pip install matplotlib",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import imgclf
    from imgclf.interop.onnx_export import export_onnx

    base = tmp_path_factory.mktemp("extras")
    make_dataset(base / "data", {"training": 4, "validation": 2, "testing": 2})
    imgclf.save(make_classifier(size=16), base / "m.imgclf")
    export_onnx(base / "m.imgclf", base / "m.onnx", parity_images=None)
    return base


def run_without(package: str, base: Path, work: Path) -> dict[str, list]:
    import imgclf

    src = str(Path(imgclf.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, package, str(base), str(KERAS_FILE), str(work)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))
    return json.loads(line.removeprefix("RESULTS "))


@pytest.mark.parametrize(
    "package",
    ["torch", *(pytest.param(p, marks=pytest.mark.slow) for p in MUST_WORK if p != "torch")],
)
def test_every_command_works_or_names_the_install_without(package, files, tmp_path):
    results = run_without(package, files, tmp_path)
    if package == "torch":  # refused before any work
        assert results["demo"][0] == 2 and not (tmp_path / "demo-run").exists()
    for name, (code, err) in results.items():
        assert "internal error" not in err, (name, err)
        if name in MUST_WORK[package]:
            assert code == 0, (name, err)
        assert code in (0, 2), (name, code, err)
        if code == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("imgclf: error: "), (name, err)
            assert INSTALL[package] in lines[0], (name, err)


def test_a_missing_package_names_its_install_in_one_line():
    from imgclf.errors import missing_package_error

    exc = ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")
    error = missing_package_error(exc, "imgclf export")
    assert error is not None and error.exit_code == 2
    assert str(error) == (
        "imgclf export needs the onnx extra (export), which is not installed; received no module named "
        "'onnxscript'; expected onnxscript installed. Fix: pip install '.[onnx]'"
    )
    # a required package, or a bug in an import, is not dressed up as a missing extra
    assert missing_package_error(ModuleNotFoundError("x", name="numpy"), "imgclf predict") is None
    assert missing_package_error(ValueError("onnx"), "imgclf predict") is None
