"""The safetensors container, read strictly with bounded memory; knows nothing about imgclf manifests.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON header + the tensor bytes. Before
allocating anything large this reader checks that the path is a regular file (opened without blocking,
so a FIFO cannot hang it), that ``N`` fits the file and our cap, that the header is UTF-8 JSON with no
duplicate keys and a bounded number of values, that every tensor has a known dtype, a sane name and
shape, and that the tensors tile the data buffer exactly (no gaps, overlaps or trailing bytes). Each
tensor is then read into its own buffer, so a loaded model never keeps the whole file alive. It never
unpickles and never imports anything.

Loading does not call the safetensors library, so no check here repeats one that runs. The library
(``safe_open``) memory-maps the file and accepts duplicate JSON keys, extra keys in a tensor entry,
names such as ``a/../b``, dtypes imgclf does not use (``U16``) and any number of dimensions; what it
refuses (a gap, trailing bytes) it reports without the byte offset or a fix. What this reader adds to the
safetensors rules: the regular-file, file-size and header-size caps (``_open``, ``MAX_HEADER_BYTES``),
naming a foreign file (``_foreign``), strict JSON (:func:`.checks.strict_json`), bounded tensor count,
names, dtypes and dimensions (``_entry``, ``_entries``), booleans that are 0 or 1 (``Container.tensor``)
and a file that changes while read (``_read_data``); the safetensors rules themselves (offsets, sizes,
tiling) are checked in ``_entry`` and ``_entries`` so that the error names the tensor and the byte.

Usage::

    c = read_container("model.imgclf")            # ModelFileError naming the file and the failed check
    c.metadata["imgclf"]; c.tensor("model.head.weight")
"""

from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Any

import torch

from imgclf.errors import ModelFileError
from imgclf.fileio.reading import open_for_reading
from imgclf.modelfile.checks import FIX, invalid, strict_json
from imgclf.modelfile.foreign import HEAD_BYTES, TAIL_BYTES, UNKNOWN, describe

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_FILE_BYTES = 16 * 1024**3
MAX_NAME = 512
MAX_TENSORS = 100_000
MAX_DIMS = 16
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
    """One tensor's header entry; ``begin``/``end`` are offsets into the data buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class Container:
    """A parsed safetensors file: metadata, tensor entries and (if read) each tensor's raw bytes."""

    path: str
    metadata: dict[str, str]
    entries: dict[str, TensorEntry]
    header_bytes: int
    file_bytes: int
    raw: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def raw_bytes(self, name: str) -> memoryview:
        """The named tensor's bytes as stored (for digests)."""
        return memoryview(_bytes_of(self.tensor(name)).numpy()).cast("B")

    def tensor(self, name: str) -> torch.Tensor:
        """The named tensor with its dtype and shape; it owns its buffer (no view of the whole file)."""
        if self.raw is None:
            raise RuntimeError("container was read without its data")
        t = self.raw[name]
        if t.dtype == torch.bool and bool((_bytes_of(t) > 1).any()):
            raise invalid(self.path, f"tensor {name!r} holds booleans other than 0 and 1")
        return t

    def take(self, name: str) -> torch.Tensor:
        """Like :meth:`tensor`, then forget it, so the caller holds the only reference (memory stays ~1x)."""
        t = self.tensor(name)
        del self.raw[name]  # type: ignore[union-attr]
        return t


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous tensor's memory (works for 0-d tensors and bfloat16)."""
    return t.reshape(-1).view(torch.uint8)


def _open(path: str) -> tuple[int, int]:
    """Open ``path`` for reading without blocking and check it is a regular file; return (fd, size)."""
    try:
        fd, st = open_for_reading(path)  # a FIFO is opened without waiting for a writer, then refused
    except OSError as exc:
        raise ModelFileError(
            f"cannot open model file {path!r}",
            received=exc.strerror or str(exc),
            expected="an existing, readable file",
            fix="check the path and the file's permissions",
        ) from None
    try:
        if stat.S_ISDIR(st.st_mode):
            raise invalid(path, "it is a folder", fix="pass the model file itself, e.g. model.imgclf")
        if not stat.S_ISREG(st.st_mode):
            raise invalid(path, "not a regular file (a device, FIFO or socket)", fix="pass a model file")
        if st.st_size > MAX_FILE_BYTES:
            raise invalid(
                path, "file too large", received=f"{st.st_size} bytes", expected=f"<= {MAX_FILE_BYTES}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _foreign(path: str, fh: Any, head: bytes, check: str, fix: str) -> ModelFileError:
    """The error for a header that makes no sense, saying what the file looks like if we can tell."""
    try:
        fh.seek(0)
        start = fh.read(HEAD_BYTES)
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(size - TAIL_BYTES, 0))
        tail = fh.read(TAIL_BYTES)
    except OSError:
        start, tail = head, b""
    # A header that opens like safetensors JSON means a damaged safetensors file, whatever the first bytes
    # spell: a truncated model whose header is 35615 bytes long starts with gzip's magic, 1f 8b.
    guess = UNKNOWN if start[8:10] == b'{"' else describe(start or head, tail, path)
    if guess != UNKNOWN:
        return invalid(
            path,
            f"not an imgclf model file: it looks like {guess}",
            fix="convert it first: imgclf import-keras FILE --classes A,B"
            if "Keras" in guess
            else "pass a model file written by imgclf",
        )
    return invalid(path, check, fix=fix)


