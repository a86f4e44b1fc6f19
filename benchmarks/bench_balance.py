"""Does ``--balance`` help on an imbalanced two-class set? Prints testing accuracy, balanced accuracy and
macro-F1 per recipe, seed and ``--balance`` mode.

Synthetic cells (:func:`imgclf.data.synthetic.write_demo_dataset`): training holds ``--majority``
Uninfected and ``--minority`` Parasitized cells, validation a quarter of each (at least 2), so it is as
imbalanced as training; testing is 150 + 150, balanced, so its accuracy is the balanced accuracy an
imbalance-aware model should raise. ``--look`` makes the stains fainter and the noise stronger (the
default look is easy: every mode is near 1.0). small_cnn, fp32, CPU, batch 32.

Usage::

    python benchmarks/bench_balance.py --root /tmp/imb --minority 40 --look 8 0.8 0.6 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import imgclf
from imgclf.config import PreprocessSpec, TrainConfig
from imgclf.data.synthetic import write_demo_dataset


def make(root: Path, majority: int, minority: int, look: tuple[float, float, float]) -> Path:
    """Write the three splits under ``root`` (once: an existing folder is reused as it is)."""
    if not root.exists():
        counts = {
            "training": {"Uninfected": majority, "Parasitized": minority},
            "validation": {"Uninfected": max(2, majority // 4), "Parasitized": max(2, minority // 4)},
            "testing": {"Uninfected": 150, "Parasitized": 150},
        }
        noise, size, strength = look
        write_demo_dataset(root, counts=counts, noise=noise, stain_size=size, stain_strength=strength)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--majority", type=int, default=400)
    p.add_argument("--minority", type=int, default=40)
    p.add_argument(
        "--look", type=float, nargs=3, default=[3.0, 1.0, 1.0], metavar=("NOISE", "SIZE", "OPACITY")
    )
    p.add_argument("--recipes", nargs="+", default=["seed", "stable"])
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--size", type=int, default=48, help="input height and width")
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--modes", nargs="+", default=["none", "weights", "sampler"])
    args = p.parse_args()
    data = make(args.root / "data", args.majority, args.minority, tuple(args.look))
    for recipe in args.recipes:
        for seed in args.seeds:
            for mode in args.modes:
                config = TrainConfig.from_recipe(
                    recipe, arch="small_cnn", epochs=args.epochs, seed=seed, balance=mode,
                    preprocess=PreprocessSpec(height=args.size, width=args.size), precision="fp32",
                    device="cpu",
                )  # fmt: skip
                start = time.time()
                model = args.root / f"m-{recipe}-{mode}-{seed}.imgclf"
                ev = imgclf.train(data, model, config, force=True, progress=False).evaluation
                assert ev is not None
                print(
                    f"recipe {recipe:6s} seed {seed} balance {mode:8s} testing accuracy {ev.accuracy:.3f} "
                    f"balanced {ev.balanced_accuracy:.3f} macro-F1 {ev.macro_f1:.3f} "
                    f"({time.time() - start:.0f}s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
