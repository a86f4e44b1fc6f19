"""Hardening of the image path: strip-wise conversion equals the whole-image rule, the pixel cap is a
setting, text chunks are refused before being read, and warnings name their file."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.config import PreprocessSpec
from imgclf.errors import ImageError, UsageError
from imgclf.images import preprocess as images
from imgclf.images import read, rgb

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
    monkeypatch.setattr(rgb, "STRIP_PIXELS", 1000)  # many strips, and a last one of a different height
    img = random_image(mode, 97, 61, seed=len(mode))
    out = rgb.to_rgb_image(img)
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


# --- item 7: every image warning names its file ----------------------------------------------------

CORRUPT_EXIF = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12"  # Pillow: "Corrupt EXIF data..."


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_pillow_warnings_name_the_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"bad exif.{fmt.lower()}"
    Image.new("RGB", (8, 8)).save(path, fmt, exif=CORRUPT_EXIF)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images.decode(path)
    texts = [str(w.message) for w in caught]
    assert texts and all(t.startswith(f"{path}: ") for t in texts), texts
    assert any("Corrupt EXIF data" in t for t in texts), texts


def test_the_decompression_bomb_warning_gives_way_to_the_named_error() -> None:
    ihdr = struct.pack(">IIBBBBB", 12_000, 12_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="^image too large; received big.png"):
            images.decode(data, name="big.png")
    assert [str(w.message) for w in caught] == []


# --- item 11: large metadata chunks are refused by their header ----------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with(chunk: bytes, *, after_image: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, "PNG")
    plain = buf.getvalue()
    split = plain.index(b"IEND") - 4 if after_image else plain.index(b"IDAT") - 4
    return plain[:split] + chunk + plain[split:]


@pytest.mark.parametrize(
    "kind, size",
    [
        (b"tEXt", (1 << 20) + 1),
        (b"zTXt", 2 << 20),
        (b"iCCP", (16 << 20) + 1),
        (b"prVt", 40 << 20),
    ],
)
@pytest.mark.parametrize("after_image", [False, True], ids=["before-image", "after-image"])
def test_large_metadata_chunks_are_refused_before_pillow_reads_them(
    kind: bytes, size: int, after_image: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The header says `size` bytes; only 1 KB follow, so a refusal cannot come from reading it all.
    chunk = struct.pack(">I", size) + kind + b"k\0" + b"x" * 1000
    data = png_with(chunk, after_image=after_image)
    opened = []
    monkeypatch.setattr(read.Image, "open", lambda *a, **k: opened.append(1) or pytest.fail("opened"))
    with pytest.raises(
        ImageError, match=f"^PNG chunk too large; received a.png \\('{kind.decode()}' chunk of {size} bytes"
    ):
        images.decode(data, name="a.png")
    assert opened == []


def test_a_full_size_text_chunk_is_refused_with_little_memory(tmp_path: Path) -> None:
    import resource

    path = tmp_path / "text.png"
    path.write_bytes(png_with(png_chunk(b"tEXt", b"comment\0" + b"a" * (40 << 20))))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match="^PNG chunk too large"):
        images.decode(path)
    # The file itself is read (bounded by MAX_FILE_BYTES); Pillow never copies or splits the chunk.
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 60 << 20


def test_small_metadata_chunks_still_decode() -> None:
    data = png_with(png_chunk(b"tEXt", b"comment\0hello"), after_image=True)
    np.testing.assert_array_equal(images.decode(data), np.full((4, 4, 3), (10, 20, 30), np.uint8))
