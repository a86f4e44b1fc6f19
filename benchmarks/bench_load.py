"""How long ``imgclf.load`` takes on a seed_resnet model file (after imports), and how large the file is.

The model is the default seed_resnet (random weights load like trained ones) for 64x64 RGB and two
classes, saved once; each load is timed separately after one warm-up load. The test suite asserts no
load times (they vary with the machine's load); the figures come from here.

Usage::

    python benchmarks/bench_load.py            # median/p90/min load time over 30 loads
    python benchmarks/bench_load.py 100        # over 100 loads
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine

import imgclf
from imgclf.classifier import Classifier
from imgclf.config import PreprocessSpec
from imgclf.models import registry


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> None:
    loads = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    torch.manual_seed(0)
    model = registry.build("seed_resnet", 2, (64, 64))
    clf = Classifier(model, ["Parasitized", "Uninfected"], PreprocessSpec(), "seed_resnet", {})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.imgclf"
        imgclf.save(clf, path)
        imgclf.load(path)  # warm-up: first-call costs are not what we measure
        times = []
        for _ in range(loads):
            start = time.perf_counter()
            imgclf.load(path)
            times.append(time.perf_counter() - start)
        verify_start = time.perf_counter()
        assert imgclf.verify(path).ok
        verify_s = time.perf_counter() - verify_start
        size = path.stat().st_size
    print(machine())
    print(f"seed_resnet file: {size / 1e6:.2f} MB ({size} bytes)")
    print(
        f"imgclf.load over {loads} loads: median {statistics.median(times) * 1e3:.1f} ms, "
        f"p90 {percentile(times, 0.9) * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms"
    )
    print(f"imgclf.verify: {verify_s * 1e3:.1f} ms")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
