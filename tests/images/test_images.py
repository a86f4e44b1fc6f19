"""Tests of images.preprocess: every source kind and Pillow mode, EXIF orientation, limits and rejections."""

from __future__ import annotations

import io
import os
import pickle
import random
import struct
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from imgclf.config import INTERPOLATIONS, PreprocessSpec
from imgclf.errors import ImageError, UsageError
from imgclf.images import preprocess as images
from imgclf.images import read, rgb

SPEC = PreprocessSpec(height=16, width=16)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def handmade_png(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG built from scratch: raw is the filtered scanline data before compression."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height RGB pixels with a tiny IDAT (a decompression-bomb shape)."""
    return handmade_png(width, height, 8, 2, b"\0" * 100)


def blocks(rows: int, cols: int, cell: int) -> np.ndarray:
    """An asymmetric pattern: rows x cols blocks of cell px, every block a different colour."""
    idx = np.arange(rows * cols).reshape(rows, cols)
    rgb = np.stack([idx * 37 % 256, idx * 91 % 256, 255 - idx * 13 % 256], axis=-1).astype(np.uint8)
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def round_on_black(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The documented alpha rule round(c * a / 255), computed independently in float64."""
    return np.floor(c.astype(np.float64) * a.astype(np.float64) / 255.0 + 0.5).astype(np.uint8)


# --- input kinds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,size", [("PNG", 40), ("JPEG", 40), ("JPEG", 300), ("BMP", 33), ("WEBP", 40)])
def test_path_bytes_pil_and_array_give_identical_tensors(tmp_path: Path, fmt: str, size: int) -> None:
    path = tmp_path / f"img.{fmt.lower()}"
    Image.fromarray(noise(size, size + 7)).save(path, fmt)
    spec = PreprocessSpec(height=32, width=32)
    by_path = images.preprocess(path, spec)
    by_str = images.preprocess(str(path), spec)
    by_bytes = images.preprocess(path.read_bytes(), spec)
    by_bytearray = images.preprocess(bytearray(path.read_bytes()), spec)
    with Image.open(path) as opened:
        by_pil = images.preprocess(opened, spec)
    with Image.open(path) as opened:
        by_array = images.preprocess(np.asarray(opened.convert("RGB")), spec)
    assert by_path.shape == (1, 3, 32, 32) and by_path.dtype == torch.float32
    for other in (by_str, by_bytes, by_bytearray, by_pil, by_array):
        assert torch.equal(by_path, other)


def test_list_of_sources_is_one_batch_in_order() -> None:
    a, b = noise(20, 20, 1), noise(20, 20, 2)
    batch = images.preprocess([a, encode(Image.fromarray(b), "PNG")], SPEC)
    assert batch.shape == (2, 3, 16, 16)
    assert torch.equal(batch[0], images.preprocess(a, SPEC)[0])
    assert torch.equal(batch[1], images.preprocess(b, SPEC)[0])
    assert images.preprocess([], SPEC).shape == (0, 3, 16, 16)


def test_rgb_array_is_returned_unchanged() -> None:
    arr = noise(9, 13)
    out = images.decode(arr)
    assert out.dtype == np.uint8 and out.shape == (9, 13, 3)
    np.testing.assert_array_equal(out, arr)


def test_bgr_array_is_swapped_to_rgb() -> None:
    rgb = noise(9, 13)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    np.testing.assert_array_equal(images.decode(bgr, channel_order="bgr"), rgb)
    assert not np.array_equal(images.decode(bgr), rgb)
    assert torch.equal(images.preprocess(bgr, SPEC, channel_order="bgr"), images.preprocess(rgb, SPEC))


def test_bgra_array_swaps_colour_then_composites() -> None:
    rgba = np.array([[[200, 10, 40, 128], [1, 2, 3, 0]]], dtype=np.uint8)
    bgra = np.ascontiguousarray(rgba[..., [2, 1, 0, 3]])
    expected = round_on_black(rgba[..., :3], rgba[..., 3:])
    np.testing.assert_array_equal(images.decode(bgra, channel_order="bgr"), expected)


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1)])
def test_grayscale_array_is_replicated_to_three_channels(shape: tuple[int, ...]) -> None:
    gray = np.arange(35, dtype=np.uint8).reshape(shape) * 7
    out = images.decode(gray)
    assert out.shape == (5, 7, 3)
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch], gray.reshape(5, 7))


def test_alpha_rule_is_exact_for_every_colour_and_alpha_value() -> None:
    c, a = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing="ij")
    rgba = np.stack([c, 255 - c, np.full_like(c, 255), a], axis=-1)
    out = images.decode(rgba)
    np.testing.assert_array_equal(out, round_on_black(rgba[..., :3], rgba[..., 3:]))
    assert out[200, 128, 0] == 100  # 200 * 128 / 255 = 100.39
    assert out[1, 128, 0] == 1  # 0.502 rounds up, not down
    assert (out[:, 0] == 0).all()  # fully transparent is black


def test_uint16_and_bool_arrays_follow_the_rule() -> None:
    wide = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(images.decode(wide)[..., 0], [[0, 0, 1, 255]])
    flags = np.array([[True, False]])
    np.testing.assert_array_equal(images.decode(flags)[..., 1], [[255, 0]])


@pytest.mark.parametrize(
    "arr,problem",
    [
        (np.zeros((4, 4, 3), dtype=np.float32), "unsupported array dtype"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "unsupported array shape"),
        (np.zeros((16,), dtype=np.uint8), "unsupported array shape"),
        (np.zeros((2, 4, 4, 3), dtype=np.uint8), "unsupported array shape"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "image has no pixels"),
        (np.zeros((5, 0), dtype=np.uint8), "image has no pixels"),
    ],
)
def test_bad_arrays_are_rejected(arr: np.ndarray, problem: str) -> None:
    with pytest.raises(ImageError, match=problem) as info:
        images.preprocess(arr, SPEC)
    assert info.value.exit_code == 4


def test_bad_channel_order_and_source_type_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown channel_order") as info:
        images.decode(noise(4, 4), channel_order="rgba")
    assert info.value.exit_code == 2
    with pytest.raises(UsageError, match="applies to numpy arrays only"):
        images.decode(encode(Image.fromarray(noise(4, 4)), "PNG"), channel_order="bgr")
    with pytest.raises(UsageError, match="unsupported image source"):
        images.decode(12345)  # type: ignore[arg-type]


# --- Pillow modes ----------------------------------------------------------------------------------


def test_mode_1_and_l_are_replicated() -> None:
    gray = np.array([[0, 64, 200, 255]], dtype=np.uint8)
    out_l = images.decode(encode(Image.fromarray(gray, "L"), "PNG"))
    np.testing.assert_array_equal(out_l, np.repeat(gray[..., None], 3, axis=2))
    bits = Image.fromarray(np.array([[0, 255, 255, 0]], dtype=np.uint8)).convert("1")
    out_1 = images.decode(encode(bits, "PNG"))
    expected = np.repeat(np.array([[0, 255, 255, 0]], np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(out_1, expected)


def test_la_png_is_composited_on_black() -> None:
    la = np.array([[[200, 128], [100, 0], [255, 255], [3, 85]]], dtype=np.uint8)
    out = images.decode(encode(Image.fromarray(la, "LA"), "PNG"))
    expected = round_on_black(la[..., :1], la[..., 1:])
    np.testing.assert_array_equal(out, np.repeat(expected, 3, axis=2))
    np.testing.assert_array_equal(out[0, :, 0], [100, 0, 255, 1])


def _palette_image(transparency: object = None) -> Image.Image:
    img = Image.fromarray(np.array([[0, 1, 2, 1]], dtype=np.uint8), "P")
    img.putpalette([255, 0, 0, 0, 200, 0, 10, 20, 250])
    if transparency is not None:
        img.info["transparency"] = transparency
    return img


def test_palette_png_without_transparency_keeps_palette_colours() -> None:
    data = encode(_palette_image(), "PNG")
    assert "transparency" not in Image.open(io.BytesIO(data)).info
    expected = [[255, 0, 0], [0, 200, 0], [10, 20, 250], [0, 200, 0]]
    np.testing.assert_array_equal(images.decode(data)[0], expected)


def test_palette_png_with_single_transparent_index_turns_black() -> None:
    data = encode(_palette_image(transparency=1), "PNG")
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 1
    np.testing.assert_array_equal(images.decode(data)[0], [[255, 0, 0], [0, 0, 0], [10, 20, 250], [0, 0, 0]])


def test_palette_png_with_trns_alpha_table_uses_the_alpha_rule() -> None:
    data = encode(_palette_image(transparency=bytes([255, 128, 0])), "PNG")
    out = images.decode(data)[0]
    np.testing.assert_array_equal(out, [[255, 0, 0], [0, 100, 0], [0, 0, 0], [0, 100, 0]])


def test_rgba_png_transparent_regions_are_black_and_partial_alpha_exact() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = (250, 120, 33)
    rgba[:4, :, 3] = 0  # fully transparent top half, with colour underneath
    rgba[4:, :4, 3] = 255
    rgba[4:, 4:, 3] = 77
    out = images.decode(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out[:4] == 0).all()
    np.testing.assert_array_equal(out[4:, :4], np.broadcast_to([250, 120, 33], (4, 4, 3)))
    np.testing.assert_array_equal(
        out[4:, 4:], np.broadcast_to(round_on_black(np.array([250, 120, 33]), np.array(77)), (4, 4, 3))
    )
    np.testing.assert_array_equal(out[4, 4], [75, 36, 10])  # 75.49, 36.2, 9.96


def test_cmyk_jpeg_matches_the_rgb_original_within_tolerance() -> None:
    """Documented tolerance: block means within 12 levels of the RGB original's (both JPEG q95)."""
    rgb = blocks(2, 3, 16)
    from_rgb = images.decode(encode(Image.fromarray(rgb), "JPEG", quality=95))
    cmyk_bytes = encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(cmyk_bytes)).mode == "CMYK"
    from_cmyk = images.decode(cmyk_bytes)
    assert from_cmyk.shape == rgb.shape
    for r in range(2):
        for c in range(3):
            cell = (slice(r * 16 + 4, r * 16 + 12), slice(c * 16 + 4, c * 16 + 12))
            cmyk_mean = from_cmyk[cell].reshape(-1, 3).mean(0)
            assert np.abs(cmyk_mean - rgb[cell].reshape(-1, 3).mean(0)).max() < 12
            assert np.abs(cmyk_mean - from_rgb[cell].reshape(-1, 3).mean(0)).max() < 12


def test_16bit_grayscale_png_keeps_the_high_byte() -> None:
    gradient = np.tile(np.linspace(0, 65535, 512).astype(np.uint16), (3, 1))
    data = encode(Image.fromarray(gradient), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = images.decode(data)
    assert out.dtype == np.uint8 and out.shape == (3, 512, 3)
    assert len(np.unique(out)) > 200
    np.testing.assert_array_equal(out[..., 0], (gradient >> 8).astype(np.uint8))


def test_16bit_rgb_png_has_many_levels() -> None:
    width = 300
    values = np.linspace(0, 65535, width).astype(np.uint16)
    row = np.stack([values, values[::-1], np.full_like(values, 0x8000)], axis=-1).astype(">u2").tobytes()
    data = handmade_png(width, 2, 16, 2, (b"\0" + row) * 2)
    out = images.decode(data)
    assert out.shape == (2, width, 3)
    assert len(np.unique(out[..., 0])) > 200
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and out[0, 5, 2] == 128


def test_i_mode_keeps_high_byte_and_clips() -> None:
    values = np.array([[-5, 0, 255, 256, 40000, 65535, 70000]], dtype=np.int32)
    out = images.decode(Image.fromarray(values, "I"))
    np.testing.assert_array_equal(out[..., 0], [[0, 0, 0, 1, 156, 255, 255]])


def test_f_mode_tiff_is_rounded_and_clipped() -> None:
    values = np.array([[-5.0, 0.4, 0.6, 127.0, 300.0]], dtype=np.float32)
    data = encode(Image.fromarray(values, "F"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    np.testing.assert_array_equal(images.decode(data)[..., 0], [[0, 0, 1, 127, 255]])


# --- EXIF orientation ----------------------------------------------------------------------------


def _rot(a: np.ndarray, k: int) -> np.ndarray:
    return np.rot90(a, k, axes=(0, 1))


# How a viewer turns the stored pixels into the upright picture, from the EXIF specification.
DISPLAY = {
    2: lambda s: s[:, ::-1],  # mirror horizontal
    3: lambda s: s[::-1, ::-1],  # rotate 180
    4: lambda s: s[::-1],  # mirror vertical
    5: lambda s: _rot(s[:, ::-1], 1),  # mirror horizontal, rotate 270 CW
    6: lambda s: _rot(s, -1),  # rotate 90 CW
    7: lambda s: _rot(s[:, ::-1], -1),  # mirror horizontal, rotate 90 CW
    8: lambda s: _rot(s, 1),  # rotate 270 CW
}
# The pixels a camera stores for an upright scene (the inverse of DISPLAY).
STORE = {**DISPLAY, 6: lambda u: _rot(u, 1), 8: lambda u: _rot(u, -1)}


def _tagged(upright: np.ndarray, orientation: int, fmt: str, **kw) -> bytes:
    stored = np.ascontiguousarray(STORE[orientation](upright))
    np.testing.assert_array_equal(DISPLAY[orientation](stored), upright)  # the fixture itself is right
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(stored), fmt, exif=exif, **kw)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_png_gives_the_upright_image(orientation: int) -> None:
    upright = blocks(3, 5, 2)  # 6 x 10, no symmetry
    out = images.decode(_tagged(upright, orientation, "PNG"))
    np.testing.assert_array_equal(out, upright)
    assert torch.equal(
        images.preprocess(_tagged(upright, orientation, "PNG"), SPEC), images.preprocess(upright, SPEC)
    )


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_jpeg_gives_the_upright_image(orientation: int) -> None:
    upright = blocks(2, 3, 16)  # 32 x 48
    out = images.decode(_tagged(upright, orientation, "JPEG", quality=95, subsampling=0))
    assert out.shape == upright.shape
    for r in range(2):
        for c in range(3):
            cell = (slice(r * 16 + 4, r * 16 + 12), slice(c * 16 + 4, c * 16 + 12))
            assert np.abs(out[cell].astype(int) - upright[cell]).max() <= 12


@pytest.mark.parametrize(
    "blob",
    [
        b"garbage",
        b"Exif\x00\x00Exif\x00\x00MM\x00*\x00\x00\x00\x08",  # duplicated Exif header
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12",  # IFD truncated inside its entries
        b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",  # IFD offset far beyond the data
        # orientation stored as a RATIONAL whose value offset points nowhere
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x05\x00\x00\x00\x01\x00\x00\x00\x00",
    ],
)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_malformed_exif_is_ignored_without_rotation(blob: bytes, fmt: str) -> None:
    stored = blocks(2, 3, 16)
    data = encode(Image.fromarray(stored), fmt, exif=blob, quality=95, subsampling=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = images.decode(data)
    assert out.shape == stored.shape
    assert np.abs(out.astype(int) - stored).mean() < 3


@pytest.mark.parametrize("orientation", [0, 1, 9, 65535])
def test_out_of_range_orientation_is_ignored(orientation: int) -> None:
    stored = blocks(3, 5, 2)
    exif = Image.Exif()
    exif[0x0112] = orientation
    np.testing.assert_array_equal(images.decode(encode(Image.fromarray(stored), "PNG", exif=exif)), stored)


# --- rejections ----------------------------------------------------------------------------------


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "hello")
    return buf.getvalue()


NOT_IMAGES = {
    "empty": b"",
    "text": b"this is a text file, not a picture\n",
    "elf": b"\x7fELF\x02\x01\x01\x00" + b"\0" * 56,
    "zip": _zip_bytes(),
    "pickle": pickle.dumps({"a": 1}),
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    "psd": b"8BPS\x00\x01"
    + b"\0" * 6
    + b"\x00\x03\x00\x00\x00\x08\x00\x00\x00\x08\x00\x08\x00\x03"
    + b"\0" * 16,
    "svg": b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'><rect/></svg>",
    "html": b"<!DOCTYPE html><html><body><img src=x></body></html>",
}


@pytest.mark.parametrize("kind", sorted(NOT_IMAGES))
def test_non_images_named_png_are_not_supported(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.png"
    path.write_bytes(NOT_IMAGES[kind])
    with pytest.raises(ImageError, match=r"^not a supported image; received .*" + kind) as info:
        images.preprocess(path, SPEC)
    assert info.value.exit_code == 4
    with pytest.raises(ImageError, match="not a supported image"):
        images.decode(NOT_IMAGES[kind])


@pytest.mark.parametrize("fmt", ["PDF", "EPS", "ICO", "TGA", "PPM", "PCX"])
def test_real_formats_outside_the_allowlist_are_rejected(fmt: str) -> None:
    try:
        data = encode(Image.fromarray(noise(8, 8)), fmt)
    except (OSError, KeyError):  # pragma: no cover - writer unavailable (e.g. EPS without Ghostscript)
        pytest.skip(f"Pillow cannot write {fmt} here")
    with pytest.raises(ImageError, match="not a supported image"):
        images.decode(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_rejected_and_global_flags_untouched(tmp_path: Path, fmt: str) -> None:
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
    data = encode(Image.fromarray(noise(64, 64)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cannot decode image; received .*cut.* truncated") as info:
        images.preprocess(path, SPEC)
    assert info.value.exit_code == 4
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS) == before


def test_truncated_and_good_images_decoded_concurrently_do_not_interfere() -> None:
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
    good = encode(Image.fromarray(noise(48, 48, 3)), "PNG")
    cut = good[: len(good) // 2]
    expected = images.decode(good)

    def one(i: int) -> bool:
        if i % 2:
            with pytest.raises(ImageError):
                images.decode(cut)
            return True
        return np.array_equal(images.decode(good), expected)

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(one, range(40)))
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS) == before


@pytest.mark.parametrize("side", [50_000, 12_000, 9_000])
def test_header_claiming_huge_size_is_rejected_fast(side: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """50 000^2 trips Pillow's bomb check, 12 000^2 only its warning, 9 000^2 only our own cap: all from the
    header, before any pixel is decoded (no ``load``)."""
    data = header_only_png(side, side)
    assert len(data) < 200
    before = Image.MAX_IMAGE_PIXELS
    loads: list[object] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match="^image too large") as info:
            images.decode(data)
    assert loads == []
    assert info.value.exit_code == 4
    assert Image.MAX_IMAGE_PIXELS == before


def test_max_pixels_is_enforced_for_every_source_kind() -> None:
    arr = noise(20, 20)
    data = encode(Image.fromarray(arr), "PNG")
    for source in (data, arr, Image.fromarray(arr)):
        np.testing.assert_array_equal(images.decode(source, max_pixels=400), arr)
        with pytest.raises(ImageError, match="^image too large"):
            images.decode(source, max_pixels=399)


def test_file_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(noise(20, 20)).save(path)
    size = path.stat().st_size
    assert images.read_bytes(path, max_bytes=size) == path.read_bytes()
    too_large = rf"^image file too large; received .*a\.png \({size} bytes\)"
    with pytest.raises(ImageError, match=too_large) as info:
        images.read_bytes(path, max_bytes=size - 1)
    assert info.value.exit_code == 4


def test_directory_missing_path_and_fifo_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="^not a regular file"):
        images.preprocess(tmp_path, SPEC)
    with pytest.raises(ImageError, match=r"^cannot open image; received .*nope\.png"):
        images.preprocess(tmp_path / "nope.png", SPEC)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.png"
        os.mkfifo(fifo)
        with pytest.raises(ImageError, match="^not a regular file"):  # and no hang reading it
            images.preprocess(fifo, SPEC)


def test_one_pixel_and_extreme_aspect_ratios_work() -> None:
    for shape in [(1, 1, 3), (1, 2000, 3), (2000, 1, 3)]:
        arr = noise(shape[0], shape[1])
        for source in (arr, encode(Image.fromarray(arr), "PNG")):
            x = images.preprocess(source, SPEC)
            assert x.shape == (1, 3, 16, 16) and torch.isfinite(x).all()


def test_animated_gif_uses_the_first_frame_only() -> None:
    frames = [
        Image.fromarray(np.full((8, 8, 3), colour, np.uint8))
        for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    ]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = images.decode(data)
    assert out.shape == (8, 8, 3)
    assert (out == [255, 0, 0]).all()


def test_multipage_tiff_uses_the_first_page_only() -> None:
    pages = [Image.fromarray(np.full((6, 6, 3), v, np.uint8)) for v in (10, 200)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert (images.decode(data) == 10).all()


# --- fuzzing and injected decoder failures -------------------------------------------------------


def _fix_png_crcs(data: bytearray) -> bytes:
    """Recompute every chunk CRC so mutations reach the decoder instead of the CRC check."""
    pos = 8
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        data[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4 : end])) & 0xFFFFFFFF)
        pos = end + 4
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_fuzzed_files_decode_or_raise_image_error_quickly(fmt: str) -> None:
    good = encode(Image.fromarray(noise(24, 32, 5)), fmt)
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for i in range(100):
        data = bytearray(good)
        if i % 5 == 0:
            data = data[: rng.randrange(1, len(data))]
        else:
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(data))
                data[pos] ^= 1 << rng.randrange(8)
        mutated = _fix_png_crcs(data) if fmt == "PNG" and i % 2 else bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out = images.decode(mutated)
            except ImageError:
                outcomes["error"] += 1
            else:
                assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
                outcomes["ok"] += 1
    assert outcomes["error"] > 0  # the mutations did reach the decoder's failure paths


INJECTED = [
    ValueError("bad value"),
    OverflowError("too big"),
    struct.error("unpack"),
    NotImplementedError("no codec"),
    MemoryError(),
    OSError("broken"),
]


@pytest.mark.parametrize("exc", INJECTED, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("where", ["open", "load"])
def test_injected_decoder_exceptions_become_image_errors(
    monkeypatch: pytest.MonkeyPatch, exc: Exception, where: str
) -> None:
    data = encode(Image.fromarray(noise(8, 8)), "PNG")

    def boom(*args: object, **kwargs: object) -> None:
        raise exc

    if where == "open":
        monkeypatch.setattr(Image, "open", boom)
    else:
        monkeypatch.setattr(ImageFile.ImageFile, "load", boom)
    with pytest.raises(ImageError, match=rf"^cannot decode image; received .*{type(exc).__name__}") as info:
        images.preprocess(data, SPEC)
    assert info.value.exit_code == 4


def test_conversion_failure_becomes_image_error(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(_palette_image(), "PNG")

    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError("conversion exploded")

    monkeypatch.setattr(Image.Image, "convert", boom)
    with pytest.raises(ImageError, match="^cannot convert image to RGB; received .*conversion exploded"):
        images.decode(data)


# --- resize and to_tensor ------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_resize_is_pillows_resize_with_the_named_filter(interpolation: str) -> None:
    arr = noise(37, 23, 9)
    spec = PreprocessSpec(height=16, width=20, interpolation=interpolation)
    filters = {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
        "box": Image.Resampling.BOX,
        "hamming": Image.Resampling.HAMMING,
    }
    expected = np.asarray(Image.fromarray(arr).resize((20, 16), resample=filters[interpolation]))
    out = images.resize(arr, spec)
    assert out.shape == (16, 20, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_nearest_and_bilinear_differ_and_same_size_is_untouched() -> None:
    arr = noise(37, 23, 9)
    near = images.resize(arr, PreprocessSpec(height=16, width=20, interpolation="nearest"))
    bil = images.resize(arr, PreprocessSpec(height=16, width=20, interpolation="bilinear"))
    assert not np.array_equal(near, bil)
    np.testing.assert_array_equal(near, arr[np.ix_(near_index(37, 16), near_index(23, 20))])
    np.testing.assert_array_equal(images.resize(arr, PreprocessSpec(height=37, width=23)), arr)


def near_index(src: int, dst: int) -> np.ndarray:
    """Pillow's nearest-neighbour source index for each output pixel (pixel centres)."""
    return np.floor((np.arange(dst) + 0.5) * src / dst).astype(int)


def test_to_tensor_shape_dtype_and_exact_scaling() -> None:
    batch = np.stack([noise(5, 7, 1), noise(5, 7, 2)])
    x = images.to_tensor(batch, SPEC)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
    expected = torch.from_numpy(batch.astype(np.float32) * np.float32(SPEC.rescale)).permute(0, 3, 1, 2)
    assert torch.equal(x, expected)
    assert x[0, 1, 2, 3].item() == np.float32(batch[0, 2, 3, 1]) * np.float32(1 / 255)


def test_to_tensor_applies_mean_and_std() -> None:
    batch = np.stack([noise(4, 4, 1)])
    spec = PreprocessSpec(
        height=4, width=4, rescale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    x = images.to_tensor(batch, spec)
    scaled = batch.astype(np.float64) / 255
    expected = (scaled - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_to_tensor_accepts_read_only_and_reversed_views() -> None:
    batch = np.stack([noise(4, 4, 1)])
    frozen = batch.copy()
    frozen.flags.writeable = False
    flipped = batch[:, :, ::-1]  # negative strides, as from arr[..., ::-1] style slicing
    assert torch.equal(images.to_tensor(frozen, SPEC), images.to_tensor(batch, SPEC))
    assert torch.equal(images.to_tensor(flipped, SPEC), images.to_tensor(np.ascontiguousarray(flipped), SPEC))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 4, 4, 3), np.float32),
        np.zeros((4, 4, 3), np.uint8),
        np.zeros((1, 4, 4, 4), np.uint8),
        torch.zeros((1, 3, 4, 4), dtype=torch.uint8),
    ],
)
def test_to_tensor_rejects_bad_batches(bad: object) -> None:
    with pytest.raises(UsageError, match=r"to_tensor needs a uint8 batch shaped \(N, H, W, 3\)") as info:
        images.to_tensor(bad, SPEC)  # type: ignore[arg-type]
    assert info.value.exit_code == 2


def test_is_image_name_and_describe_source() -> None:
    assert images.is_image_name("a/B.JPEG") and images.is_image_name("x.webp")
    assert not images.is_image_name("notes.txt") and not images.is_image_name("png")
    assert images.describe_source(b"abc") == "<3 bytes>"
    assert images.describe_source(np.zeros((2, 3), np.uint8)) == "<array shape=(2, 3) dtype=uint8>"


# --- to_array (the NumPy-only scaling an ONNX model gets) and orientation: fast checks of their own, so a
# mutation run (docs/testing.md) has tests that reach them ---------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        SPEC,
        PreprocessSpec(height=5, width=7, rescale=1 / 127.5, mean=(0.5, 1.0, 1.5), std=(0.25, 0.5, 2.0)),
        PreprocessSpec(height=5, width=7, rescale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 2.0, 1.0)),
        PreprocessSpec(height=5, width=7, rescale=1.0, mean=(0.0, 3.0, 0.0), std=(1.0, 1.0, 1.0)),
    ],
    ids=["plain", "mean_std", "std_only", "mean_only"],
)
def test_to_array_is_bitwise_to_tensor(spec: PreprocessSpec) -> None:
    batch = np.stack([noise(5, 7, 1), noise(5, 7, 2)])
    x = images.to_array(batch, spec)
    assert x.shape == (2, 3, 5, 7) and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.array_equal(x, images.to_tensor(batch, spec).numpy())
    # An oracle independent of both: the documented formula in float32, channel by channel.
    for c in range(3):
        scaled = batch[..., c].astype(np.float32) * np.float32(spec.rescale)
        expected = (scaled - np.float32(spec.mean[c])) / np.float32(spec.std[c])
        assert np.array_equal(x[:, c], expected), c


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 4, 4, 3), np.float32),
        np.zeros((4, 4, 3), np.uint8),
        np.zeros((1, 4, 4, 4), np.uint8),
        np.zeros((1, 4, 4, 1), np.uint8),
    ],
)
def test_to_array_rejects_bad_batches(bad: np.ndarray) -> None:
    with pytest.raises(UsageError, match=r"to_array needs a uint8 batch shaped \(N, H, W, 3\)"):
        images.to_array(bad, SPEC)


