"""Loading a model: ``imgclf.load``, ``verify`` and ``inspect`` for every model file imgclf reads, an
``.imgclf`` (safetensors), an exported ``.onnx`` or an OpenVINO IR ``.xml``.

The kind is told from the file's first bytes, never from its name, so a renamed pickle still gets the
"not an imgclf model file: it looks like a Python pickle" refusal of :mod:`imgclf.modelfile`. ONNX files
go to :mod:`imgclf.interop.onnx_runtime` without importing torch; everything else goes to
:mod:`imgclf.modelfile` (which needs torch).

Usage::

    clf = load("malaria.onnx")          # or "malaria.imgclf": the same predict API
    print(file_kind("malaria.onnx"))    # "onnx"
"""

from __future__ import annotations

import os
import struct
from typing import Any

from imgclf.errors import UsageError
from imgclf.fileio.reading import open_for_reading

HEAD_BYTES = 16


def _head(path: str) -> bytes:
    try:
        fd, _ = open_for_reading(path)
    except OSError:
        return b""  # the loader reports a missing or unreadable file in its own words
    try:
        return os.read(fd, HEAD_BYTES)
    except OSError:
        return b""
    finally:
        os.close(fd)


def looks_onnx(head: bytes) -> bool:
    """True if ``head`` starts like a serialised ONNX ModelProto (field 1, ir_version, then another field).

    :func:`imgclf.modelfile.foreign.describe` applies the same test to word its refusals.
    """
    return (
        len(head) >= 3
        and head[0] == 0x08
        and 3 <= head[1] <= 15
        and head[2] in b"\x12\x1a\x22\x28\x32\x3a\x42"
    )


def looks_safetensors(head: bytes) -> bool:
    """True if ``head`` starts like a safetensors file: a little-endian u64 header length, then ``{``."""
    return len(head) >= 9 and head[8:9] == b"{" and 2 <= struct.unpack_from("<Q", head)[0] < 1 << 40


def looks_openvino(head: bytes) -> bool:
    """True if ``head`` starts like an OpenVINO IR's XML (its loader checks the rest)."""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"<?xml", b"<net"))


def file_kind(path: str | os.PathLike) -> str:
    """``onnx`` for an ONNX protobuf, ``openvino`` for an IR's .xml, ``imgclf`` for anything else (the
    model-file loader judges it)."""
    head = _head(os.fspath(path))
    if looks_openvino(head):
        return "openvino"
    return "onnx" if looks_onnx(head) and not looks_safetensors(head) else "imgclf"


def _modelfile(path: str | os.PathLike) -> Any:
    try:
        from imgclf import modelfile
    except ImportError as exc:
        if exc.name != "torch" and not str(exc.name or "").startswith("torch."):
            raise
        raise UsageError(  # a missing package, not a bad file: the usage exit code, as for every extra
            "cannot read an .imgclf model file without PyTorch",
            received=os.fspath(path),
            expected="PyTorch installed, or an .onnx written by `imgclf export`",
            fix="use the full install (in the imgclf checkout: pip install .), or export the model where "
            "torch is: imgclf export MODEL --format onnx",
        ) from None
    return modelfile


def load(
    path: str | os.PathLike, *, device: Any = "cpu", threads: int | None = None, max_pixels: int | None = None
) -> Any:
    """Load a model file of either kind: a :class:`imgclf.Classifier` (ONNX: an ``OnnxClassifier``).

    Args:
        path: An .imgclf file or an .onnx written by ``imgclf export``.
        device: Where an .imgclf model runs (an .onnx runs on the CPU: ``cpu`` only).
        threads: onnxruntime's intra-op threads for an .onnx (default: its own choice).
        max_pixels: Pixel cap for the images it classifies (default and maximum: the library's cap).

    Raises:
        ModelFileError: If the file is missing, foreign, corrupt or inconsistent.
        UsageError: If ``device`` is not the CPU for an .onnx.
    """
    cap = {} if max_pixels is None else {"max_pixels": max_pixels}
    kind = file_kind(path)
    if kind in ("onnx", "openvino"):
        if str(device) != "cpu":
            raise UsageError(
                f"an {'.onnx' if kind == 'onnx' else 'OpenVINO IR'} runs on the CPU only",
                received=f"device={device!r}",
                expected="device='cpu'",
                fix="load the .imgclf for other devices, or drop device=",
            )
        if kind == "openvino":
            from imgclf.interop.openvino_runtime import load_openvino

            return load_openvino(path, threads=threads, **cap)
        from imgclf.interop.onnx_runtime import load_onnx

        return load_onnx(path, threads=threads, **cap)
    return _modelfile(path).load(path, device=device, **cap)


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """Summarise a model file of either kind (see :func:`imgclf.modelfile.inspect`)."""
    if file_kind(path) == "openvino":
        from imgclf.interop.openvino_runtime import inspect_openvino

        return inspect_openvino(path)
    if file_kind(path) == "onnx":
        from imgclf.interop.onnx_verify import inspect_onnx

        return inspect_onnx(path)
    return _modelfile(path).inspect(path)


def verify(path: str | os.PathLike, **kwargs: Any) -> Any:
    """Re-run a model file's self-check probes; a report with ``checks`` rows and ``ok``."""
    if file_kind(path) == "openvino":
        from imgclf.interop.openvino_runtime import verify_openvino

        return verify_openvino(path)
    if file_kind(path) == "onnx":
        from imgclf.interop.onnx_verify import verify_onnx

        return verify_onnx(path, **kwargs)
    return _modelfile(path).verify(path, **kwargs)
