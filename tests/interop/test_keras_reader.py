"""import-keras on hostile, broken and unusual files: refused with exit 3 and nothing written; Keras 2's
split attributes and a file built by h5py alone (checked against numpy) are read correctly."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import stat
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from keras_helpers import KERAS_DIR, TOLERANCE, inputs, max_delta, reference, run_import

import imgclf
from imgclf.errors import ImgclfError, ModelFileError
from imgclf.interop.keras_import import import_keras

KERAS3 = KERAS_DIR / "zoo_keras3.keras"
KERAS2 = KERAS_DIR / "lenet_keras2.h5"


def assert_refused(path: Path, *needles: str) -> str:
    """``import-keras path`` exits 3, names the problem, and writes nothing beside it."""
    before = sorted(p.name for p in path.parent.iterdir())
    out = path.parent / "out.imgclf"
    code, stdout, stderr = run_import(path, "--classes", "a,b,c", "--out", out)
    assert code == 3, stderr
    assert stdout == "" and stderr.count("\n") == 1
    for needle in needles:
        assert needle in stderr
    assert sorted(p.name for p in path.parent.iterdir()) == before
    return stderr


def zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def keras3_config_with(tmp_path: Path, change) -> Path:
    members = zip_members(KERAS3)
    config = json.loads(members["config.json"])
    change(config["config"]["layers"])
    members["config.json"] = json.dumps(config).encode()
    return write_zip(tmp_path / "changed.keras", members)


def keras2_config_with(tmp_path: Path, change) -> Path:
    path = Path(shutil.copy(KERAS2, tmp_path / "changed.h5"))
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        change(config["config"]["layers"])
        f.attrs["model_config"] = json.dumps(config)
    return path


def test_truncated_h5_and_zip(tmp_path) -> None:
    for source, keep in ((KERAS2, 0.5), (KERAS2, 0.02), (KERAS3, 0.5)):
        bad = tmp_path / f"cut{keep}{source.suffix}"
        data = source.read_bytes()
        bad.write_bytes(data[: int(len(data) * keep)])
        assert_refused(bad, "cannot import")
        bad.unlink()


def test_zip_with_parent_directory_entry(tmp_path) -> None:
    members = zip_members(KERAS3)
    members["../../evil.txt"] = b"overwrite me"
    assert_refused(write_zip(tmp_path / "evil.keras", members), "unsafe name", "../../evil.txt")
    assert not (tmp_path.parent / "evil.txt").exists()


def _symlink_entry(zf: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, "/etc/passwd")


@pytest.mark.parametrize(
    "add,needle",
    [
        (lambda zf: zf.writestr("/etc/x", b"x"), "unsafe name"),
        (lambda zf: zf.writestr("C:\\x", b"x"), "unsafe name"),
        (_symlink_entry, "symbolic link"),
        (lambda zf: zf.writestr("config.json", b"{}"), "duplicate entry names"),
        (lambda zf: [zf.writestr(f"assets/{i}", b"") for i in range(10_000)], "too many zip entries"),
    ],
    ids=["absolute", "drive", "symlink", "duplicate", "10000-entries"],
)
def test_zip_entries_from_the_catalog(tmp_path, add, needle) -> None:
    path = write_zip(tmp_path / "odd.keras", zip_members(KERAS3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(path, "a") as zf:
            add(zf)
    assert_refused(path, needle)


def _zip_declaring(members: list[tuple[str, bytes, int | None]]) -> bytes:
    """A stored zip whose central directory may declare a zip64 size unlike the member's real size."""
    local, central = b"", b""
    for name, data, declared in members:
        nb, crc = name.encode(), zlib.crc32(data)
        offset = len(local)
        local += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, len(data), len(data), len(nb), 0
        )
        local += nb + data
        extra = struct.pack("<HHQ", 1, 8, declared) if declared else b""
        usize = 0xFFFFFFFF if declared else len(data)
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, len(data), usize, len(nb), len(extra),
            0, 0, 0, 0, offset,
        ) + nb + extra  # fmt: skip
    n = len(members)
    return local + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(local), 0)


