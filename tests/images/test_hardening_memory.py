"""Peak memory of decoding large low-entropy images of every mode stays within 12 bytes per pixel.

Each image is decoded in a fresh process (see ``tests/images/memory_images.py``); before the strip-wise
conversion, RGBA and LA cost ~48 bytes/pixel, 16-bit gray ~19, ``I``/``F`` TIFF ~20, palette with
transparency ~45.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from memory_images import MODES, peak_bytes_per_pixel

SIDE = 2500  # 6.25 MP: big enough that the per-pixel cost dominates, small enough to stay fast
LIMIT = 12.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status"),
]


def test_decoding_every_mode_peaks_below_12_bytes_per_pixel(tmp_path: Path) -> None:
    per_pixel = peak_bytes_per_pixel(tmp_path, MODES, SIDE)
    assert set(per_pixel) == set(MODES)
    over = {mode: round(b, 1) for mode, b in per_pixel.items() if b > LIMIT}
    assert not over, f"bytes per pixel above {LIMIT}: {over} (all: {per_pixel})"
