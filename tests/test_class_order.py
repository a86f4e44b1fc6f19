"""Class names whose orders disagree keep every image's label on every path.

The names mix case, an accent and digits: ``sorted`` (code points: what the folder scanner and Keras'
``flow_from_directory`` use) gives ``10, 9, Zebra, apple, Éclair``, while a case-insensitive sort gives
``10, 9, apple, Zebra, Éclair`` and an accent-folding one ``10, 9, apple, Éclair, Zebra``. Each class
is one solid colour, so a few epochs separate them; a change that reorders the saved names (e.g.
``sorted(names, key=str.casefold)``) swaps labels, and every test below names the image it got wrong.

Paths: train → save → load → predict (API), the CLI (``predict``, ``inspect``), the server
(``/v1/predict`` for the .imgclf and its .onnx), the ONNX export, and ``import-keras --classes-from``.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import imgclf
from helpers import run_cli, tiny_train_config
from imgclf.config import PreprocessSpec
from imgclf.data.folders import scan_dataset

sys.path.insert(0, str(Path(__file__).parent / "serving"))  # the server tests' helpers, shared as is
from servehelpers import ServerProcess  # noqa: E402

COLOURS = {  # one solid colour per class, far apart
    "Zebra": (230, 30, 30),
    "apple": (30, 200, 40),
    "Éclair": (40, 50, 230),
    "10": (245, 245, 245),
    "9": (10, 10, 10),
}
ORDER = ["10", "9", "Zebra", "apple", "Éclair"]


def _image(colour: tuple[int, int, int], rng: np.random.Generator, path: Path) -> Path:
    arr = np.clip(np.array(colour) + rng.normal(0, 6, (12, 12, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 5-class solid-colour dataset, a model trained on it, and one unseen query image per class."""
    base = tmp_path_factory.mktemp("class_order")
    rng = np.random.default_rng(0)
    data = base / "data"
    for split, n in (("training", 8), ("validation", 2)):
        for name, colour in COLOURS.items():
            (data / split / name).mkdir(parents=True)
            for i in range(n):
                _image(colour, rng, data / split / name / f"{i}.png")
    queries = base / "queries"
    queries.mkdir()
    # Neutral file names, so no path gives the class away.
    expected = {
        str(_image(c, rng, queries / f"q{i}.png")): name for i, (name, c) in enumerate(COLOURS.items())
    }
    model = base / "colours.imgclf"
    config = tiny_train_config(epochs=8, preprocess=PreprocessSpec(height=16, width=16))
    imgclf.train(data, model, config)
    return {"base": base, "data": data, "queries": queries, "expected": expected, "model": model}


def _labels(paths: list[str], predictions) -> dict[str, str]:
    return {p: r.label for p, r in zip(paths, predictions, strict=True)}


def test_the_orders_really_differ() -> None:
    names = list(COLOURS)
    assert sorted(names) == ORDER
    assert sorted(names, key=str.casefold) == ["10", "9", "apple", "Zebra", "Éclair"]
    fold = sorted(names, key=lambda n: unicodedata.normalize("NFKD", n).encode("ascii", "ignore").lower())
    assert fold == ["10", "9", "apple", "Éclair", "Zebra"]


def test_the_scanner_takes_every_name_in_code_point_order(world) -> None:
    assert scan_dataset(world["data"]).class_names == ORDER


def test_train_save_load_predict_keeps_each_label(world) -> None:
    clf = imgclf.load(world["model"])
    assert clf.class_names == ORDER
    paths = list(world["expected"])
    assert _labels(paths, clf.predict(paths)) == world["expected"]
    probs = clf.predict_proba(paths)
    assert [ORDER[i] for i in probs.argmax(axis=1)] == list(world["expected"].values())


def test_the_cli_keeps_each_label(world) -> None:
    code, out, err = run_cli("predict", "--model", world["model"], "--images", world["queries"])
    assert code == 0, err
    got = {line.split("\t")[0]: line.split("\t")[1] for line in out.splitlines()}
    assert got == world["expected"]
    code, out, err = run_cli("inspect", world["model"], "--json")
    assert code == 0, err
    assert json.loads(out)["class_names"] == ORDER