def test_zip_declaring_a_10_gb_member(tmp_path) -> None:
    members = zip_members(KERAS3)
    blob = _zip_declaring(
        [
            ("config.json", members["config.json"], None),
            ("model.weights.h5", members["model.weights.h5"], 10 << 30),
        ]
    )
    path = tmp_path / "bomb.keras"
    path.write_bytes(blob)
    assert zipfile.ZipFile(path).getinfo("model.weights.h5").file_size == 10 << 30  # the zip says 10 GiB
    assert_refused(path, "declares a size over the limit")


def test_lambda_layer_is_refused_by_name(tmp_path) -> None:
    lam = {
        "class_name": "Lambda",
        "name": "evil_lambda",
        "config": {"name": "evil_lambda", "function": "AAAA"},
    }
    assert_refused(
        keras3_config_with(tmp_path, lambda layers: layers.insert(2, lam)), "'evil_lambda'", "Lambda"
    )
    (tmp_path / "changed.keras").unlink()
    assert_refused(
        keras2_config_with(tmp_path, lambda layers: layers.insert(2, lam)), "'evil_lambda'", "Lambda"
    )


def test_pickle_renamed_h5_is_never_unpickled(tmp_path) -> None:
    marker = tmp_path.parent / f"{tmp_path.name}-pwned"
    path = tmp_path / "model.h5"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    assert_refused(path, "pickle")
    assert not marker.exists()


def test_h5_without_model_config(tmp_path) -> None:
    path = Path(shutil.copy(KERAS2, tmp_path / "weights.h5"))
    with h5py.File(path, "r+") as f:
        del f.attrs["model_config"]
    assert_refused(path, "no model_config")


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda ls: ls[1]["config"].update(data_format="channels_first"), "channels-first"),
        (lambda ls: ls[1]["config"].update(activation="my_custom_act"), "my_custom_act"),
        (lambda ls: ls[1]["config"].update(activation={"class_name": "Custom", "config": {}}), "activation"),
        (lambda ls: ls[1]["config"].update(groups=2), "groups"),
        (lambda ls: ls[1].update(class_name="Conv2DTranspose"), "Conv2DTranspose"),
        (lambda ls: ls[1].update(class_name="Functional"), "not supported"),
        (lambda ls: ls[1]["config"].update(kernel_size="evil"), "kernel_size"),
        (lambda ls: ls[1]["config"].update(padding="causal"), "cannot be rebuilt"),
        (lambda ls: ls[2]["config"].update(axis=1), "normalises axis"),
        (lambda ls: ls[2]["inbound_nodes"].append(ls[2]["inbound_nodes"][0]), "shared"),
        (lambda ls: ls[2]["inbound_nodes"][0]["args"][0]["config"].update(keras_history=["x", 0, 0]), "'x'"),
        (lambda ls: ls.__setitem__(-1, {**ls[-1], "config": {**ls[-1]["config"], "activation": "sigmoid"}}),
         "not a softmax"),
    ],
    ids=["channels-first", "custom-act", "act-object", "groups", "unknown-layer", "nested-model",
         "bad-kernel", "bad-padding", "bn-axis", "shared-layer", "dangling-input", "sigmoid-head"],
)  # fmt: skip
def test_unsupported_configs_are_refused(tmp_path, change, needle) -> None:
    assert_refused(keras3_config_with(tmp_path, change), needle)


