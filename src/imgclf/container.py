"""The safetensors container, read strictly with bounded memory, and a sniffer for foreign files.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON header + the tensor bytes. This
reader checks, before allocating anything large: that the path is a regular file, that ``N`` fits the
file and our cap, that the header is UTF-8 JSON with no duplicate keys, that every tensor has a known
dtype, a sane name and shape, and that the tensors tile the data buffer exactly (no gaps, overlaps or
trailing bytes). It never unpickles and never imports anything.

Usage::

    header, metadata = read_header("model.imgclf")
    tensors = read_tensors("model.imgclf")      # {name: torch.Tensor}
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

import torch

from imgclf.errors import ModelFileError

__all__ = [
    "TensorEntry",
    "Container",
    "read_container",
    "sniff",
    "DTYPES",
    "MAX_HEADER_BYTES",
    "MAX_FILE_BYTES",
    "strict_json",
]

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_FILE_BYTES = 16 * 1024**3
MAX_NAME = 512
MAX_TENSORS = 100_000
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's header entry."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class Container:
    """A parsed safetensors file: its metadata, tensor entries and (optionally) the data buffer."""

    path: str
    metadata: dict[str, str]
    entries: dict[str, TensorEntry]
    header_bytes: int
    data: bytearray | None = None

    def tensor(self, name: str) -> torch.Tensor:
        """The named tensor, sharing memory with the data buffer where alignment allows."""
        entry = self.entries[name]
        dtype, size = DTYPES[entry.dtype]
        count = (entry.end - entry.begin) // size
        if self.data is None:
            raise RuntimeError("container was read without its data")
        if count == 0:
            return torch.empty(entry.shape, dtype=dtype)
        if entry.begin % size:
            raw = torch.frombuffer(
                self.data, dtype=torch.uint8, count=entry.end - entry.begin, offset=entry.begin
            ).clone()
            return raw.view(dtype).reshape(entry.shape)
        return torch.frombuffer(self.data, dtype=dtype, count=count, offset=entry.begin).reshape(entry.shape)


def _fail(
    path: str,
    check: str,
    fix: str = "use a model file written by `imgclf train` or imgclf.save()",
    received: object | None = None,
    expected: object | None = None,
) -> ModelFileError:
    return ModelFileError(
        f"invalid model file {path!r}: {check}", received=received, expected=expected, fix=fix
    )


def strict_json(text: str, what: str, path: str) -> Any:
    """Parse JSON rejecting duplicate keys and NaN/Infinity constants."""

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise _fail(path, f"duplicate key {key[:80]!r} in {what}")
            out[key] = value
        return out

    def no_constants(name: str) -> Any:
        raise _fail(path, f"{what} contains {name}, which is not valid JSON")

    try:
        return json.loads(text, object_pairs_hook=no_dupes, parse_constant=no_constants)
    except ModelFileError:
        raise
    except (ValueError, RecursionError) as exc:
        raise _fail(path, f"{what} is not valid JSON ({str(exc)[:120]})") from None


_MAGIC = [
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .h5 model?)"),
    (b"PK\x03\x04", "a zip archive"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\x89PNG", "a PNG image, not a model"),
    (b"\xff\xd8\xff", "a JPEG image, not a model"),
    (b"GIF8", "a GIF image, not a model"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x7fELF", "an executable (ELF) file"),
    (b"ORT_", "an ONNX Runtime (.ort) model"),
]


def sniff(head: bytes, path: str = "") -> str:
    """Describe what a non-imgclf file looks like from its first bytes (and name)."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            if magic == b"PK\x03\x04":
                if b"data.pkl" in head[:200] or b"/data.pkl" in head or b"archive/" in head[:200]:
                    return "a PyTorch torch.save archive (zip holding a pickle)"
                if b"config.json" in head or b"metadata.json" in head or path.endswith(".keras"):
                    return "a Keras .keras archive (zip)"
                if b".npy" in head[:200]:
                    return "a NumPy .npz archive (zip)"
            return what
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (loading it could run code; imgclf never unpickles)"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive (legacy torch.save?)"
    if path.lower().endswith(".onnx") or (head[:1] == b"\x08" and b"pytorch" in head[:64].lower()):
        return "an ONNX model"
    if head[:1] == b"\x08" and len(head) > 2 and head[2:3] == b"\x12":
        return "an ONNX model (protobuf)"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON or text file"
    return "not a safetensors file"


