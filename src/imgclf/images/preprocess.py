"""The one preprocessing path: any image → uint8 RGB → resized uint8 → float tensor.

Training (before augmentation), evaluation, prediction and every later consumer call these functions
and nothing else, so the tensor a model sees at inference is bitwise the tensor it was evaluated on.

Pipeline (decode rule version ``DECODE_RULE``):

1. **Read**: paths must be regular files no larger than ``MAX_FILE_BYTES``; bytes are used as given.
2. **Decode** with Pillow, restricted to ``ALLOWED_FORMATS`` (PNG, JPEG, BMP, GIF, TIFF, WebP); the
   pixel count from the header is checked against ``MAX_PIXELS`` *before* any pixel is decoded.
   Multi-frame files (GIF, TIFF, WebP) use their first frame only.
3. **Orient**: the EXIF orientation tag (2-8) is applied; unreadable EXIF is ignored with a warning.
4. **Convert to RGB** by one rule: ``1``/``L`` are replicated to three channels; 16-bit (``I;16*``,
   ``I``) keeps the high byte (value >> 8); ``F`` is clipped to 0-255; images with alpha (``RGBA``,
   ``LA``, ``PA``, palette with transparency) are composited on **black**:
   ``round(c * a / 255)``; CMYK, YCbCr, LAB and HSV use Pillow's conversion.
5. **Resize** to ``spec.height`` × ``spec.width`` with Pillow's filter ``spec.interpolation``
   (``bilinear`` is antialiased when shrinking; ``nearest`` matches Keras' ``load_img``).
6. **Scale**: ``(pixel * spec.rescale - spec.mean) / spec.std`` in float32, NCHW.

Steps 1-5 and :func:`to_array` (step 6 in NumPy) need no torch, so an ONNX model runs without it; this
module imports torch only inside :func:`to_tensor` and :func:`preprocess`, whose values are bitwise
those of :func:`to_array` (``tests/interop/test_onnx_runtime.py``).

Usage::

    from imgclf.images.preprocess import preprocess
    x = preprocess(["a.png", "b.jpg"], spec)          # float32 tensor (2, 3, H, W)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from imgclf.config import PreprocessSpec
from imgclf.errors import ImageError, UsageError
from imgclf.images.read import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    check_pixels,
    checked_max_pixels,
    describe_source,
    open_image,
    orientation,
    read_bytes,
    warnings_named,
)
from imgclf.images.rgb import array_to_rgb, to_rgb_image

if TYPE_CHECKING:  # torch is imported where a tensor is made: the NumPy path must work without it
    import torch

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

DECODE_RULE = 1

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def decode(
    source: ImageSource,
    *,
    channel_order: str = "rgb",
    max_pixels: int = MAX_PIXELS,
    draft: int | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Decode any supported source to an oriented (H, W, 3) uint8 RGB array.

    Same arguments and errors as :func:`decode_image`, which returns the RGB PIL image instead.
    """
    return np.asarray(
        decode_image(source, channel_order=channel_order, max_pixels=max_pixels, draft=draft, name=name),
        dtype=np.uint8,
    )


