"""Peak memory of decoding one large low-entropy image per mode, in bytes per pixel above the baseline.

Each image is decoded in a fresh process (``preprocess_uint8`` to 64 x 64, the predict path, and
``decode``, the full-size RGB array); the peak is ``VmHWM`` after resetting it, minus the RSS before.

Usage::

    PYTHONPATH=src python benchmarks/decode_memory.py [SIDE]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "images"))

from memory_images import MODES, peak_bytes_per_pixel  # noqa: E402


def main() -> None:
    side = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    print(f"{side} x {side} = {side * side / 1e6:.1f} MP; bytes per pixel above baseline")
    print(f"{'mode':10} {'preprocess':>10} {'decode':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        pre = peak_bytes_per_pixel(Path(tmp) / "pre", MODES, side, "preprocess")
        full = peak_bytes_per_pixel(Path(tmp) / "full", MODES, side, "decode")
    for mode in MODES:
        print(f"{mode:10} {pre[mode]:10.1f} {full[mode]:8.1f}")


if __name__ == "__main__":
    main()
