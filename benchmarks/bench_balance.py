"""Does ``--balance`` help on an imbalanced two-class set? Prints testing accuracy, balanced accuracy and
macro-F1 per ``--balance`` mode.

Synthetic cells (:func:`imgclf.data.synthetic_cells.render_cell`): training holds ``--majority``
Uninfected and ``--minority`` Parasitized cells; validation 40 + 40 and testing 100 + 100 are balanced, so
balanced accuracy on testing is what an imbalance-aware model should raise. small_cnn, 48x48, fp32, CPU,
the ``stable`` recipe, 12 epochs, batch 16.

Usage::

    python benchmarks/bench_balance.py --root /tmp/imb --minority 25 --seeds 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

import imgclf
from imgclf.config import PreprocessSpec, TrainConfig
from imgclf.data.synthetic_cells import render_cell


def make(root: Path, majority: int, minority: int) -> Path:
    counts = {
        "training": {"Uninfected": majority, "Parasitized": minority},
        "validation": {"Uninfected": 40, "Parasitized": 40},
        "testing": {"Uninfected": 100, "Parasitized": 100},
    }
    for s, (split, per) in enumerate(counts.items()):
        for kind, n in per.items():
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng(np.random.SeedSequence([7, s, len(kind), i]))
                rgb, alpha = render_cell(rng, kind)
                on_black = np.clip(rgb * alpha + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
                Image.fromarray(np.ascontiguousarray(on_black)).save(folder / f"{i:04d}.png")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--majority", type=int, default=400)
    p.add_argument("--minority", type=int, default=25)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    args = p.parse_args()
    data = make(args.root / "data", args.majority, args.minority)
    for seed in args.seeds:
        for mode in ("none", "weights", "sampler"):
            config = TrainConfig.from_recipe(
                "stable", arch="small_cnn", epochs=12, batch_size=16, seed=seed, balance=mode,
                preprocess=PreprocessSpec(height=48, width=48), precision="fp32", device="cpu",
            )  # fmt: skip
            start = time.time()
            model = args.root / f"m-{mode}-{seed}.imgclf"
            ev = imgclf.train(data, model, config, force=True, progress=False).evaluation
            assert ev is not None
            print(
                f"seed {seed} balance {mode:8s} testing accuracy {ev.accuracy:.3f} balanced "
                f"{ev.balanced_accuracy:.3f} macro-F1 {ev.macro_f1:.3f} ({time.time() - start:.0f}s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