def test_other_backend_and_bad_weights(tmp_path) -> None:
    path = Path(shutil.copy(KERAS2, tmp_path / "theano.h5"))
    with h5py.File(path, "r+") as f:
        f.attrs["backend"] = "theano"
    assert_refused(path, "another Keras backend")
    path.unlink()
    path = Path(shutil.copy(KERAS2, tmp_path / "nan.h5"))
    with h5py.File(path, "r+") as f:
        f["model_weights/dense_2/dense_2/bias:0"][0] = np.nan
    assert_refused(path, "NaN")
    path.unlink()
    path = Path(shutil.copy(KERAS2, tmp_path / "shape.h5"))
    with h5py.File(path, "r+") as f:
        del f["model_weights/dense_2/dense_2/bias:0"]
        f["model_weights/dense_2/dense_2/bias:0"] = np.zeros(5, np.float32)
    assert_refused(path, "bias has shape [5]")
    path.unlink()
    path = Path(shutil.copy(KERAS2, tmp_path / "axes.h5"))
    with h5py.File(path, "r+") as f:
        conv = next(n for n in f["model_weights"].attrs["layer_names"] if n.startswith("conv2d"))
        del f[f"model_weights/{conv}/{conv}/kernel:0"]
        f[f"model_weights/{conv}/{conv}/kernel:0"] = np.zeros((5, 5, 18), np.float32)  # 3 axes, not 4
    assert_refused(path, "weights of the wrong shape")
    path.unlink()
    path = Path(shutil.copy(KERAS2, tmp_path / "missing.h5"))
    with h5py.File(path, "r+") as f:
        del f["model_weights/dense_1/dense_1/kernel:0"]
    assert_refused(path, "cannot read the weights")


def test_weights_are_read_within_a_total_cap(tmp_path, monkeypatch) -> None:
    from imgclf.interop import keras_reader

    monkeypatch.setattr(keras_reader, "MAX_WEIGHT_BYTES", 20_000)  # lenet's dense kernel alone is 18 KiB
    assert_refused(Path(shutil.copy(KERAS2, tmp_path / "big.h5")), "exceed the size limit")


def test_not_a_file_and_missing_file(tmp_path) -> None:
    (tmp_path / "dir.h5").mkdir()
    assert_refused(tmp_path / "dir.h5", "not a regular file")
    os.mkfifo(tmp_path / "fifo.h5")  # no writer: a blocking open would hang
    assert_refused(tmp_path / "fifo.h5", "not a regular file")
    code, _, stderr = run_import("/dev/zero", "--classes", "a,b", "--out", tmp_path / "z.imgclf")
    assert code == 3 and "not a regular file" in stderr
    code, _, stderr = run_import(tmp_path / "missing.h5", "--classes", "a,b", "--out", tmp_path / "o.imgclf")
    assert code == 3 and "cannot open" in stderr


def _split(f: h5py.File, node: str, key: str, parts: int) -> None:
    """Rewrite attribute ``key`` as Keras does when it is large: ``key0``, ``key1`` ... chunks."""
    group = f[node]
    names = [n if isinstance(n, bytes) else n.encode() for n in group.attrs[key]]
    del group.attrs[key]
    for i, chunk in enumerate(np.array_split(np.array(names, dtype="S"), parts)):
        group.attrs[f"{key}{i}"] = chunk


def test_keras2_split_attributes(tmp_path) -> None:
    path = Path(shutil.copy(KERAS2, tmp_path / "split.h5"))
    with h5py.File(path, "r+") as f:
        _split(f, "model_weights", "layer_names", 3)
        _split(f, "model_weights/dense_1", "weight_names", 2)
        assert "layer_names" not in f["model_weights"].attrs
    ref = reference(KERAS2.name)
    probs = import_keras(path, ref["classes"]).classifier.predict_proba(inputs(ref))
    assert max_delta(probs, ref) <= TOLERANCE