def _entry(path: str, name: str, spec: Any) -> TensorEntry:
    if (
        not name
        or len(name) > MAX_NAME
        or ".." in name
        or "/" in name
        or "\\" in name
        or not name.isprintable()
    ):
        raise invalid(
            path,
            f"bad tensor name {name[:80]!r}",
            expected=f"printable names of at most {MAX_NAME} characters without '/' or '..'",
        )
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise invalid(
            path, f"tensor {name!r} has a malformed entry", expected="keys dtype, shape, data_offsets"
        )
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise invalid(
            path, f"tensor {name!r} has unknown dtype {str(dtype)[:20]!r}", expected=", ".join(DTYPES)
        )
    ints = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    if not ints or len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise invalid(
            path,
            f"tensor {name!r} has a bad shape {str(shape)[:60]}",
            expected=f"at most {MAX_DIMS} sizes >= 0",
        )
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise invalid(
            path, f"tensor {name!r} has bad data_offsets {str(offsets)[:60]}", expected="[begin, end]"
        )
    begin, end = offsets
    if begin < 0 or end < begin:
        raise invalid(
            path, f"tensor {name!r} has bad data_offsets [{begin}, {end}]", expected="0 <= begin <= end"
        )
    nbytes = math.prod(shape) * DTYPES[dtype][1]
    if nbytes >= 2**63:
        raise invalid(path, f"tensor {name!r} shape {str(shape)[:60]} overflows (would be {nbytes} bytes)")
    if nbytes != end - begin:
        raise invalid(
            path,
            f"tensor {name!r} size mismatch: shape {shape} x {dtype} needs {nbytes} bytes, "
            f"offsets give {end - begin}",
        )
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def _entries(path: str, header: dict[str, Any], data_len: int) -> dict[str, TensorEntry]:
    if len(header) > MAX_TENSORS:
        raise invalid(path, f"too many tensors ({len(header)} > {MAX_TENSORS})")
    entries = {name: _entry(path, name, spec) for name, spec in header.items() if name != "__metadata__"}
    needed = max((e.end for e in entries.values()), default=0)
    if needed > data_len:
        raise invalid(
            path,
            f"truncated: the tensors need {needed} bytes of data, the file has {data_len}",
            fix="the file is incomplete; copy it again",
        )
    cursor = 0
    # Sorting by (begin, end) puts an empty tensor before a real one at the same offset: empty tensors
    # cover no bytes, so one sharing a boundary is harmless; anywhere else it shows up as an overlap.
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin != cursor:
            what = "overlapping tensors" if entry.begin < cursor else "a gap"
            raise invalid(
                path, f"tensor data has {what} at byte {min(entry.begin, cursor)} (tensor {entry.name!r})"
            )
        cursor = entry.end
    if cursor != data_len:
        raise invalid(
            path,
            f"{data_len - cursor} unexpected byte(s) after the last tensor",
            fix="the file was modified or has something appended; use an intact copy",
        )
    return entries


def _read_data(path: str, fh: Any, entries: dict[str, TensorEntry]) -> dict[str, torch.Tensor]:
    raw: dict[str, torch.Tensor] = {}
    changed = "file changed size while being read"
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        # Allocated with its real dtype: torch kernels run far slower on dtype views of byte buffers.
        t = torch.empty(entry.shape, dtype=DTYPES[entry.dtype][0])
        if t.numel():
            buf = _bytes_of(t).numpy()
            if fh.readinto(memoryview(buf)) != buf.size:
                raise invalid(path, changed, fix="wait until it is fully written")
        raw[entry.name] = t
    if fh.read(1):
        raise invalid(path, changed, fix="wait until it is fully written")
    return raw


def read_container(path: str | os.PathLike, *, with_data: bool = True) -> Container:
    """Parse a safetensors file strictly; read every tensor too unless ``with_data`` is false.

    Raises:
        ModelFileError: Naming the file and the first failed check.
    """
    path = os.fspath(path)
    fd, size = _open(path)
    try:
        with os.fdopen(fd, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise invalid(
                    path,
                    f"too short for a header ({len(head)} bytes)",
                    expected="at least 8 bytes (a safetensors file)",
                )
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise _foreign(
                    path, fh, head, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte cap", FIX
                )
            if n < 2 or 8 + n > size:
                raise _foreign(
                    path,
                    fh,
                    head,
                    f"truncated: header says {n} bytes, file has {size - 8} after the length field",
                    "the file is incomplete; copy it again",
                )
            raw = fh.read(n)
            if len(raw) != n:
                raise invalid(path, f"truncated: header says {n} bytes, read {len(raw)}")
            if raw[:1] != b"{":
                raise _foreign(path, fh, head, "header is not a JSON object (does not start with '{')", FIX)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise invalid(path, "header is not valid UTF-8") from None
            header = strict_json(text, "header", path)  # a JSON object: the text starts with "{"
            meta = header.get("__metadata__", {})
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise invalid(path, "__metadata__ is not a string-to-string mapping")
            entries = _entries(path, header, size - 8 - n)
            data = _read_data(path, fh, entries) if with_data else None
    except OSError as exc:
        raise ModelFileError(
            f"cannot read model file {path!r}",
            received=exc.strerror or str(exc),
            expected="a readable file",
            fix="check the file and the disk",
        ) from None
    return Container(path=path, metadata=meta, entries=entries, header_bytes=n, file_bytes=size, raw=data)
