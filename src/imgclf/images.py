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

Usage::

    from imgclf.images import preprocess
    x = preprocess(["a.png", "b.jpg"], spec)          # float32 tensor (2, 3, H, W)
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from imgclf.config import PreprocessSpec
from imgclf.errors import ImageError, UsageError

__all__ = [
    "ImageSource",
    "ALLOWED_FORMATS",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "DECODE_RULE",
    "describe_source",
    "read_bytes",
    "decode",
    "decode_image",
    "resize",
    "preprocess_uint8",
    "to_tensor",
    "preprocess",
]

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
MAX_PIXELS = 64_000_000
MAX_FILE_BYTES = 256 * 1024 * 1024
DECODE_RULE = 1

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_ORIENT = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def describe_source(source: object) -> str:
    """Short human description of an image source, for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array shape={tuple(source.shape)} dtype={source.dtype}>"
    if isinstance(source, Image.Image):
        return f"<PIL image mode={source.mode} size={source.size}>"
    return f"<{type(source).__name__}>"


def read_bytes(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read an image file's bytes after checking it is a regular file within the size cap.

    The file is opened once, non-blocking (a FIFO never hangs the caller), and checked with
    ``fstat`` on that descriptor, so what is checked is what is read.

    Raises:
        ImageError: If the path is missing, not a regular file, unreadable or too large.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        denied = isinstance(exc, PermissionError)
        raise ImageError(
            "cannot read image" if denied else "cannot open image",
            received=f"{name} ({exc.strerror or exc})",
            expected="a readable file" if denied else "an existing, readable image file",
            fix="check the file's permissions" if denied else "check the path",
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(
                "not a regular file",
                received=name,
                expected="an image file",
                fix="pass image files or folders of them",
            )
        if st.st_size > max_bytes:
            raise _too_large(f"{name} ({st.st_size} bytes)", max_bytes)
        # Read to the end (a file that grew since fstat is caught by the cap, never truncated).
        parts, size = [], 0
        while size <= max_bytes:
            part = os.read(fd, max(st.st_size + 1 - size, 1 << 16))
            if not part:
                break
            parts.append(part)
            size += len(part)
    except OSError as exc:
        raise ImageError(
            "cannot read image",
            received=f"{name} ({exc.strerror or exc})",
            expected="a readable file",
            fix="check the file's permissions",
        ) from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise _too_large(f"{name} (> {max_bytes} bytes)", max_bytes)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(received: str, max_bytes: int) -> ImageError:
    return ImageError(
        "image file too large",
        received=received,
        expected=f"at most {max_bytes} bytes",
        fix="shrink the image first",
    )


def _open(data: bytes, label: str, max_pixels: int, draft: int | None) -> Image.Image:
    """Open and fully decode the first frame of ``data``, enforcing the allowlist and pixel cap."""
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            "not a supported image",
            received=label,
            expected="a PNG, JPEG, BMP, GIF, TIFF or WebP image",
            fix="convert the file to PNG or JPEG, or remove it",
        ) from None
    except Image.DecompressionBombError:
        raise ImageError(
            "image too large",
            received=label,
            expected=f"at most {max_pixels} pixels",
            fix="downscale the image before classifying it",
        ) from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: every decoder failure is a bad image
        raise ImageError(
            "cannot decode image",
            received=f"{label} ({type(exc).__name__}: {exc})",
            expected="a valid image file",
            fix="re-export or remove the file",
        ) from None
    w, h = img.size
    if w < 1 or h < 1 or w * h > max_pixels:
        raise ImageError(
            "image too large" if w * h > max_pixels else "image has no pixels",
            received=f"{label} ({w}x{h} = {w * h} pixels)",
            expected=f"between 1 and {max_pixels} pixels",
            fix="downscale or replace the image",
        )
    try:
        if draft and img.format == "JPEG" and min(w, h) >= 2 * draft:
            img.draft(None, (draft, draft))
        img.load()
    except Exception as exc:  # noqa: BLE001 - see above
        raise ImageError(
            "cannot decode image",
            received=f"{label} ({type(exc).__name__}: {exc})",
            expected="a complete, valid image file",
            fix="re-export the file (it may be truncated or corrupt) or remove it",
        ) from None
    return img


def _orient(img: Image.Image, label: str) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block is ignored with a warning."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF must not make an image unusable
        warnings.warn(f"{label}: unreadable EXIF data ignored (no rotation applied)", stacklevel=3)
        return img
    ops = _ORIENT.get(orientation) if isinstance(orientation, int) else None
    for op in ops or ():
        img = img.transpose(op)
    return img


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """Composite an (H, W, 4) uint8 array on black: ``round(c * a / 255)``."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * alpha * 2 + 255) // 510).astype(np.uint8)


