"""Helpers to build model files, good and deliberately broken, for the model-file tests.

A file is ``u64 N`` + ``N`` bytes of JSON header + data. These helpers split and reassemble files, edit
the manifest or the tensors and (optionally) re-sign the digests, so a test can reach the one check it
is about instead of stopping at the integrity check.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.classifier import Classifier
from imgclf.config import PreprocessSpec
from imgclf.modelfile.digests import canonical_json, manifest_digest, tensors_digest
from imgclf.modelfile.manifest import MANIFEST_KEY
from imgclf.models import registry

CLASSES = ("ring", "square")
DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def make_classifier(
    classes: tuple[str, ...] = CLASSES,
    *,
    arch: str = "small_cnn",
    args: dict[str, Any] | None = None,
    size: int = 16,
    seed: int = 0,
) -> Classifier:
    """A randomly initialised classifier (no training: fast), with non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    args = {"widths": [4, 8]} if args is None and arch == "small_cnn" else dict(args or {})
    model = registry.build(arch, len(classes), (size, size), args)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.num_batches_tracked.fill_(7)
    return Classifier(model, classes, PreprocessSpec(height=size, width=size), arch, args)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """The same names, and bitwise-equal tensors of the same dtype under each."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def flip(blob: bytes, index: int, mask: int = 0x01) -> bytes:
    """``blob`` with the bits of ``mask`` flipped in byte ``index`` (negative counts from the end)."""
    out = bytearray(blob)
    out[index] ^= mask
    return bytes(out)


def flip_file(path: str | os.PathLike, index: int, mask: int = 0x01) -> None:
    """Flip bits of one byte of a file in place (see :func:`flip`)."""
    Path(path).write_bytes(flip(Path(path).read_bytes(), index, mask))


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """(header dict, data bytes) of a well-formed file."""
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join(header: dict[str, Any] | bytes | str, data: bytes = b"", *, length: int | None = None) -> bytes:
    """Assemble a file from a header (dict, or raw JSON text/bytes) and data; ``length`` overrides N."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def manifest_of(blob: bytes) -> dict[str, Any]:
    """The parsed manifest of a file."""
    return json.loads(split(blob)[0]["__metadata__"][MANIFEST_KEY])


def with_manifest(blob: bytes, manifest: dict[str, Any] | str, *, resign: bool = True) -> bytes:
    """Replace the manifest (dict, or raw JSON text); re-sign its digest unless told not to."""
    header, data = split(blob)
    if isinstance(manifest, dict):
        if resign and isinstance(manifest.get("integrity"), dict):
            manifest["integrity"]["manifest_sha256"] = manifest_digest(manifest)
        manifest = canonical_json(manifest)
    header["__metadata__"][MANIFEST_KEY] = manifest
    return join(header, data)


def edit_manifest(blob: bytes, edit: Callable[[dict[str, Any]], Any], *, resign: bool = True) -> bytes:
    """Apply ``edit`` (mutating in place) to the manifest and re-sign it."""
    m = manifest_of(blob)
    edit(m)
    return with_manifest(blob, m, resign=resign)


def tensors_of(blob: bytes) -> dict[str, torch.Tensor]:
    """Every tensor of a well-formed file (read with the reference safetensors library)."""
    from safetensors.torch import load

    return dict(load(blob))


def rebuild(blob: bytes, tensors: dict[str, torch.Tensor], *, resign: bool = True) -> bytes:
    """A file with the same manifest and new ``tensors``, both digests re-signed unless told not to."""
    m = manifest_of(blob)
    if resign:
        items = [
            (
                k,
                DTYPE_NAMES[v.dtype],
                tuple(v.shape),
                v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(),
            )
            for k, v in tensors.items()
        ]
        m["integrity"]["tensors_sha256"] = tensors_digest(items)
        m["integrity"]["manifest_sha256"] = manifest_digest(m)
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata={MANIFEST_KEY: canonical_json(m)})


def edit_tensors(
    blob: bytes, edit: Callable[[dict[str, torch.Tensor]], Any], *, resign: bool = True
) -> bytes:
    """Apply ``edit`` (mutating the dict in place) to the tensors and re-sign."""
    tensors = tensors_of(blob)
    edit(tensors)
    return rebuild(blob, tensors, resign=resign)


def data_offset(blob: bytes) -> int:
    """Where the data buffer starts."""
    return 8 + struct.unpack("<Q", blob[:8])[0]


def manifest_span(blob: bytes) -> tuple[int, int]:
    """Byte range of the manifest's JSON text inside the header (as escaped in the header)."""
    header_end = data_offset(blob)
    start = blob.index(b'"imgclf":"', 8) + len(b'"imgclf":"')
    end = blob.index(b'"', start)
    while blob[end - 1 : end] == b"\\":
        end = blob.index(b'"', end + 1)
    assert end < header_end
    return start, end
