"""Large, low-entropy images of every decodable mode, and the peak memory of decoding one in a subprocess.

Shared by ``tests/images/test_hardening_memory.py`` (the ≤ 12 bytes/pixel check) and
``benchmarks/decode_memory.py`` (the table in the closing note).

Usage::

    path = write_image(tmp_path, "rgba", 2000)
    print(peak_bytes_per_pixel(path, 2000 * 2000))
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# 16-bit colour PNGs are written by hand (Pillow cannot write them).
MODES = (
    "rgb",
    "rgba",
    "la",
    "rgb16",
    "rgba16",
    "gray16",
    "tiff_i16",
    "tiff_i",
    "tiff_f",
    "p_trns",
    "cmyk",
    "one",
)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, side: int, color_type: int, depth: int, row: bytes) -> None:
    """A ``side`` x ``side`` PNG whose rows all equal ``row`` (filter byte 0 is prepended), streamed."""
    comp = zlib.compressobj(9)
    line = b"\x00" + row
    parts = []
    block = line * 64
    for _ in range(side // 64):
        parts.append(comp.compress(block))
    parts.append(comp.compress(line * (side % 64)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, depth, color_type, 0, 0, 0)
    data = b"".join(parts)
    chunks = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def _pattern(side: int, channels: int, depth: int) -> bytes:
    """One row: a slow ramp, so rows compress well but pixels are not all equal."""
    x = np.arange(side)
    if depth == 8:
        vals = np.stack([(x // 16 + 40 * c) % 256 for c in range(channels)], axis=1).astype(">u1")
    else:
        vals = np.stack([(x * 7 + 9000 * c) % 65536 for c in range(channels)], axis=1).astype(">u2")
    return vals.tobytes()


def write_image(folder: Path, mode: str, side: int) -> Path:
    """Write a ``side`` x ``side`` image of ``mode`` (one of :data:`MODES`) into ``folder``."""
    png = {"rgb": (2, 8, 3), "rgba": (6, 8, 4), "la": (4, 8, 2), "rgb16": (2, 16, 3), "rgba16": (6, 16, 4)}
    png.update({"gray16": (0, 16, 1)})
    if mode in png:
        ct, depth, ch = png[mode]
        path = folder / f"{mode}.png"
        write_png(path, side, ct, depth, _pattern(side, ch, depth))
        return path
    size = (side, side)
    if mode == "tiff_i16":
        img, name = Image.new("I;16", size, 40000), "i16.tif"
    elif mode == "tiff_i":
        img, name = Image.new("I", size, 70000), "i.tif"
    elif mode == "tiff_f":
        img, name = Image.new("F", size, 123.4), "f.tif"
    elif mode == "p_trns":
        img, name = Image.new("P", size, 3), "p.png"
        img.putpalette(list(range(256)) * 3)
        img.info["transparency"] = bytes([255, 128, 0, 77] + [255] * 252)
    elif mode == "cmyk":
        img, name = Image.new("CMYK", size, (10, 200, 30, 40)), "cmyk.jpg"
    elif mode == "one":
        img, name = Image.new("1", size, 1), "one.png"
    else:
        raise ValueError(mode)
    path = folder / name
    kwargs = {"transparency": img.info["transparency"]} if mode == "p_trns" else {}
    if mode == "tiff_i16" or mode == "tiff_i" or mode == "tiff_f":
        kwargs["compression"] = "tiff_adobe_deflate"
    img.save(path, **kwargs)
    return path


_CHILD = r"""
import json, os, sys
from imgclf.config import PreprocessSpec
from imgclf.images.preprocess import preprocess_uint8, decode

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

spec = PreprocessSpec(height=64, width=64)
how, pairs = sys.argv[1], sys.argv[2:]
for warm, path in zip(pairs[::2], pairs[1::2]):
    # One forked child per image: imports are paid once, and every measurement starts from the same heap.
    pid = os.fork()
    if pid == 0:
        preprocess_uint8(warm, spec)     # loads the plugin and decoder: part of the baseline
        base = status("VmRSS:")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")                # reset VmHWM to the current RSS
        out = preprocess_uint8(path, spec) if how == "preprocess" else decode(path)
        print(json.dumps([path, status("VmHWM:") - base]), flush=True)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        sys.exit(f"measuring {path} failed")
"""


def peak_bytes_per_pixel(folder: Path, modes: tuple[str, ...], side: int, how: str = "preprocess") -> dict:
    """Peak RSS above the baseline, per pixel, of decoding a ``side``² image of each mode: ``{mode: B/px}``.

    Each image is decoded in a process of its own (forked from one that did the imports); the baseline
    is that process after decoding a 64 x 64 image of the same kind.
    """
    args, names = [], {}
    for mode in modes:
        (folder / mode / "warm").mkdir(parents=True, exist_ok=True)
        path = write_image(folder / mode, mode, side)
        args += [str(write_image(folder / mode / "warm", mode, 64)), str(path)]
        names[str(path)] = mode
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, how, *args], capture_output=True, text=True, timeout=600, env=env
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    return {names[path]: peak / (side * side) for path, peak in rows}