def _to_rgb_image(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to an RGB image by the documented rule (NumPy only where Pillow differs)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(img).astype(np.int64)
        gray = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2))
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        return Image.fromarray(_composite_on_black(np.asarray(img.convert("RGBA"), dtype=np.uint8)))
    return img.convert("RGB")


def _array_to_rgb(arr: np.ndarray, channel_order: str) -> np.ndarray:
    """Validate a caller's numpy array and return (H, W, 3) uint8 RGB."""
    label = describe_source(arr)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageError(
            "unsupported array dtype",
            received=label,
            expected="uint8 (or uint16, bool)",
            fix="convert first, e.g. np.clip(x * 255, 0, 255).astype(np.uint8)",
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageError(
            "unsupported array shape",
            received=label,
            expected="(H, W), (H, W, 1), (H, W, 3) or (H, W, 4)",
            fix="pass one image as a height x width x channels array",
        )
    if channel_order == "bgr":
        arr = np.concatenate([arr[..., 2::-1], arr[..., 3:]], axis=2)
    if arr.shape[2] == 4:
        arr = _composite_on_black(arr)
    return np.ascontiguousarray(arr)


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
        max_pixels: Reject images with more pixels than this (checked before decoding).
        draft: If set, large JPEGs may be decoded at a reduced scale no smaller than this many pixels
            per side (faster, but the pixels differ from a full decode: for thumbnails only, never
            for model inputs).
        name: How to call the source in error messages (default: its path or a short description).

    Raises:
        ImageError: If the source cannot be decoded or breaks a limit.
        UsageError: If ``channel_order`` is invalid or ``bgr`` is used with a non-array source.
    """
    if channel_order not in ("rgb", "bgr"):
        raise UsageError(
            "unknown channel_order",
            received=repr(channel_order),
            expected="rgb | bgr",
            fix="use channel_order='bgr' for OpenCV arrays, 'rgb' otherwise",
        )
    if isinstance(source, np.ndarray):
        if source.ndim >= 2 and source.shape[0] * source.shape[1] > max_pixels:
            raise ImageError(
                "image too large",
                received=describe_source(source),
                expected=f"at most {max_pixels} pixels",
                fix="downscale the image first",
            )
        if source.ndim >= 2 and min(source.shape[0], source.shape[1]) < 1:
            raise ImageError(
                "image has no pixels",
                received=describe_source(source),
                expected=f"between 1 and {max_pixels} pixels",
                fix="pass a non-empty image",
            )
        return Image.fromarray(_array_to_rgb(source, channel_order))
    if channel_order == "bgr":
        raise UsageError(
            "channel_order='bgr' applies to numpy arrays only",
            received=describe_source(source),
            expected="a numpy array",
            fix="drop channel_order for files, bytes and PIL images",
        )
    label = name or describe_source(source)
    if isinstance(source, Image.Image):
        w, h = source.size
        if w * h > max_pixels or w < 1 or h < 1:
            raise ImageError(
                "image too large" if w * h > max_pixels else "image has no pixels",
                received=f"{label}",
                expected=f"between 1 and {max_pixels} pixels",
                fix="downscale or replace the image",
            )
        img = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        img = _open(bytes(source), label, max_pixels, draft)
    elif isinstance(source, (str, os.PathLike)):
        img = _open(read_bytes(source), label, max_pixels, draft)
    else:
        raise UsageError(
            "unsupported image source",
            received=label,
            expected="a path, bytes, a PIL image or a numpy array",
            fix="pass one of the supported types",
        )
    try:
        return _to_rgb_image(_orient(img, label))
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
    source: ImageSource, spec: PreprocessSpec, *, channel_order: str = "rgb", name: str | None = None
) -> np.ndarray:
    """Decode, orient, convert and resize one image to a (height, width, 3) uint8 array.

    This is what the decode-once cache stores; :func:`to_tensor` finishes the job. JPEG draft mode is
    not used here: it only applies to encoded sources, so a path and the PIL image or array decoded
    from the same file would get different pixels.
    """
    return resize(decode_image(source, channel_order=channel_order, name=name), spec)


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


def preprocess(
    sources: ImageSource | Sequence[ImageSource],
    spec: PreprocessSpec,
    *,
    channel_order: str = "rgb",
) -> torch.Tensor:
    """Preprocess one image or a list of images into a float32 batch (N, 3, H, W)."""
    if isinstance(sources, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)):
        sources = [sources]
    arrays = [preprocess_uint8(s, spec, channel_order=channel_order) for s in sources]
    if not arrays:
        return torch.empty((0, 3, spec.height, spec.width), dtype=torch.float32)
    return to_tensor(np.stack(arrays), spec)


def is_image_name(path: str | os.PathLike) -> bool:
    """True if the file name has one of the image extensions imgclf scans for."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
