"""Step 4 of the preprocessing path: the one rule that turns any decoded image or caller's array into RGB.

16-bit and 32-bit grey keep the high byte, float grey is rounded and clipped, transparency is composited
on black (``round(c * a / 255)``), everything else is Pillow's own conversion. Internal to
:mod:`imgclf.images.preprocess`, which documents the whole rule.

Usage::

    rgb = to_rgb_image(img)                      # a Pillow image in any mode -> mode "RGB"
    arr = array_to_rgb(array, channel_order="bgr")   # (H, W[, 1|3|4]) uint8/uint16/bool -> (H, W, 3)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from imgclf.errors import ImageError
from imgclf.images.read import describe_source


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """Composite an (H, W, 4) uint8 array on black: ``round(c * a / 255)``."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * alpha * 2 + 255) // 510).astype(np.uint8)


# Conversions that need NumPy run on horizontal strips of about this many pixels, so their temporaries
# (int64, float64, uint32) never scale with the image: a whole-image conversion cost 20-50 bytes/pixel.
STRIP_PIXELS = 1 << 18


def _high_byte(strip: Image.Image) -> np.ndarray:
    gray = (np.clip(np.asarray(strip).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _float_gray(strip: Image.Image) -> np.ndarray:
    gray = np.clip(np.rint(np.asarray(strip, dtype=np.float64)), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _alpha_on_black(strip: Image.Image) -> np.ndarray:
    return _composite_on_black(np.asarray(strip.convert("RGBA"), dtype=np.uint8))


def _convert_in_strips(img: Image.Image, convert: Callable[[Image.Image], np.ndarray]) -> Image.Image:
    """Apply a per-pixel ``convert`` (strip image -> (h, W, 3) uint8) strip by strip into one RGB image."""
    w, h = img.size
    rows = max(1, STRIP_PIXELS // max(w, 1))
    out = Image.new("RGB", img.size)
    for top in range(0, h, rows):
        strip = img.crop((0, top, w, min(h, top + rows)))
        out.paste(Image.fromarray(convert(strip)), (0, top))
    return out


def to_rgb_image(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to an RGB image by the documented rule (NumPy only where Pillow differs).

    Memory: the source plus one RGB image (4 bytes/pixel in Pillow) plus one strip's temporaries.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        return _convert_in_strips(img, _high_byte)
    if mode == "F":
        return _convert_in_strips(img, _float_gray)
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        return _convert_in_strips(img, _alpha_on_black)
    return img.convert("RGB")


def array_to_rgb(arr: np.ndarray, channel_order: str) -> np.ndarray:
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