def test_to_array_accepts_a_list_and_leaves_the_batch_unchanged() -> None:
    batch = np.stack([noise(4, 4, 3)])
    before = batch.copy()
    assert np.array_equal(images.to_array(list(batch), SPEC), images.to_array(batch, SPEC))
    assert np.array_equal(batch, before)


def _oriented(img: Image.Image) -> Image.Image:
    for op in read.orientation(img, "x.png"):
        img = img.transpose(op)
    return img


@pytest.mark.parametrize("orientation", range(2, 9))
def test_orientation_applies_the_exif_tag_to_a_pil_image(orientation: int) -> None:
    upright = blocks(3, 4, 2)
    img = Image.open(io.BytesIO(_tagged(upright, orientation, "PNG")))
    assert np.array_equal(np.asarray(_oriented(img).convert("RGB")), upright), orientation


def test_orientation_leaves_an_untagged_image_alone() -> None:
    img = Image.fromarray(blocks(3, 4, 2))
    assert read.orientation(img, "x.png") == ()


def test_orientation_names_the_image_when_its_exif_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    img = Image.fromarray(blocks(3, 4, 2))

    def broken() -> None:
        raise SyntaxError("bad EXIF")

    monkeypatch.setattr(img, "getexif", broken)
    with pytest.warns(UserWarning, match=r"^x\.png: unreadable EXIF data ignored"):
        assert read.orientation(img, "x.png") == ()


