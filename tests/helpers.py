"""Helpers the tests share: tiny synthetic datasets and recipes, an in-process CLI runner, and model files,
good and deliberately broken, for the model-file tests.

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

import numpy as np
import torch
from PIL import Image
from torch import nn

from imgclf.classifier import Classifier
from imgclf.config import PreprocessSpec
from imgclf.modelfile.digests import canonical_json, manifest_digest, tensors_digest
from imgclf.modelfile.manifest import MANIFEST_KEY
from imgclf.models import registry

SEED_PARAMS_2 = 291_112  # the recipe's model.summary(): seed_resnet's trainable parameters for 2 classes


def run_cli(*args: object) -> tuple[int, str, str]:
    """Run ``imgclf.cli.main.main`` in-process: ``(exit code, stdout, stderr)``.

    ``main`` returns the exit code; argparse's usage errors leave through ``SystemExit``: both normalised.
    """
    import contextlib
    import io

    from imgclf.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def shape_image(kind: str, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A bright square ('square') or a dark-centred ring ('ring') on black, with jitter and noise."""
    h = w = size + int(rng.integers(-6, 7))
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
    r = size * rng.uniform(0.25, 0.35)
    img = np.zeros((h, w, 3), dtype=np.float64)
    if kind == "square":
        mask = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)
        img[mask] = (220, 120, 60)
    else:
        d = np.hypot(yy - cy, xx - cx)
        mask = (d < r) & (d > r * 0.5)
        img[mask] = (60, 120, 220)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


MODES = ["RGB", "RGB", "L", "RGBA", "P", "JPEG"]


def save_image(arr: np.ndarray, path: Path, mode: str) -> Path:
    """Save ``arr`` in one of the formats/modes the decoder must handle."""
    img = Image.fromarray(arr)
    if mode == "JPEG":
        path = path.with_suffix(".jpg")
        img.save(path, quality=92)
        return path
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    img.save(path)
    return path


def make_dataset(root: Path, counts: dict[str, int], *, seed: int = 0, classes=("ring", "square")) -> Path:
    """Write ``root/<split>/<class>/*.png`` with ``counts[split]`` images per class, mixed modes."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for cls in classes:
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                save_image(shape_image(cls, rng), folder / f"{cls}_{i:03d}.png", MODES[i % len(MODES)])
    return root


def tiny_train_config(**changes):
    """A fast recipe for tests: small_cnn at 32x32, 2 epochs, fp32 (also for scoped fixtures)."""
    from imgclf.config import PreprocessSpec, TrainConfig

    cfg = TrainConfig(
        arch="small_cnn",
        arch_args={"widths": [8, 16]},
        epochs=2,
        batch_size=8,
        preprocess=PreprocessSpec(height=32, width=32),
        precision="fp32",
        device="cpu",
        seed=1,
    )
    return cfg.replace(**changes) if changes else cfg


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