def _handmade_keras2(path: Path, kernel: np.ndarray, bias: np.ndarray, kind: str) -> None:
    """A Keras 2 layout written by h5py alone: Input 4x4x3 -> Flatten -> Dense(2, softmax).

    ``kind``: ``sequential``, an old-style Sequential config (no InputLayer; the first layer has
    ``batch_input_shape``), ``sequential-list`` the same as Keras before 2.2 wrote it (the config is
    the list of layers); otherwise a functional one with Keras 2's ``inbound_nodes`` lists.
    """
    flatten = {"class_name": "Flatten", "config": {"name": "flatten_1"}, "name": "flatten_1"}
    dense = {"class_name": "Dense", "config": {"name": "dense_1", "units": 2, "activation": "softmax"},
             "name": "dense_1"}  # fmt: skip
    if kind.startswith("sequential"):
        flatten["config"]["batch_input_shape"] = [None, 4, 4, 3]
        config = {"class_name": "Sequential", "config": {"name": "s", "layers": [flatten, dense]}}
        if kind == "sequential-list":
            config["config"] = [flatten, dense]
        names = [b"flatten_1", b"dense_1"]
    else:
        shape = {"batch_input_shape": [None, 4, 4, 3], "name": "input_1"}
        inp = {"class_name": "InputLayer", "config": shape, "name": "input_1", "inbound_nodes": []}
        flatten["inbound_nodes"] = [[["input_1", 0, 0, {}]]]
        dense["inbound_nodes"] = [[["flatten_1", 0, 0, {}]]]
        config = {"class_name": "Functional", "config": {"name": "m", "layers": [inp, flatten, dense],
                  "input_layers": [["input_1", 0, 0]], "output_layers": [["dense_1", 0, 0]]}}  # fmt: skip
        names = [b"input_1", b"flatten_1", b"dense_1"]
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()  # older Keras 2 wrote bytes
        f.attrs["keras_version"] = b"2.2.4"
        f.attrs["backend"] = b"tensorflow"
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array(names)
        for name in names[:-1]:
            g.create_group(name.decode()).attrs["weight_names"] = np.array([], dtype="S")
        d = g.create_group("dense_1")
        d.attrs["weight_names"] = np.array([b"dense_1/kernel:0", b"dense_1/bias:0"])
        d["dense_1/kernel:0"], d["dense_1/bias:0"] = kernel, bias


@pytest.mark.parametrize("kind", ["functional", "sequential", "sequential-list"])
def test_h5py_built_keras2_file_matches_numpy(tmp_path, kind: str) -> None:
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(0, 0.05, (48, 2)).astype(np.float32), np.array([0.1, -0.2], np.float32)
    path = tmp_path / "handmade.h5"
    _handmade_keras2(path, kernel, bias, kind)
    image = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    logits = (image.astype(np.float32) / 255).reshape(-1) @ kernel + bias  # Keras: flatten H, W, C
    want = np.exp(logits) / np.exp(logits).sum()
    out = tmp_path / "m.imgclf"
    code, stdout, stderr = run_import(path, "--classes", "x,y", "--out", out)
    assert code == 0, stderr
    assert "Keras 2.2.4" in stdout
    got = imgclf.load(out).predict_proba(image)[0]
    assert np.abs(got - want).max() < 1e-6


def test_library_error_type() -> None:
    with pytest.raises(ModelFileError, match="neither an HDF5 file nor a zip"):
        import_keras(KERAS_DIR / "input0.png", ["a", "b"])


def test_zip_missing_members(tmp_path) -> None:
    members = zip_members(KERAS3)
    del members["model.weights.h5"]
    assert_refused(write_zip(tmp_path / "no-weights.keras", members), "config.json and model.weights.h5")


def test_weights_file_that_is_not_hdf5(tmp_path) -> None:
    members = zip_members(KERAS3)
    members["model.weights.h5"] = io.BytesIO(b"not hdf5 at all").getvalue()
    assert_refused(write_zip(tmp_path / "bad-weights.keras", members), "not an HDF5 file")


def _json_paths(obj: object, prefix: tuple = ()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _json_paths(v, (*prefix, i))


def test_mangled_configs_never_cause_an_internal_error(tmp_path) -> None:
    """Random values at random places of a real config: imported, or refused with our errors only."""
    members = zip_members(KERAS_DIR / "zoo_keras3.keras")
    base = json.loads(members["config.json"])
    places = [p for p in _json_paths(base) if p]
    values = [None, 0, -1, 2**40, 1.5, 1e308, "", "same", "relu", [], [1, 2], [None, None], {}, {"a": 1}]
    rng = random.Random(0)
    outcomes = set()
    for _ in range(80):
        config = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            *parents, last = rng.choice(places)
            node = config
            with contextlib.suppress(KeyError, IndexError, TypeError):
                for key in parents:
                    node = node[key]
                node[last] = rng.choice(values)
        path = write_zip(tmp_path / "mangled.keras", {**members, "config.json": json.dumps(config).encode()})
        try:
            import_keras(path, ["a", "b", "c"])
            outcomes.add("imported")
        except ImgclfError as exc:
            outcomes.add(type(exc).__name__)
    assert {"imported", "ModelFileError"} <= outcomes