# Each channel's mean and std on its own: the shortcut that skips the identity must skip nothing else.
@pytest.mark.parametrize(
    "mean, std",
    [
        ((1.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        ((0.0, 1.0, 0.0), (1.0, 1.0, 1.0)),
        ((0.0, 0.0, 1.0), (1.0, 1.0, 1.0)),
        ((0.0, 0.0, 0.0), (2.0, 1.0, 1.0)),
        ((0.0, 0.0, 0.0), (1.0, 2.0, 1.0)),
        ((0.0, 0.0, 0.0), (1.0, 1.0, 2.0)),
    ],
)
def test_any_mean_or_std_other_than_the_identity_is_applied(mean: tuple, std: tuple) -> None:
    batch = np.stack([noise(4, 4, 5)])
    spec = PreprocessSpec(height=4, width=4, rescale=1.0, mean=mean, std=std)
    plain = batch.transpose(0, 3, 1, 2).astype(np.float32)
    want = (plain - np.float32(mean).reshape(1, 3, 1, 1)) / np.float32(std).reshape(1, 3, 1, 1)
    assert np.array_equal(images.to_array(batch, spec), want)
    assert np.array_equal(images.to_tensor(batch, spec).numpy(), want)


def test_decode_passes_draft_and_name_on() -> None:
    data = encode(Image.fromarray(noise(512, 512, 7)), "JPEG", quality=90)
    assert images.decode(data).shape == (512, 512, 3)
    small = images.decode(data, draft=64)
    assert 64 <= small.shape[0] < 512 and small.shape[0] == small.shape[1] and small.dtype == np.uint8
    with pytest.raises(ImageError, match="upload.png"):
        images.decode(b"garbage", name="upload.png")


def test_describe_source_names_an_unknown_type_and_array_errors_name_the_array() -> None:
    assert images.describe_source(42) == "<int>"
    with pytest.raises(ImageError, match=r"<array shape=\(2, 2\) dtype=float32>"):
        images.decode(np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "RGBA", "LA"])
def test_conversion_in_many_strips_equals_one_strip(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Strips are a memory bound only: 7-row strips (a 5-row last one) give the one-strip result."""
    rng = np.random.default_rng(3)
    if mode in ("RGBA", "LA"):
        img = Image.fromarray(rng.integers(0, 256, size=(33, 11, 4), dtype=np.uint8)).convert(mode)
    elif mode == "F":
        img = Image.fromarray(rng.uniform(-20, 300, size=(33, 11)).astype(np.float32), mode="F")
    else:
        img = Image.fromarray(rng.integers(0, 65536, size=(33, 11), dtype=np.uint16)).convert(mode)
    whole = np.asarray(rgb.to_rgb_image(img))
    monkeypatch.setattr(rgb, "STRIP_PIXELS", 7 * 11)
    assert np.array_equal(np.asarray(rgb.to_rgb_image(img)), whole)


class _Stat:
    """An ``fstat`` result that reports a smaller regular file than the one on disk (it grew since)."""

    def __init__(self, size: int) -> None:
        self.st_mode = 0o100644
        self.st_size = size


def _grown_since_fstat(monkeypatch: pytest.MonkeyPatch, claimed: int) -> None:
    real = read.open_for_reading

    def opened(path: str):
        fd, _ = real(path)
        return fd, _Stat(claimed)

    monkeypatch.setattr(read, "open_for_reading", opened)


@pytest.mark.parametrize("cap", [131_072, 150_000])
def test_a_file_that_grew_past_the_cap_after_fstat_is_refused_not_truncated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: int
) -> None:
    path = tmp_path / "growing.png"
    path.write_bytes(os.urandom(200_000))
    _grown_since_fstat(monkeypatch, 10)
    with pytest.raises(ImageError, match=rf"image file too large.*> {cap} bytes"):
        read.read_bytes(path, max_bytes=cap)


def test_a_file_that_grew_within_the_cap_is_read_whole_in_several_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(100_000)
    path = tmp_path / "growing.png"
    path.write_bytes(data)
    _grown_since_fstat(monkeypatch, 10)
    assert read.read_bytes(path, max_bytes=1 << 20) == data


def test_a_permission_error_says_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: str):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(read, "open_for_reading", denied)
    with pytest.raises(ImageError, match=r"cannot read image.*Permission denied.*check the file"):
        read.read_bytes(tmp_path / "x.png")


def test_preprocess_uint8_passes_the_pixel_cap_and_name_on() -> None:
    spec = PreprocessSpec(height=4, width=4)
    img = Image.fromarray(noise(10, 10, 1))
    assert images.preprocess_uint8(img, spec, max_pixels=100).shape == (4, 4, 3)
    with pytest.raises(ImageError, match="image too large"):
        images.preprocess_uint8(img, spec, max_pixels=99)
    with pytest.raises(ImageError, match="upload.png"):
        images.preprocess_uint8(b"garbage", spec, name="upload.png")


def test_a_premultiplied_rgba_image_follows_the_alpha_rule() -> None:
    rgba = Image.fromarray(np.random.default_rng(4).integers(0, 256, size=(8, 8, 4), dtype=np.uint8), "RGBA")
    straight = np.asarray(rgb.to_rgb_image(rgba)).astype(int)
    premultiplied = np.asarray(rgb.to_rgb_image(rgba.convert("RGBa"))).astype(int)
    assert np.abs(premultiplied - straight).max() <= 1  # un-premultiplying rounds


@pytest.mark.parametrize("side, drafted", [(100, False), (127, False), (128, True), (191, True)])
def test_draft_applies_from_twice_the_asked_size(tmp_path: Path, side: int, drafted: bool) -> None:
    data = encode(Image.fromarray(noise(side, side, 8)), "JPEG", quality=90)
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    for source in (data, path):
        height = images.decode(source, draft=64).shape[0]
        assert (height < side) == drafted and height >= 64, (source, height)
    assert images.decode(encode(Image.fromarray(noise(256, 256, 8)), "PNG"), draft=64).shape[0] == 256


def test_errors_and_warnings_name_every_kind_of_source() -> None:
    big = Image.fromarray(noise(20, 20, 1))
    with pytest.raises(ImageError, match=r"<PIL image mode=RGB size=\(20, 20\)> \(20x20"):
        images.decode(big, max_pixels=100)
    with pytest.raises(ImageError, match=r"<array shape=\(20, 20, 3\) dtype=uint8> \(20x20"):
        images.decode(np.asarray(big), max_pixels=100)
    png = encode(big, "PNG")
    for name in ("a.png", None):
        with pytest.raises(ImageError, match=rf"{name or f'<{len(png)} bytes>'} \(20x20"):
            images.decode(png, max_pixels=100, name=name)
    with pytest.raises(ImageError, match=r"received b\.png"):
        images.decode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, name="b.png")
    with pytest.warns(UserWarning, match=r"^c\.png: unreadable EXIF"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Image.Image, "getexif", lambda self: (_ for _ in ()).throw(SyntaxError("bad")))
            images.decode(png, name="c.png")


def test_decode_image_defaults_to_rgb_order() -> None:
    arr = noise(3, 4, 2)
    assert np.array_equal(np.asarray(images.decode_image(arr)), arr)


def test_to_tensor_of_a_read_only_array_does_not_warn() -> None:
    frozen = np.stack([noise(4, 4, 1)])
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images.to_tensor(frozen, SPEC)


def test_checked_max_pixels_accepts_1_to_the_cap_and_nothing_else() -> None:
    assert read.checked_max_pixels(1) == 1
    assert read.checked_max_pixels(read.MAX_PIXELS) == read.MAX_PIXELS
    for bad in (0, read.MAX_PIXELS + 1, 1.5, "10", True, None):
        with pytest.raises(UsageError, match="max_pixels is out of range"):
            read.checked_max_pixels(bad)
