"""How long ``imgclf.load`` takes on a seed_resnet model file (after imports), and its peak memory.

Usage::

    python benchmarks/bench_load.py            # prints median/min load time over 20 loads
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import imgclf
from imgclf.classifier import Classifier
from imgclf.config import PreprocessSpec
from imgclf.models import registry


def main() -> None:
    torch.manual_seed(0)
    model = registry.build("seed_resnet", 2, (64, 64))
    clf = Classifier(model, ["Parasitized", "Uninfected"], PreprocessSpec(), "seed_resnet", {})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.imgclf"
        imgclf.save(clf, path)
        imgclf.load(path)  # warm-up: first-call costs are not what we measure
        times = []
        for _ in range(20):
            start = time.perf_counter()
            imgclf.load(path)
            times.append(time.perf_counter() - start)
        verify_start = time.perf_counter()
        assert imgclf.verify(path).ok
        verify_s = time.perf_counter() - verify_start
        size = path.stat().st_size
    print(
        f"seed_resnet file: {size / 1e6:.2f} MB; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"imgclf.load: median {statistics.median(times) * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms")
    print(f"imgclf.verify: {verify_s * 1e3:.1f} ms")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
