"""Read a Keras model file as data: its model config (JSON) and its layers' weight arrays.

Never TensorFlow or Keras, never pickle or eval: a ``.h5`` (Keras 2 / tf.keras and Keras 3's legacy
writer) is opened with h5py, a ``.keras`` (Keras 3) with ``zipfile`` (``config.json``,
``metadata.json``, ``model.weights.h5``), both from one bounded in-memory read, so the digest names
exactly the bytes parsed. The format is told by the first bytes, not the name. Every size is checked
before it is read: the file, each zip member (declared and actual), the config text, each weight
array and their total. Before any attribute or dataset is read, :mod:`imgclf.interop.keras_hdf5`
refuses HDF5 storage that reaches outside the file (external storage, virtual datasets, external and
soft links), unknown filters and declared sizes a small compressed file could balloon into.
Anything unexpected raises :class:`~imgclf.errors.ModelFileError` (exit 3).

Usage::

    src = read_keras("malaria.h5")
    src.config["class_name"], src.keras_version, src.sha256
    arrays = src.weights([(name, class_name, config), ...])   # {layer name: {"kernel": ndarray, ...}}
    src.h5.close()
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf.errors import ModelFileError, UsageError
from imgclf.fileio.reading import open_for_reading
from imgclf.interop.keras_hdf5 import check_storage
from imgclf.interop.keras_zip import read_zip, refused

MAX_FILE_BYTES = 1 << 30
MAX_CONFIG_BYTES = 16 << 20
MAX_WEIGHT_BYTES = 1 << 30  # all weight arrays read, by their declared (uncompressed) size
MAX_LAYER_NAMES = 4096
MAX_ARRAY_DIMS = 4
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
# Keras 3's .keras weights file stores each layer's variables by position, in creation order.
VAR_ROLES = {"Conv2D": ("kernel", "bias"), "Dense": ("kernel", "bias")}


def _read_bounded(path: str) -> bytes:
    try:
        fd, st = open_for_reading(path)
    except OSError as exc:
        raise refused(path, "cannot open the file", exc.strerror or str(exc), "check the path") from None
    try:
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            raise refused(path, "not a regular file within the size limit", f"{st.st_size} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            # One byte past the size it has, not past the cap: read(n) allocates n bytes up front.
            data = f.read(st.st_size + 1)
    finally:
        os.close(fd)
    if len(data) > st.st_size:
        raise refused(path, "file grew while being read", fix="import it once it is complete")
    return data


def _strict_json(path: str, text: bytes | str, what: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate keys")
        return dict(pairs)

    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    if len(text) > MAX_CONFIG_BYTES:
        raise refused(path, f"{what} is too large", f"{len(text)} bytes")
    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise refused(path, f"{what} is not valid JSON", str(exc)[:100]) from None


def _text_attr(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


@dataclass
class KerasSource:
    """A Keras file's content, as data.

    Attributes:
        path: The file read.
        layout: ``"h5"`` (``model_weights`` group) or ``"keras"`` (Keras 3 zip).
        sha256: Digest of the file's bytes.
        keras_version: The writer's Keras version (``None`` if the file does not say).
        config: The model config: ``{"class_name": ..., "config": {...}}``.
        h5: The open h5py file holding the weights.
    """

    path: str
    layout: str
    sha256: str
    keras_version: str | None
    config: dict[str, Any]
    h5: Any
    read_bytes: int = 0

    def weights(self, layers: list[tuple[str, str, dict[str, Any]]]) -> dict[str, dict[str, np.ndarray]]:
        """Weight arrays per layer, by role (``kernel``, ``bias``, ``gamma``, ``beta``, ``moving_mean`` ...).

        Args:
            layers: ``(name, class_name, config)`` of the model's layers in config order.
        """
        try:
            if self.layout == "keras":
                return _weights_keras3(self, layers)
            return _weights_h5(self, {name for name, _, _ in layers})
        except ModelFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - h5py raises many types on a damaged file
            raise refused(self.path, "cannot read the weights", f"{type(exc).__name__}: {exc}") from None


def _array(src: KerasSource, ds: Any, name: str) -> np.ndarray:
    import h5py

    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind != "f" or ds.ndim > MAX_ARRAY_DIMS:
        raise refused(src.path, f"weight {name!r} is not a float array", getattr(ds, "dtype", type(ds)))
    src.read_bytes += ds.size * ds.dtype.itemsize  # declared sizes: a compressed array cannot balloon
    if src.read_bytes > MAX_WEIGHT_BYTES:
        raise refused(src.path, f"the weights up to {name!r} exceed the size limit", src.read_bytes)
    return np.asarray(ds[()], dtype=np.float32)


def _split_attr(src: KerasSource, node: Any, key: str) -> list[str]:
    """An h5 string-list attribute, which Keras splits into ``key0``, ``key1`` ... when it is large."""
    if key in node.attrs:
        parts = [node.attrs[key]]
    else:
        parts, n = [], 0
        while f"{key}{n}" in node.attrs and n < MAX_LAYER_NAMES:
            parts.append(node.attrs[f"{key}{n}"])
            n += 1
    names = [_text_attr(v) for part in parts for v in np.asarray(part).reshape(-1)]
    if len(names) > MAX_LAYER_NAMES or any(v is None for v in names):
        raise refused(src.path, f"attribute {key!r} is not a list of names")
    return names  # type: ignore[return-value]


def _weights_h5(src: KerasSource, wanted: set[str]) -> dict[str, dict[str, np.ndarray]]:
    group = src.h5["model_weights"] if "model_weights" in src.h5 else src.h5
    out: dict[str, dict[str, np.ndarray]] = {}
    for layer in _split_attr(src, group, "layer_names"):
        if layer not in wanted:
            continue
        node = group[layer]
        roles: dict[str, np.ndarray] = {}
        for wname in _split_attr(src, node, "weight_names"):
            role = wname.rsplit("/", 1)[-1].split(":", 1)[0]  # conv2d_1/kernel:0 or seq/conv2d_1/kernel
            if role in roles:
                raise refused(src.path, f"layer {layer!r} has two {role!r} weights")
            roles[role] = _array(src, node[wname], wname)
        out[layer] = roles
    return out


def _snake(class_name: str) -> str:
    """Keras 3's group name for a layer class: ``BatchNormalization`` -> ``batch_normalization``."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _weights_keras3(
    src: KerasSource, layers: list[tuple[str, str, dict[str, Any]]]
) -> dict[str, dict[str, np.ndarray]]:
    root = src.h5["layers"]
    used: dict[str, int] = {}
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, class_name, config in layers:
        key = _snake(class_name)
        used[key] = used.get(key, -1) + 1  # Keras: conv2d, conv2d_1, conv2d_2 ... by order
        group = f"{key}_{used[key]}" if used[key] else key
        if class_name == "BatchNormalization":
            roles = tuple(
                r
                for r, keep in (("gamma", config.get("scale", True)), ("beta", config.get("center", True)))
                if keep
            ) + ("moving_mean", "moving_variance")
        else:
            roles = VAR_ROLES.get(class_name, ())
        if not roles:
            continue
        if group not in root or "vars" not in root[group]:
            raise refused(src.path, f"no weights for layer {name!r} (group {group!r})")
        found = root[group]["vars"]
        arrays = [_array(src, found[str(i)], f"{group}/vars/{i}") for i in range(len(found))]
        if class_name != "BatchNormalization" and not config.get("use_bias", True):
            roles = roles[:1]
        if len(arrays) != len(roles):
            raise refused(src.path, f"layer {name!r} has {len(arrays)} weights, expected {len(roles)}")
        out[name] = dict(zip(roles, arrays, strict=True))
    return out