def decode_image(
    source: ImageSource,
    *,
    channel_order: str = "rgb",
    max_pixels: int = MAX_PIXELS,
    draft: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode any supported source to an oriented RGB PIL image (steps 1-4 of the pipeline).

    Args:
        source: A path, encoded bytes, a PIL image or a numpy array (H, W[, C]).
        channel_order: ``rgb`` or ``bgr``; ``bgr`` applies only to numpy arrays (OpenCV's order).
        max_pixels: Reject images with more pixels than this (checked before decoding); at most
            ``MAX_PIXELS``, so a server can lower the cap but not raise it.
        draft: If set, large JPEGs may be decoded at a reduced scale no smaller than this many pixels
            per side (faster, but the pixels differ from a full decode: for thumbnails only, never
            for model inputs).
        name: How to call the source in error messages (default: its path or a short description).

    Raises:
        ImageError: If the source cannot be decoded or breaks a limit.
        UsageError: If ``channel_order`` is invalid or ``bgr`` is used with a non-array source.
    """
    max_pixels = checked_max_pixels(max_pixels)
    if channel_order not in ("rgb", "bgr"):
        raise UsageError(
            "unknown channel_order",
            received=repr(channel_order),
            expected="rgb | bgr",
            fix="use channel_order='bgr' for OpenCV arrays, 'rgb' otherwise",
        )
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            check_pixels(describe_source(source), source.shape[1], source.shape[0], max_pixels)
        return Image.fromarray(array_to_rgb(source, channel_order))
    if channel_order == "bgr":
        raise UsageError(
            "channel_order='bgr' applies to numpy arrays only",
            received=describe_source(source),
            expected="a numpy array",
            fix="drop channel_order for files, bytes and PIL images",
        )
    label = name or describe_source(source)
    with warnings_named(label):
        return _decode_named(source, label, max_pixels, draft)


def _decode_named(source: ImageSource, label: str, max_pixels: int, draft: int | None) -> Image.Image:
    if isinstance(source, Image.Image):
        check_pixels(label, *source.size, max_pixels)
        img = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        img = open_image(bytes(source), label, max_pixels, draft)
    elif isinstance(source, (str, os.PathLike)):
        img = open_image(read_bytes(source), label, max_pixels, draft)
    else:
        raise UsageError(
            "unsupported image source",
            received=label,
            expected="a path, bytes, a PIL image or a numpy array",
            fix="pass one of the supported types",
        )
    try:
        ops = orientation(img, label)
        rgb = to_rgb_image(img)
        del img  # freed before a rotated copy is made (orienting commutes with converting)
        for op in ops:
            rgb = rgb.transpose(op)
        return rgb
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - conversion of untrusted pixels: map to a bad image
        raise ImageError(
            "cannot convert image to RGB",
            received=f"{label} ({type(exc).__name__}: {exc})",
            expected="a convertible image",
            fix="re-export the file as PNG or JPEG",
        ) from None


def resize(rgb: np.ndarray | Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize an (H, W, 3) uint8 array or RGB image to the spec's size with its Pillow filter."""
    img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.ascontiguousarray(rgb))
    if img.size != (spec.width, spec.height):
        img = img.resize((spec.width, spec.height), resample=_FILTERS[spec.interpolation])
    return np.asarray(img, dtype=np.uint8)


def preprocess_uint8(
    source: ImageSource,
    spec: PreprocessSpec,
    *,
    channel_order: str = "rgb",
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Decode, orient, convert and resize one image to a (height, width, 3) uint8 array.

    This is what the decode-once cache stores; :func:`to_tensor` finishes the job. JPEG draft mode is
    not used here: it only applies to encoded sources, so a path and the PIL image or array decoded
    from the same file would get different pixels. ``max_pixels`` lowers the pixel cap (see
    :func:`decode_image`).
    """
    return resize(decode_image(source, channel_order=channel_order, name=name, max_pixels=max_pixels), spec)


def to_tensor(
    batch: np.ndarray | torch.Tensor,
    spec: PreprocessSpec,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Scale a uint8 batch (N, H, W, 3) into the model's float32 input (N, 3, H, W).

    The result is a channels-last strided NCHW tensor (a free view of NHWC data), which convolutions
    run fastest on; its values do not depend on the layout.
    """
    import torch

    if isinstance(batch, np.ndarray) and (not batch.flags.writeable or any(st < 0 for st in batch.strides)):
        batch = batch.copy()  # torch cannot wrap negative strides and warns on read-only memory
    x = torch.as_tensor(batch)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise UsageError(
            "to_tensor needs a uint8 batch shaped (N, H, W, 3)",
            received=f"{tuple(x.shape)} {x.dtype}",
            expected="(N, H, W, 3) uint8",
            fix="use preprocess_uint8 to build the batch",
        )
    if device is not None:
        x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().mul_(spec.rescale)
    if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


def to_array(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Scale a uint8 batch (N, H, W, 3) into the float32 input (N, 3, H, W) with NumPy only.

    The values are bitwise those of :func:`to_tensor` (the same float32 operations in the same order):
    this is the input an ONNX model gets where torch is not installed.

    Raises:
        UsageError: If ``batch`` is not a uint8 array shaped (N, H, W, 3).
    """
    batch = np.asarray(batch)
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise UsageError(
            "to_array needs a uint8 batch shaped (N, H, W, 3)",
            received=f"{batch.shape} {batch.dtype}",
            expected="(N, H, W, 3) uint8",
            fix="use preprocess_uint8 to build the batch",
        )
    x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
    x *= np.float32(spec.rescale)
    if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        x = (x - np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)) / np.asarray(
            spec.std, dtype=np.float32
        ).reshape(1, 3, 1, 1)
    return x


def preprocess(
    sources: ImageSource | Sequence[ImageSource],
    spec: PreprocessSpec,
    *,
    channel_order: str = "rgb",
) -> torch.Tensor:
    """Preprocess one image or a list of images into a float32 batch (N, 3, H, W)."""
    import torch

    if isinstance(sources, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)):
        sources = [sources]
    arrays = [preprocess_uint8(s, spec, channel_order=channel_order) for s in sources]
    if not arrays:
        return torch.empty((0, 3, spec.height, spec.width), dtype=torch.float32)
    return to_tensor(np.stack(arrays), spec)


def is_image_name(path: str | os.PathLike) -> bool:
    """True if the file name has one of the image extensions imgclf scans for."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
