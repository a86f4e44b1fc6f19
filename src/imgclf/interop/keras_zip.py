"""Keras 3's ``.keras`` archive: a zip of ``config.json``, ``metadata.json`` and ``model.weights.h5``.

Every entry is checked before anything is read: at most 64 entries, unique names, no symbolic links,
no absolute paths, ``..``, backslashes or drive letters (nothing is ever extracted, but such an archive
was made to attack someone), no encryption, stored or deflated only, declared sizes within the caps;
members are then read with a cap and must have the declared size.

Usage::

    config, metadata, weights = read_zip("model.keras", data, max_config, max_weights)
"""

from __future__ import annotations

import io
import os
import stat
import zipfile

from imgclf.errors import ModelFileError

MAX_ZIP_ENTRIES = 64


def refused(path: str, problem: str, received: object = None, fix: str | None = None) -> ModelFileError:
    """The one error a broken or hostile Keras file raises (exit code 3)."""
    return ModelFileError(
        f"cannot import {os.path.basename(path)!r}: {problem}",
        received=received,
        expected="a Keras .h5 or .keras model file written by model.save()",
        fix=fix or "save the model again with Keras (model.save('model.keras')) and import that file",
    )


def _safe_member(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return not (name.startswith("/") or "\\" in name or ".." in parts or ":" in name or "\0" in name)


def read_zip(path: str, data: bytes, max_config: int, max_weights: int) -> tuple[bytes, bytes, bytes]:
    """``config.json``, ``metadata.json`` (may be empty) and ``model.weights.h5`` from a .keras zip.

    Raises:
        ModelFileError: Unreadable zip, unsafe or encrypted entries, sizes over the limits (declared or
            actual), missing members.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise refused(path, "not a readable zip archive", str(exc)[:100]) from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise refused(path, "too many zip entries", len(infos))
    if len({i.filename for i in infos}) != len(infos):
        raise refused(path, "zip with duplicate entry names", sorted(i.filename for i in infos)[:5])
    for info in infos:
        if stat.S_ISLNK(info.external_attr >> 16):
            raise refused(path, "zip entry that is a symbolic link", repr(info.filename)[:100])
        if not _safe_member(info.filename):
            raise refused(path, "zip entry with an unsafe name", repr(info.filename)[:100])
        if info.flag_bits & 1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise refused(path, "encrypted or unusually compressed zip entry", info.filename)
        if info.file_size > max_weights:
            raise refused(
                path, "zip entry declares a size over the limit", f"{info.filename}: {info.file_size}"
            )
    names = {i.filename for i in infos}
    if not {"config.json", "model.weights.h5"} <= names:
        raise refused(path, "zip without config.json and model.weights.h5", sorted(names)[:5])

    def member(name: str, cap: int) -> bytes:
        if name not in names:
            return b""
        info = zf.getinfo(name)
        if info.file_size > cap:
            raise refused(path, f"{name} is too large", f"{info.file_size} bytes")
        try:
            with zf.open(info) as f:
                blob = f.read(cap + 1)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError) as exc:
            raise refused(path, f"cannot read {name} from the zip", str(exc)[:100]) from None
        if len(blob) > cap or len(blob) != info.file_size:
            raise refused(path, f"{name} is not the size the zip declares", f"{len(blob)} bytes")
        return blob

    return (
        member("config.json", max_config),
        member("metadata.json", max_config),
        member("model.weights.h5", max_weights),
    )
