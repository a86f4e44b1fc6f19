"""Edges of an exported .onnx: bounded class names, the graph's names must match its metadata, no absolute
path of the exporting machine inside the file, and nothing from onnxruntime on stderr."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnxfiles import export_pair

import imgclf
from helpers import run_cli
from imgclf.config import PreprocessSpec
from imgclf.errors import ModelFileError
from imgclf.interop.onnx_meta import MANIFEST_KEY
from imgclf.interop.onnx_parity import gate_inputs


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return export_pair(tmp_path_factory.mktemp("onnx_edges"), "small_cnn")


def _with_manifest(src: Path, dst: Path, edit) -> Path:
    model = onnx.load_model(str(src))
    for p in model.metadata_props:
        if p.key == MANIFEST_KEY:
            m = json.loads(p.value)
            edit(m)
            p.value = json.dumps(m)
    dst.write_bytes(model.SerializeToString())
    return dst


def _refused_everywhere(path: Path, images: Path, problem: str) -> None:
    """The API's load raises ``problem``; predict, inspect and verify exit 3 with it on one line."""
    with pytest.raises(ModelFileError) as info:
        imgclf.load(path)
    assert info.value.problem == problem
    for argv in (("predict", "--model", path, "--images", images), ("inspect", path), ("verify", path)):
        code, out, err = run_cli(*argv)
        assert (code, out) == (3, ""), (argv, err)
        assert err.count("\n") == 1 and problem in err, (argv, err)


BAD = "invalid model file {path!r}: bad imgclf ONNX metadata: "


@pytest.mark.parametrize(
    "edit,problem",
    [
        (
            lambda m: m["class_names"].__setitem__(1, "x" * (10 << 20)),
            "class_names[1] must be a non-empty string of at most 1000 characters without NUL "
            "(got 10485760 characters)",
        ),
        (
            lambda m: m["class_names"].__setitem__(0, "a\x00b"),
            "class_names[0] must be a non-empty string of at most 1000 characters without NUL "
            "(got 3 characters)",
        ),
        (
            lambda m: m.__setitem__("class_names", [f"c{i}" for i in range(100_001)]),
            "class_names must be a list of 2 to 100000 names (got 100001)",
        ),
        (
            lambda m: m.__setitem__("class_names", ["only"]),
            "class_names must be a list of 2 to 100000 names (got 1)",
        ),
        (lambda m: m.__setitem__("class_names", ["a", "a"]), "class_names must be distinct"),
    ],
    ids=["10MB-name", "NUL", "too-many", "one", "duplicates"],
)
def test_class_names_are_bounded(pair, tmp_path, edit, problem) -> None:
    path = _with_manifest(pair.onnx, tmp_path / "names.onnx", edit)
    _refused_everywhere(path, pair.images, BAD.format(path=str(path)) + problem)


def test_metadata_naming_another_output_is_refused_even_by_verify(pair, tmp_path) -> None:
    path = _with_manifest(pair.onnx, tmp_path / "meta.onnx", lambda m: m["graph"].update(output="logits"))
    problem = (
        "graph must name input 'input' and output 'probabilities' "
        "(got {'input': 'input', 'output': 'logits'})"
    )
    _refused_everywhere(path, pair.images, BAD.format(path=str(path)) + problem)


def test_a_graph_whose_output_was_renamed_is_refused_even_by_verify(pair, tmp_path) -> None:
    """The graph digest in the metadata is recomputed too: only the name check can tell."""
    model = onnx.load_model(str(pair.onnx))
    for node in model.graph.node:
        node.output[:] = ["logits" if o == "probabilities" else o for o in node.output]
    model.graph.output[0].name = "logits"
    digest = hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()
    path = tmp_path / "renamed.onnx"
    path.write_bytes(model.SerializeToString())
    path = _with_manifest(path, path, lambda m: m.__setitem__("graph_sha256", digest))
    problem = (
        "invalid imgclf ONNX file: the graph's output is named 'logits', its metadata says 'probabilities'"
    )
    _refused_everywhere(path, pair.images, problem)


def test_the_parity_images_are_named_relative_to_their_folder(pair) -> None:
    spec = PreprocessSpec(height=32, width=32)
    _, names = gate_inputs([], [], spec, pair.images)
    users = [n for n in names if n.startswith("parity image ")]
    assert len(users) == len(pair.paths)
    assert all(str(pair.images) not in n and not os.path.isabs(n.split(" ", 2)[2]) for n in users)
    assert sorted(n.removeprefix("parity image ") for n in users) == sorted(
        os.path.relpath(p, pair.images) for p in pair.paths
    )


def test_the_exported_file_holds_no_path_of_the_exporting_machine(pair) -> None:
    data = pair.onnx.read_bytes()
    assert str(pair.images.parent).encode() not in data
    assert os.path.expanduser("~").encode() + b"/" not in data


def test_onnxruntime_start_up_lines_go_to_logging_not_stderr(tmp_path, monkeypatch, capfd, caplog) -> None:
    """onnxruntime's native start-up warning (here a stand-in module) never reaches file descriptor 2."""
    from imgclf.interop.onnx_runtime import import_onnxruntime

    fake = tmp_path / "onnxruntime"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os\n"
        "os.write(2, b'\\x1b[0;93m2026-12-06 [W:onnxruntime:Default, device_discovery.cc:164 "
        "DiscoverDevicesForPlatform] GPU device discovery failed\\x1b[m\\n')\n"
        "levels = []\n"
        "def set_default_logger_severity(level):\n"
        "    levels.append(level)\n"
    )
    monkeypatch.delitem(sys.modules, "onnxruntime")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.DEBUG, logger="imgclf.onnx"):
        ort = import_onnxruntime()
        os.write(2, b"after\n")  # descriptor 2 is back where it was
    out, err = capfd.readouterr()
    assert ort.levels == [3]
    assert (out, err) == ("", "after\n")
    assert caplog.messages == [
        "onnxruntime: 2026-12-06 [W:onnxruntime:Default, device_discovery.cc:164 DiscoverDevicesForPlatform] "
        "GPU device discovery failed"
    ]


def test_predict_on_an_onnx_writes_nothing_to_stderr(pair) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgclf",
            "predict",
            "--model",
            str(pair.onnx),
            "--images",
            str(pair.paths[0]),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.count("\n") >= 1
