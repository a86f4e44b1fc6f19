"""import-keras refuses HDF5 storage that reaches outside the model file, before reading any data.

Each hostile kind (external storage, virtual dataset, external link, soft link, a filter outside the
allowed set, a compressed dataset declaring far more than it stores) is crafted with h5py into a real
Keras 2 ``.h5`` and into the ``.h5`` inside a real Keras 3 ``.keras``; the CLI must exit 3 with the
exact message naming the dataset, the Python API must raise it, and the secret file's bytes must never
appear anywhere.
"""

from __future__ import annotations

import shutil
import tracemalloc
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from keras_helpers import KERAS_DIR, TOLERANCE, inputs, max_delta, reference, run_import

from imgclf.errors import ModelFileError
from imgclf.interop.keras_import import import_keras

KERAS2 = KERAS_DIR / "lenet_keras2.h5"
KERAS3 = KERAS_DIR / "zoo_keras3.keras"
# The last dense kernel of each fixture, (16, 3) and (8, 3) float32: a weight the import reads.
TARGET = {"h5": "/model_weights/dense_2/dense_2/kernel:0", "keras": "/layers/dense_1/vars/0"}
SECRET = b"TOP-SECRET-HOST!"  # 16 bytes; as float32 they are finite, so they would import silently


def _secret_file(folder: Path, nbytes: int) -> Path:
    path = folder / "secret.bin"
    path.write_bytes((SECRET * (nbytes // len(SECRET) + 1))[:nbytes])
    return path


def _secret_h5(folder: Path, shape: tuple[int, ...]) -> Path:
    path = folder / "secret.h5"
    raw = _secret_file(folder, int(np.prod(shape)) * 4).read_bytes()
    with h5py.File(path, "w") as f:
        f["data"] = np.frombuffer(raw, dtype="<f4").reshape(shape)
    return path


def _external(g: h5py.Group, key: str, shape: tuple[int, ...], folder: Path) -> None:
    secret = _secret_file(folder, int(np.prod(shape)) * 4)
    g.create_dataset(key, shape, "<f4", external=[(str(secret), 0, int(np.prod(shape)) * 4)])


def _virtual(g: h5py.Group, key: str, shape: tuple[int, ...], folder: Path) -> None:
    layout = h5py.VirtualLayout(shape, "<f4")
    layout[...] = h5py.VirtualSource(str(_secret_h5(folder, shape)), "data", shape)
    g.create_virtual_dataset(key, layout, fillvalue=0)


def _external_link(g: h5py.Group, key: str, shape: tuple[int, ...], folder: Path) -> None:
    g[key] = h5py.ExternalLink(str(_secret_h5(folder, shape)), "/data")


def _soft_link(g: h5py.Group, key: str, shape: tuple[int, ...], folder: Path) -> None:
    # Keras writes none: refused even when, as here, it points inside the file.
    g[key] = h5py.SoftLink(g.name + "/" + key.replace("kernel", "bias"))


def _scaleoffset(g: h5py.Group, key: str, shape: tuple[int, ...], folder: Path) -> None:
    g.create_dataset(key, data=np.full(shape, 0.5, "<f4"), scaleoffset=3)


def _unknown_filter(g: h5py.Group, key: str, shape: tuple[int, ...], folder: Path) -> None:
    # Filter 32004 (LZ4) is not built in: reading would make HDF5 look for a plugin to load.
    ds = g.create_dataset(key, shape, "<f4", chunks=shape, compression=32004, allow_unknown_filter=True)
    ds.id.write_direct_chunk((0,) * len(shape), np.zeros(shape, "<f4").tobytes())


KINDS = {
    "external-storage": (_external, "{name!r} uses HDF5 external storage (its data is read from "
                         "another file)"),
    "virtual-dataset": (_virtual, "{name!r} is an HDF5 virtual dataset (its data lives in other files)"),
    "external-link": (_external_link, "{name!r} is an HDF5 external link (to another file)"),
    "soft-link": (_soft_link, "{name!r} is an HDF5 soft link, not an object of its own"),
    "scaleoffset-filter": (_scaleoffset, "{name!r} uses HDF5 filter 6 (scaleoffset), not one of gzip, "
                           "shuffle, fletcher32, lzf"),
    "unknown-filter": (_unknown_filter, "{name!r} uses HDF5 filter 32004 (), not one of gzip, shuffle, "
                       "fletcher32, lzf"),
}  # fmt: skip


def _edit_weights(h5_path: Path, layout: str, maker, folder: Path) -> None:
    with h5py.File(h5_path, "r+") as f:
        parent, key = TARGET[layout].rsplit("/", 1)
        g = f[parent]
        shape = g[key].shape
        del g[key]
        maker(g, key, shape, folder)


def hostile_file(folder: Path, layout: str, maker) -> Path:
    """A copy of a real Keras fixture whose last dense kernel was rewritten by ``maker``."""
    if layout == "h5":
        path = Path(shutil.copy(KERAS2, folder / "model.h5"))
        _edit_weights(path, layout, maker, folder)
        return path
    with zipfile.ZipFile(KERAS3) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    weights = folder / "weights.h5"
    weights.write_bytes(members["model.weights.h5"])
    _edit_weights(weights, layout, maker, folder)
    members["model.weights.h5"] = weights.read_bytes()
    weights.unlink()
    path = folder / "model.keras"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _problem(layout: str, template: str, name: str | None = None) -> str:
    return f"dataset {template.format(name=name or TARGET[layout])}"


@pytest.mark.parametrize("layout", ["h5", "keras"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_hostile_storage_is_refused_by_the_cli_and_the_api(tmp_path, kind, layout) -> None:
    maker, template = KINDS[kind]
    path = hostile_file(tmp_path, layout, maker)
    # The soft link is a name, not a dataset: its message names the link.
    want = _problem(layout, template).removeprefix("dataset " if kind.endswith("link") else "")
    want = f"cannot import {path.name!r}: {want}"
    out = tmp_path / "out.imgclf"
    code, stdout, stderr = run_import(path, "--classes", "a,b,c", "--out", out)
    assert code == 3, stderr
    assert stdout == "" and stderr.count("\n") == 1
    assert want in stderr
    assert not out.exists()
    with pytest.raises(ModelFileError) as info:
        import_keras(path, ["a", "b", "c"])
    assert info.value.problem == want
    assert SECRET.decode() not in stderr + str(info.value)


def test_the_refusal_comes_before_any_data_is_read(tmp_path, monkeypatch) -> None:
    path = hostile_file(tmp_path, "h5", _external)
    read: list[str] = []

    def spy(self, *args, **kwargs):
        read.append(self.name)
        raise AssertionError("a dataset was read")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    monkeypatch.setattr(h5py.Dataset, "read_direct", spy)
    monkeypatch.setattr(h5py.Dataset, "__array__", spy)
    with pytest.raises(ModelFileError, match="external storage"):
        import_keras(path, ["a", "b", "c"])
    assert read == []


def _gzip_bomb(g: h5py.Group, key: str, shape: tuple[int, ...], folder: Path) -> None:
    """256 MiB declared, a few KiB stored: one written gzip chunk, the rest fill value."""
    rows = (256 << 20) // (4 * shape[1])
    ds = g.create_dataset(key, (rows, shape[1]), "<f4", chunks=(4096, shape[1]), compression="gzip")
    ds[:4096] = 0.0


@pytest.mark.parametrize("layout", ["h5", "keras"])
def test_a_compressed_dataset_is_refused_by_its_declared_size_before_decompression(tmp_path, layout) -> None:
    path = hostile_file(tmp_path, layout, _gzip_bomb)
    assert path.stat().st_size < 1 << 20
    name = TARGET[layout]
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError) as info:
            import_keras(path, ["a", "b", "c"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (
        info.value.problem
        == f"cannot import {path.name!r}: the datasets up to {name!r} exceed the size limit"
    )
    assert peak < 32 << 20  # the 256 MiB array was never allocated


def test_a_legitimately_compressed_file_still_imports(tmp_path) -> None:
    path = Path(shutil.copy(KERAS2, tmp_path / "compressed.h5"))
    with h5py.File(path, "r+") as f:
        names: list[str] = []
        f["model_weights"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        for i, n in enumerate(names):
            data = f["model_weights"][n][()]
            del f["model_weights"][n]
            extra = {"compression": "lzf"} if i % 2 else {"compression": "gzip", "shuffle": True}
            f["model_weights"].create_dataset(n, data=data, fletcher32=True, **extra)
    ref = reference(KERAS2.name)
    probs = import_keras(path, ref["classes"]).classifier.predict_proba(inputs(ref))
    assert max_delta(probs, ref) <= TOLERANCE


def test_variable_length_datasets_are_refused(tmp_path) -> None:
    path = Path(shutil.copy(KERAS2, tmp_path / "strings.h5"))
    with h5py.File(path, "r+") as f:
        f["model_weights/notes"] = np.array(["x" * 10] * 4, dtype=h5py.string_dtype())
    with pytest.raises(ModelFileError) as info:
        import_keras(path, ["a", "b", "c"])
    assert (
        info.value.problem
        == "cannot import 'strings.h5': dataset '/model_weights/notes' holds variable-length data or "
        "references"
    )


def test_a_hard_link_cycle_is_walked_once(tmp_path) -> None:
    path = Path(shutil.copy(KERAS2, tmp_path / "cycle.h5"))
    with h5py.File(path, "r+") as f:
        f["model_weights/loop"] = f["model_weights"]  # a hard link to its own parent
    ref = reference(KERAS2.name)
    probs = import_keras(path, ref["classes"]).classifier.predict_proba(inputs(ref))
    assert max_delta(probs, ref) <= TOLERANCE


def test_a_relative_external_storage_name_is_refused_too(tmp_path, monkeypatch) -> None:
    """A relative external-storage name resolves against the working directory: still refused."""
    monkeypatch.chdir(tmp_path)
    _secret_file(tmp_path, 192)
    path = Path(shutil.copy(KERAS2, tmp_path / "relative.h5"))
    with h5py.File(path, "r+") as f:
        g = f["model_weights/dense_2/dense_2"]
        del g["kernel:0"]
        g.create_dataset("kernel:0", (16, 3), "<f4", external=[("secret.bin", 0, 192)])
    with pytest.raises(ModelFileError, match="external storage") as info:
        import_keras(path, ["a", "b", "c"])
    assert SECRET.decode() not in str(info.value)


def test_oversized_chunks_and_deep_nesting_are_refused(tmp_path) -> None:
    path = Path(shutil.copy(KERAS2, tmp_path / "chunks.h5"))
    with h5py.File(path, "r+") as f:  # 4 bytes declared, but reading one chunk allocates 80 MiB
        f["model_weights"].create_dataset("wide", (1,), "<f4", maxshape=(None,), chunks=(20 << 20,))
    with pytest.raises(ModelFileError) as info:
        import_keras(path, ["a", "b", "c"])
    assert info.value.problem == (
        "cannot import 'chunks.h5': dataset '/model_weights/wide' declares chunks over the size limit"
    )
    path = Path(shutil.copy(KERAS2, tmp_path / "deep.h5"))
    with h5py.File(path, "r+") as f:
        f.create_group("/".join(["d"] * 40))
    with pytest.raises(ModelFileError) as info:
        import_keras(path, ["a", "b", "c"])
    assert info.value.problem == "cannot import 'deep.h5': too many or too deeply nested HDF5 objects"