def test_the_onnx_export_keeps_each_label(world) -> None:
    from imgclf.interop.onnx_export import export_onnx

    onnx_path = world["base"] / "colours.onnx"
    export_onnx(world["model"], onnx_path)
    clf = imgclf.load(onnx_path)
    assert clf.class_names == ORDER
    paths = list(world["expected"])
    assert _labels(paths, clf.predict(paths)) == world["expected"]
    code, out, err = run_cli("predict", "--model", onnx_path, "--images", world["queries"])
    assert code == 0, err
    assert {line.split("\t")[0]: line.split("\t")[1] for line in out.splitlines()} == world["expected"]


@pytest.mark.parametrize("kind", ["imgclf", "onnx"])
def test_the_server_keeps_each_label(world, kind) -> None:
    import httpx

    model = world["model"]
    if kind == "onnx":
        from imgclf.interop.onnx_export import export_onnx

        model = world["base"] / "served.onnx"
        export_onnx(world["model"], model)
    with ServerProcess([model]) as server:
        got = {}
        for path in world["expected"]:
            reply = httpx.post(f"{server.url}/v1/predict", content=Path(path).read_bytes(), timeout=60)
            assert reply.status_code == 200, reply.text
            got[path] = reply.json()["predictions"][0]["label"]
        code, log = server.stop()
    assert code == 0, log
    assert got == world["expected"]


def _keras_colour_model(path: Path, classes: list[str]) -> None:
    """A Keras 2 ``.h5`` (written by h5py): 4x4x3 input -> Flatten -> Dense(softmax), output k = the
    class whose colour is nearest, in Keras' output order ``classes``.

    Dense logit k = -|x - c_k|^2 summed over pixels, up to a term equal for every class:
    2 c_k . x per pixel, minus 16 |c_k|^2 (colours in [0, 1], as after rescale 1/255).
    """
    centres = np.array([COLOURS[name] for name in classes], dtype=np.float32) / 255
    kernel = np.tile(2 * centres.T, (16, 1)) * 10  # rows: Keras' flatten order (h, w, channel)
    bias = -16 * (centres**2).sum(axis=1) * 10
    layers = [
        {"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [],
         "config": {"batch_input_shape": [None, 4, 4, 3], "name": "input_1"}},
        {"class_name": "Flatten", "name": "flatten_1", "inbound_nodes": [[["input_1", 0, 0, {}]]],
         "config": {"name": "flatten_1"}},
        {"class_name": "Dense", "name": "dense_1", "inbound_nodes": [[["flatten_1", 0, 0, {}]]],
         "config": {"name": "dense_1", "units": len(classes), "activation": "softmax"}},
    ]  # fmt: skip
    config = {"class_name": "Functional", "config": {"name": "m", "layers": layers,
              "input_layers": [["input_1", 0, 0]], "output_layers": [["dense_1", 0, 0]]}}  # fmt: skip
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([b"input_1", b"flatten_1", b"dense_1"])
        for name in ("input_1", "flatten_1"):
            g.create_group(name).attrs["weight_names"] = np.array([], dtype="S")
        d = g.create_group("dense_1")
        d.attrs["weight_names"] = np.array([b"dense_1/kernel:0", b"dense_1/bias:0"])
        d["dense_1/kernel:0"], d["dense_1/bias:0"] = kernel.astype(np.float32), bias.astype(np.float32)


def test_a_keras_model_imported_with_classes_from_keeps_each_label(world) -> None:
    """Keras' flow_from_directory numbers classes by ``sorted(os.listdir(folder))``: code points."""
    base = world["base"]
    keras_order = sorted(p.name for p in (world["data"] / "training").iterdir())
    assert keras_order == ORDER
    _keras_colour_model(base / "colours.h5", keras_order)
    out = base / "from_keras.imgclf"
    code, stdout, err = run_cli(
        "import-keras", base / "colours.h5", "--classes-from", world["data"], "--out", out
    )
    assert code == 0, err
    clf = imgclf.load(out)
    assert clf.class_names == ORDER
    paths = list(world["expected"])
    assert _labels(paths, clf.predict(paths)) == world["expected"]
