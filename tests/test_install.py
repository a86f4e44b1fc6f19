"""The two installs of docs/install.md, each into a fresh virtual environment (slow: pip installs).

* the torch-free runtime, ``pip install './runtime[serve]'``: predict, evaluate, serve, inspect and verify
  work on an .onnx, and torch is not installed;
* the full install, ``pip install .``: torch comes with it and ``imgclf train`` works.

Both are built from a copy of the repository's files (the checkout is not written to) and installed with
``-c constraints.txt`` as the README says; pip finds the packages where the machine's pip configuration
points (an index, or local wheel folders).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import make_classifier, make_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
PIP_TIMEOUT = 900


def _run(argv: list, *, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=env,
                          **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A copy of the repository's install files, and both wheels built from it."""
    base = tmp_path_factory.mktemp("install")
    repo = base / "repo"
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / "runtime").mkdir()
    files = ("pyproject.toml", "README.md", "constraints.txt", "runtime/pyproject.toml", "runtime/setup.cfg")
    for name in files:
        shutil.copy(ROOT / name, repo / name)
    wheels = base / "wheels"
    for project in (repo, repo / "runtime"):
        build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w"]
        build.append(wheels)
        out = _run([*build, project], timeout=PIP_TIMEOUT)
        assert out.returncode == 0, out.stderr[-3000:]
    assert not (repo / "src" / "imgclf_runtime.egg-info").exists()  # its build metadata stays in runtime/
    return repo, wheels


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    import imgclf
    from imgclf.interop.onnx_export import export_onnx

    base = tmp_path_factory.mktemp("install_models")
    make_dataset(base / "data", {"training": 4, "validation": 2, "testing": 2})
    imgclf.save(make_classifier(size=16), base / "m.imgclf")
    export_onnx(base / "m.imgclf", base / "m.onnx", parity_images=None)
    return base


def _venv(path: Path, repo: Path, requirement: str) -> Path:
    out = _run([sys.executable, "-m", "venv", path])
    assert out.returncode == 0, out.stderr
    pip = [path / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
           "-c", repo / "constraints.txt", requirement]  # fmt: skip
    out = _run(pip, timeout=PIP_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    return path / "bin"


def _installed(bin_dir: Path) -> dict[str, str]:
    out = _run([bin_dir / "python", "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"])
    return {row["name"].lower(): row["version"] for row in json.loads(out.stdout)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_runtime_install_runs_exported_models_without_torch(built, model_files, tmp_path):
    repo, wheels = built
    wheel = next(wheels.glob("imgclf_runtime-*.whl"))
    bin_dir = _venv(tmp_path / "venv", repo, f"{wheel}[serve]")
    installed = _installed(bin_dir)
    assert "imgclf-runtime" in installed and "onnxruntime" in installed and "fastapi" in installed
    assert "torch" not in installed and "imgclf" not in installed
    cwd = tmp_path  # not the checkout: the installed package answers
    onnx, data = model_files / "m.onnx", model_files / "data"
    image = data / "testing" / "ring" / "ring_000.png"
    imgclf = bin_dir / "imgclf"
    out = _run([imgclf, "predict", "-m", onnx, "-i", image], cwd=cwd)
    assert out.returncode == 0 and out.stdout.startswith(f"{image}\t"), out.stderr
    out = _run([imgclf, "evaluate", "-m", onnx, "-d", data, "--json"], cwd=cwd)
    assert out.returncode == 0 and json.loads(out.stdout)["report"]["ring"]["support"] == 2, out.stderr
    out = _run([imgclf, "inspect", onnx], cwd=cwd)
    assert out.returncode == 0 and "imgclf-onnx" in out.stdout, out.stderr
    out = _run([imgclf, "verify", onnx], cwd=cwd)
    assert out.returncode == 0 and "exactly as when it was exported" in out.stdout, out.stderr
    out = _run([imgclf, "train", "--dataset", data, "--model", tmp_path / "t.imgclf"], cwd=cwd)
    assert out.returncode == 2 and "needs PyTorch" in out.stderr and "pip install ." in out.stderr
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    server = subprocess.Popen([str(imgclf), "serve", str(onnx), "--port", str(port)], cwd=cwd, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline, models = time.monotonic() + 120, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                    models = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert models is not None, server.stderr.read() if server.poll() is not None else "no answer"
        assert models["models"][0]["class_names"] == ["ring", "square"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_full_install_brings_torch_and_trains(built, model_files, tmp_path):
    repo, wheels = built
    wheel = next(wheels.glob("imgclf-*.whl"))
    bin_dir = _venv(tmp_path / "venv", repo, str(wheel))
    installed = _installed(bin_dir)
    assert "imgclf" in installed and "torch" in installed and "matplotlib" in installed
    assert "imgclf-runtime" not in installed
    data = model_files / "data"
    model = tmp_path / "t.imgclf"
    train = ["train", "--dataset", data, "--model", model, "--epochs", "1", "--size", "16",
             "--arch", "small_cnn", "--arch-arg", "widths=[4,8]"]  # fmt: skip
    out = _run([bin_dir / "imgclf", *train], cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run([bin_dir / "imgclf", "predict", "-m", model, "-i", data / "testing"], cwd=tmp_path)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 4, out.stderr
