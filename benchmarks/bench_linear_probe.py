"""Seconds per epoch of a head on a frozen backbone: running the backbone every epoch vs ``--linear-probe``.

Both runs train only the head (the backbone and its batch-norm statistics frozen); the first runs the
whole network on every batch of every epoch (``--freeze-epochs`` = ``--epochs``, augmentation off), the
second computes the backbone's embeddings once (before its first epoch) and trains the head on them, and
the third is the same probe again, which finds those embeddings in the on-disk cache (all three share one
cache folder; the first run fills the decode-once cache, so the probes' set-up does not include decoding).
Reported per epoch: the seconds of its training steps (first step's start to last step's end) and of the
whole epoch (which adds the checkpoint written after it, the same cost for both); and the set-up before
the first epoch (decoding, building, and for the probe the one embedding pass).

Usage::

    python benchmarks/bench_linear_probe.py                          # timm:resnet18 at 224x224 (needs timm)
    python benchmarks/bench_linear_probe.py --arch seed_resnet --size 64
    python benchmarks/bench_linear_probe.py --images 64 --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _dataset(root: Path, per_class: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        folder = root / "training" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def main() -> None:
    import torch

    from imgclf.config import AugmentSpec, PreprocessSpec, TrainConfig
    from imgclf.training.pipeline import train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="timm:resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=64, help="training images (two classes)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = _dataset(Path(tmp) / "data", a.images // 2, a.size)
        config = TrainConfig(
            arch=a.arch,
            epochs=a.epochs,
            batch_size=a.batch_size,
            preprocess=PreprocessSpec(height=a.size, width=a.size),
            augment=AugmentSpec(enabled=False),
            freeze_epochs=a.epochs,
            val_split=0.0,
            test_split=0.0,
            precision="fp32",
            device="cpu",
            keep="last",
        )
        results: dict = {}
        for name, cfg in (
            ("backbone every epoch", config),
            ("--linear-probe", config.replace(linear_probe=True)),
            ("--linear-probe, cached", config.replace(linear_probe=True)),
        ):
            timer = _Timer()
            out = Path(tmp) / f"{len(results)}.imgclf"
            result = train(data, out, cfg, cache_dir=Path(tmp) / "cache", callbacks=[timer])
            results[name] = (timer.steps, timer.epochs, timer.setup, result)
    print(
        f"{a.arch} at {a.size}x{a.size}, {a.images} images, batch {a.batch_size}, {a.epochs} epochs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for name, (steps, epochs, setup, _) in results.items():
        print(
            f"  {name:<22} steps per epoch {', '.join(f'{x:.3f}' for x in steps)} s; whole epochs "
            f"{', '.join(f'{x:.2f}' for x in epochs)} s; set-up {setup:.1f} s"
        )
    full, probe = results["backbone every epoch"], results["--linear-probe"]
    print(
        f"  --linear-probe: training steps {statistics.median(full[0]) / statistics.median(probe[0]):.0f}x "
        f"faster per epoch, whole epochs {statistics.median(full[1]) / statistics.median(probe[1]):.1f}x"
    )
    cached = results["--linear-probe, cached"]
    print(f"  set-up with the embeddings cached {cached[2]:.2f} s, computing them {probe[2]:.2f} s")


class _Timer:
    """Seconds from construction to the first epoch (set-up), of each epoch's steps, of each epoch."""

    def __init__(self) -> None:
        self.created, self.setup, self.started, self.last = time.perf_counter(), 0.0, 0.0, 0.0
        self.steps: list[float] = []
        self.epochs: list[float] = []

    def on_train_begin(self, *args) -> None:
        self.setup = time.perf_counter() - self.created

    def on_epoch_begin(self, *args) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, *args) -> None:
        self.last = time.perf_counter()

    def on_epoch_end(self, *args) -> None:
        self.steps.append(self.last - self.started)
        self.epochs.append(time.perf_counter() - self.started)

    def on_train_end(self, *args) -> None:
        pass


if __name__ == "__main__":
    main()
