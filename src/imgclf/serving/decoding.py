"""Decoding a request's images off the event loop: a bounded pool, a per-request pixel budget, abandonment.

Decoding is the expensive part of an image request (a small WebP file can declare ~64 million pixels),
so it runs here, in a few threads of its own (Pillow releases the GIL while it decodes and resizes),
and the single inference thread only runs forward passes on model-sized pixels. Every request is held
to a budget of decoded pixels: each image's declared size is read from its header first and the sum
checked before any pixel is decoded. Between images the request's ``cancelled`` event is read, so the
work of a request that timed out or whose client went away stops at the next image. After a large
decode the freed heap is given back to the system (the CLI tunes glibc to keep freed memory, which
suits inference's repeated buffers but would keep a decoded image's hundreds of MB for good).

Usage::

    budget = settings.request_pixels(*served.classifier.preprocess.size)
    decoded = decode_request(served.classifier, [png_bytes, ...], budget, cancelled=event)
    decoded.pixels          # uint8 (n_good, H, W, 3), the model's input size
    decoded.failures        # per input image: None, or the library's error message
"""

from __future__ import annotations

import ctypes
import io
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from imgclf.classifier import Prediction
from imgclf.errors import ImageError
from imgclf.images.png import check_png_chunks
from imgclf.images.preprocess import preprocess_uint8
from imgclf.images.read import ALLOWED_FORMATS, check_pixels, describe_source
from imgclf.serving.inputs import HTTPProblem, problem

# A decode this large is followed by a heap trim. Smaller ones are left to the allocator: trimming
# returns pages the inference thread would fault in again on its next batch.
TRIM_AFTER_PIXELS = 8_000_000


class Abandoned(Exception):
    """The request was cancelled (timed out, client gone) while its images were being decoded."""


@dataclass
class Decoded:
    """A request's images, decoded and resized: ``pixels`` holds the good ones in input order."""

    pixels: np.ndarray
    failures: list[str | None]
    sources: list[str]


def webp_size(data: bytes) -> tuple[int, int] | None:
    """A WebP file's canvas size from its first chunk's header, or None if ``data`` is not such a file.

    Read here because Pillow's WebP opener creates libwebp's animation decoder, which allocates two
    canvas-sized buffers (4 bytes a pixel each) before the size can be checked.
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind, chunk = data[12:16], data[20:30]
    if kind == b"VP8X":  # extended: 24-bit canvas width - 1 and height - 1
        return 1 + int.from_bytes(chunk[4:7], "little"), 1 + int.from_bytes(chunk[7:10], "little")
    if kind == b"VP8L" and chunk[0] == 0x2F:  # lossless: 14-bit width - 1 and height - 1
        bits = int.from_bytes(chunk[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and chunk[3:6] == b"\x9d\x01\x2a":  # lossy key frame: 14-bit width and height
        return int.from_bytes(chunk[6:8], "little") & 0x3FFF, int.from_bytes(chunk[8:10], "little") & 0x3FFF
    return None


def declared_size(data: bytes) -> tuple[int, int] | None:
    """The width and height ``data``'s header declares, without decoding (None: unreadable header)."""
    size = webp_size(data)
    if size is not None:
        return size
    try:
        check_png_chunks(data, "")  # as the decode path does first: Pillow would read such chunks whole
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
                return img.size
    except Exception:  # noqa: BLE001 - untrusted bytes: the decode path words the error
        return None


def over_budget(total: int, budget: int, count: int) -> HTTPProblem:
    """413 for a request whose images declare more pixels than its budget."""
    return problem(
        413,
        "images hold too many pixels for one request",
        received=f"{count} images declaring {total} pixels",
        expected=f"at most {budget} pixels per request (--max-request-megapixels)",
        fix="downscale the images towards the model's input size, or send fewer per request",
    )


def decode_request(clf: Any, images: list[bytes], budget: int, cancelled: threading.Event) -> Decoded:
    """Check ``images`` against ``budget``, then decode and resize each to ``clf``'s input size.

    The budget counts each image's declared width x height; an image the decoder refuses anyway
    (unreadable header, over the per-image cap ``clf.max_pixels``) counts 0 and gets the library's
    error without being decoded.

    Raises:
        HTTPProblem: 413 if the images' declared pixels exceed ``budget`` (nothing decoded).
        Abandoned: If ``cancelled`` is set before the last image.
    """
    sources = [describe_source(data) for data in images]
    failures: list[str | None] = [None] * len(images)
    sizes = [0] * len(images)
    for i, data in enumerate(images):
        size = declared_size(data)
        if size is None:
            continue  # the decode path refuses it with its own message, before any pixel
        try:  # over the per-image cap: refused here, so no decoder allocates anything for it
            check_pixels(sources[i], *size, clf.max_pixels)
        except ImageError as exc:
            failures[i] = str(exc)
            continue
        sizes[i] = size[0] * size[1]
    if sum(sizes) > budget:
        raise over_budget(sum(sizes), budget, len(images))
    spec = clf.preprocess
    arrays = np.empty((len(images), spec.height, spec.width, 3), dtype=np.uint8)
    try:
        for i, data in enumerate(images):
            if cancelled.is_set():
                raise Abandoned()
            if failures[i] is not None:
                continue
            try:
                arrays[i] = preprocess_uint8(data, spec, max_pixels=clf.max_pixels)
            except ImageError as exc:
                failures[i] = str(exc)
    finally:
        if max(sizes, default=0) >= TRIM_AFTER_PIXELS:
            release_memory()
    good = [i for i, f in enumerate(failures) if f is None]
    pixels = arrays if len(good) == len(images) else arrays[good]
    return Decoded(pixels, failures, sources)


def predictions(
    clf: Any, decoded: Decoded, probs: np.ndarray, unlike: np.ndarray | None = None
) -> list[Prediction]:
    """One :class:`Prediction` per input image (all classes in ``top_k``), as ``Classifier.predict``
    with ``errors="return"`` words them: ``probs`` (and the out-of-distribution flags ``unlike``, when
    the model has a threshold) hold the good images' rows in input order."""
    out: list[Prediction] = []
    row = 0
    for source, failure in zip(decoded.sources, decoded.failures, strict=True):
        if failure is not None:
            out.append(Prediction(source, None, -1, float("nan"), error=failure))
            continue
        flag = None if unlike is None else bool(unlike[row])
        out.append(clf.make_prediction(source, probs[row], top_k=clf.num_classes, unlike_training_data=flag))
        row += 1
    return out


def good_rows(decoded: Decoded, start: int, stop: int) -> slice:
    """The rows of ``decoded.pixels`` that hold input images ``start`` to ``stop`` (the good ones)."""
    before = sum(f is None for f in decoded.failures[:start])
    return slice(before, before + sum(f is None for f in decoded.failures[start:stop]))


_libc: Any = None


def release_memory() -> bool:
    """Give the heap's free memory back to the system (glibc's ``malloc_trim``); False where unavailable."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):  # musl or another libc
        return False
    return True