def _open_h5(path: str, blob: bytes) -> Any:
    try:
        import h5py
    except ImportError:
        raise UsageError(
            "imgclf import-keras needs h5py",
            received="no module h5py",
            expected="h5py installed",
            fix="in the imgclf checkout: pip install '.[keras]'",
        ) from None

    if not blob.startswith(HDF5_MAGIC):
        raise refused(path, "the weights are not an HDF5 file", repr(blob[:8]))
    try:
        h5 = h5py.File(io.BytesIO(blob), "r")
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError and others on truncated files
        raise refused(path, "damaged or truncated HDF5 file", f"{type(exc).__name__}: {exc}"[:150]) from None
    try:
        check_storage(path, h5, len(blob), MAX_WEIGHT_BYTES)
    except ModelFileError:
        h5.close()
        raise
    except Exception as exc:  # noqa: BLE001 - damaged object headers surface while walking them
        h5.close()
        raise refused(path, "damaged HDF5 structure", f"{type(exc).__name__}: {exc}"[:150]) from None
    return h5


def _h5_config(path: str, h5: Any) -> tuple[Any, str | None]:
    """The model config and Keras version from a ``.h5`` file's root attributes."""
    try:
        text = _text_attr(h5.attrs.get("model_config"))
        version = _text_attr(h5.attrs.get("keras_version"))
        backend = _text_attr(h5.attrs.get("backend"))
    except Exception as exc:  # noqa: BLE001 - damaged attribute storage
        raise refused(path, "cannot read the file's attributes", f"{type(exc).__name__}: {exc}") from None
    if text is None:
        raise refused(
            path,
            "no model_config: a weights-only file has no architecture",
            fix="save the whole model (model.save('model.h5'), not save_weights) and import that",
        )
    if backend not in (None, "tensorflow"):
        raise refused(path, "saved with another Keras backend", repr(backend), "save it with TensorFlow")
    return _strict_json(path, text, "model_config"), version


def read_keras(path: str | os.PathLike) -> KerasSource:
    """Read a Keras ``.h5`` or ``.keras`` file (see the module docstring for what is checked).

    Raises:
        ModelFileError: Not a Keras model file, damaged, hostile, or without a model config.
    """
    path = os.fspath(path)
    data = _read_bounded(path)
    digest = hashlib.sha256(data).hexdigest()
    if data.startswith(ZIP_MAGIC):
        config_text, meta_text, blob = read_zip(path, data, MAX_CONFIG_BYTES, MAX_FILE_BYTES)
        meta = _strict_json(path, meta_text, "metadata.json") if meta_text else {}
        version = meta.get("keras_version") if isinstance(meta, dict) else None
        config = _strict_json(path, config_text, "config.json")
        h5, layout = _open_h5(path, blob), "keras"
    elif data.startswith(HDF5_MAGIC):
        h5, layout = _open_h5(path, data), "h5"
        try:
            config, version = _h5_config(path, h5)
        except ModelFileError:
            h5.close()
            raise
    else:
        raise refused(path, "neither an HDF5 file nor a zip archive (a pickle renamed?)", repr(data[:8]))
    if isinstance(config, dict) and isinstance(config.get("config"), list):
        config = {**config, "config": {"layers": config["config"]}}  # Sequential before Keras 2.2
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        h5.close()
        raise refused(path, "the model config is not an object with a config")
    return KerasSource(path, layout, digest, version if isinstance(version, str) else None, config, h5)