def _check_regular(path: str) -> int:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ModelFileError(
            f"cannot open model file {path!r}",
            received=exc.strerror or str(exc),
            expected="an existing, readable file",
            fix="check the path",
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, "it is a folder", fix="pass the model file itself, e.g. model.imgclf")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "not a regular file (a device, FIFO or socket)", fix="pass a model file")
    if st.st_size > MAX_FILE_BYTES:
        raise _fail(path, "file too large", received=f"{st.st_size} bytes", expected=f"<= {MAX_FILE_BYTES}")
    return st.st_size


def _entries(path: str, header: dict[str, Any], data_len: int) -> dict[str, TensorEntry]:
    entries = {}
    if len(header) > MAX_TENSORS:
        raise _fail(path, f"too many tensors ({len(header)})")
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if (
            not name
            or len(name) > MAX_NAME
            or ".." in name
            or "/" in name
            or "\\" in name
            or any(not ch.isprintable() for ch in name)
        ):
            raise _fail(
                path, f"bad tensor name {name[:80]!r}", expected="printable names without '/' or '..'"
            )
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
            raise _fail(
                path, f"tensor {name!r} has a malformed entry", expected="keys dtype, shape, data_offsets"
            )
        dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if dtype not in DTYPES:
            raise _fail(
                path, f"tensor {name!r} has unknown dtype {str(dtype)[:20]!r}", expected=", ".join(DTYPES)
            )
        ints = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        if not ints or len(shape) > 16 or any(d < 0 for d in shape):
            raise _fail(path, f"tensor {name!r} has a bad shape {str(shape)[:60]}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise _fail(path, f"tensor {name!r} has bad data_offsets {str(offsets)[:60]}")
        begin, end = offsets
        nbytes = math.prod(shape) * DTYPES[dtype][1]
        if begin < 0 or end < begin or end > data_len:
            raise _fail(
                path,
                f"tensor {name!r} offsets [{begin}, {end}] fall outside the data ({data_len} bytes)",
                fix="the file is truncated or corrupt; use an intact copy",
            )
        if nbytes != end - begin:
            raise _fail(
                path,
                f"tensor {name!r} size mismatch: shape {shape} x {dtype} needs {nbytes} bytes, "
                f"offsets give {end - begin}",
            )
        entries[name] = TensorEntry(name, dtype, tuple(shape), begin, end)
    cursor = 0
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin != cursor:
            what = "overlap" if entry.begin < cursor else "a gap"
            raise _fail(path, f"tensor data has {what} at byte {min(entry.begin, cursor)}")
        cursor = entry.end
    if cursor != data_len:
        raise _fail(
            path,
            f"{data_len - cursor} unexpected byte(s) after the last tensor",
            fix="the file was modified; use an intact copy",
        )
    return entries


def read_container(path: str | os.PathLike, *, with_data: bool = True) -> Container:
    """Parse a safetensors file strictly; read the data buffer too unless ``with_data`` is false.

    Raises:
        ModelFileError: Naming the file and the first failed check.
    """
    path = os.fspath(path)
    size = _check_regular(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _fail(
                    path,
                    f"too short for a header ({len(head)} bytes)",
                    expected="at least 8 bytes (a safetensors file)",
                )
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                guess = sniff(head + fh.read(512), path)
                what = f" — it looks like {guess}" if guess != "not a safetensors file" else ""
                raise _fail(
                    path,
                    f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte cap{what}",
                    fix="pass a model file written by imgclf",
                )
            if n < 2 or 8 + n > size:
                guess = sniff(head + fh.read(512), path)
                if guess != "not a safetensors file":
                    raise _fail(
                        path,
                        f"not an imgclf model file: it looks like {guess}",
                        fix="pass a model file written by imgclf",
                    )
                raise _fail(
                    path,
                    f"truncated: header says {n} bytes, file has {size - 8} after the length field",
                    fix="the file is incomplete; copy it again",
                )
            raw = fh.read(n)
            if len(raw) != n:
                raise _fail(path, f"truncated: header says {n} bytes, read {len(raw)}")
            data_len = size - 8 - n
            data = None
            if with_data:
                data = bytearray(data_len)
                got = fh.readinto(data)
                if got != data_len or fh.read(1):
                    raise _fail(path, "file changed size while being read")
    except OSError as exc:
        raise ModelFileError(
            f"cannot read model file {path!r}",
            received=exc.strerror or str(exc),
            expected="a readable file",
            fix="check the file's permissions",
        ) from None
    if raw[:1] != b"{":
        guess = sniff(head + raw[:512], path)
        raise _fail(path, f"header is not a JSON object ({guess})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(path, "header is not valid UTF-8") from None
    header = strict_json(text, "header", path)
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _fail(path, "__metadata__ is not a string-to-string mapping")
    entries = _entries(path, header, data_len)
    return Container(path=path, metadata=meta, entries=entries, header_bytes=n, data=data)
