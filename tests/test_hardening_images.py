"""Hardening of the image path: strip-wise conversion equals the whole-image rule, the pixel cap is a
setting, text chunks are refused before being read, and warnings name their file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.config import PreprocessSpec
from imgclf.errors import ImageError, UsageError
from imgclf.images import preprocess as images
from imgclf.images import read

# --- item 1: strip-wise conversion is bitwise the whole-image rule --------------------------------


def whole_image_rule(img: Image.Image) -> np.ndarray:
    """The conversion rule applied to the whole image at once (the implementation before strips)."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        gray = (np.clip(np.asarray(img).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    rgba = np.asarray(img.convert("RGBA")).astype(np.uint32)
    return ((rgba[..., :3] * rgba[..., 3:4] * 2 + 255) // 510).astype(np.uint8)


def random_image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I;16B"):
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).convert(mode)
    if mode == "I":
        return Image.fromarray(rng.integers(-70_000, 140_000, (h, w), dtype=np.int32), "I")
    if mode == "F":
        return Image.fromarray(rng.uniform(-50, 300, (h, w)).astype(np.float32), "F")
    if mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").convert("P")
        img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        img.info["transparency"] = rng.integers(0, 256, 256, dtype=np.uint8).tobytes()
        return img
    arr = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
    if mode == "LA":
        return Image.fromarray(arr, "LA")
    return Image.fromarray(arr, "RGBA" if len(mode) == 4 else "LA").convert(mode)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F", "RGBA", "RGBa", "LA", "PA", "P"])
def test_strip_conversion_equals_the_whole_image_rule(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read, "STRIP_PIXELS", 1000)  # many strips, and a last one of a different height
    img = random_image(mode, 97, 61, seed=len(mode))
    out = read.to_rgb_image(img)
    assert out.mode == "RGB" and out.size == img.size
    np.testing.assert_array_equal(np.asarray(out), whole_image_rule(img))


def test_orientation_is_applied_to_the_converted_image_identically() -> None:
    """Converting first, then rotating, equals rotating first (the old order) for an RGBA PNG."""
    img = random_image("RGBA", 37, 23, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif.tobytes())
    expected = whole_image_rule(img.transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(images.decode(buf.getvalue()), expected)


# --- item 1: max_pixels as a setting ---------------------------------------------------------------


def test_max_pixels_must_be_within_the_library_cap() -> None:
    arr = np.zeros((10, 10, 3), np.uint8)
    for bad in (0, -1, images.MAX_PIXELS + 1, 1.5, True, "100"):
        with pytest.raises(UsageError, match="^max_pixels is out of range"):
            images.decode(arr, max_pixels=bad)


def test_preprocess_uint8_honours_a_lower_cap(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (30, 20)).save(path)
    spec = PreprocessSpec(height=8, width=8)
    assert images.preprocess_uint8(path, spec, max_pixels=600).shape == (8, 8, 3)
    with pytest.raises(ImageError, match="^image too large"):
        images.preprocess_uint8(path, spec, max_pixels=599)
