"""The seed recipe against ``--recipe stable``: accuracy, stability across seeds and wall time.

Generates datasets harder than the demo data with :func:`imgclf.data.synthetic.write_demo_dataset`
(more noise, smaller and fainter stains, fewer images, three imbalanced classes), trains ``seed_resnet``
with each recipe for several seeds and prints, per dataset and recipe: mean and worst test accuracy of the
saved weights, mean and worst last-epoch validation accuracy (stability), and wall time per 1,000 training
images seen. Not a test; the defaults are sized for a busy 2-core machine (about an hour there).

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_recipes.py                      # the small run
    PYTHONPATH=src .venv/bin/python benchmarks/bench_recipes.py --size 64 --epochs 25 --scale 3 --seeds 10
    PYTHONPATH=src .venv/bin/python benchmarks/bench_recipes.py --variant no_ema:ema=0 --recipes stable
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import machine, table

from imgclf.classifier import predict_logits
from imgclf.config import PreprocessSpec, TrainConfig
from imgclf.data.decode import load_split
from imgclf.data.folders import scan_dataset
from imgclf.data.synthetic import SPLITS, write_demo_dataset
from imgclf.training.loop import fit
from imgclf.training.schedule import steps_per_epoch
from imgclf.training.state import create_state, final_weights


def _counts(per_class: dict[str, tuple[int, int, int]], scale: float) -> dict[str, dict[str, int]]:
    """``{class: (training, validation, testing)}`` scaled into the generator's ``{split: {class: n}}``."""
    return {s: {c: max(1, round(n[i] * scale)) for c, n in per_class.items()} for i, s in enumerate(SPLITS)}


def datasets(scale: float) -> dict[str, dict[str, Any]]:
    """The benchmark's datasets: generator keyword arguments by name (easiest first)."""
    return {
        "demo": {"counts": _counts({"Parasitized": (60, 20, 50), "Uninfected": (60, 20, 50)}, scale)},
        "faint": {
            "counts": _counts({"Parasitized": (80, 25, 60), "Uninfected": (80, 25, 60)}, scale),
            "noise": 12.0,
            "stain_size": 0.75,
            "stain_strength": 0.6,
        },
        "3-class-imbalanced": {
            "counts": _counts(
                {"Uninfected": (100, 20, 40), "Ring": (40, 15, 40), "Dot": (30, 15, 40)}, scale
            ),
            "noise": 8.0,
            "stain_size": 0.85,
        },
    }


def run_one(config: TrainConfig, splits: dict[str, Any], num_classes: int) -> dict[str, float]:
    """Train once; the test accuracy of the weights ``keep`` saves, last val accuracy, seconds."""
    start, cpu_start = time.perf_counter(), time.process_time()
    state = fit(config, create_state(config, num_classes), splits["training"], splits["validation"])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model, _ = final_weights(config, state)
    test = splits["testing"]
    logits = predict_logits(model, test.images, config.preprocess, batch_size=config.eval_batch_size)
    accuracy = (logits.argmax(1) == torch.from_numpy(test.labels)).float().mean().item()
    steps, batch = steps_per_epoch(len(splits["training"]), config.batch_size)
    return {
        "test_accuracy": accuracy,
        "last_val_accuracy": state.history[-1]["val_accuracy"],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "images_seen": steps * batch * state.epoch,
    }


def _variant(text: str) -> tuple[str, str, dict[str, Any]]:
    """``NAME:key=value,key=value`` on top of the stable preset (``NAME@seed:...`` on top of seed)."""
    name, _, changes = text.partition(":")
    name, _, base = name.partition("@")
    values = {k: json.loads(v) for k, v in (item.split("=", 1) for item in changes.split(",") if item)}
    return name, base or "stable", values


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds per recipe and dataset (default 5)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from this one (default 0)")
    p.add_argument("--epochs", type=int, default=8, help="epochs per run (default 8)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every image count (default 1)")
    p.add_argument("--datasets", nargs="*", help="subset of: " + ", ".join(datasets(1.0)))
    p.add_argument("--recipes", nargs="*", default=["seed", "stable"], help="presets to run")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="extra recipe NAME[@BASE]:key=json,... e.g. no_ema:ema=0 (for ablations)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", help="also write every run's numbers to this file")
    p.add_argument("--table", nargs="*", help="only print the table of these --json files (merged)")
    args = p.parse_args()
    if args.table:
        merged: dict[str, dict[str, list[dict[str, float]]]] = {}
        for path in args.table:
            for ds_name, by_recipe in json.loads(Path(path).read_text()).items():
                for label, runs in by_recipe.items():
                    merged.setdefault(ds_name, {}).setdefault(label, []).extend(runs)
        _report(merged, args)
        return 0
    torch.set_num_threads(args.threads)
    print(machine())
    spec = PreprocessSpec(height=args.size, width=args.size)
    recipes = {name: (name, {}) for name in args.recipes}
    recipes.update({name: (base, values) for name, base, values in map(_variant, args.variant)})
    chosen = {k: v for k, v in datasets(args.scale).items() if not args.datasets or k in args.datasets}
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ds_name, look in chosen.items():
            root = Path(tmp) / ds_name
            write_demo_dataset(root, seed=7, **look)
            ds = scan_dataset(root)
            splits = {s: load_split(ds.splits[s], spec) for s in SPLITS}
            results[ds_name] = {}
            for label, (preset, values) in recipes.items():
                runs = results[ds_name][label] = []
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    config = TrainConfig.from_recipe(
                        preset,
                        epochs=args.epochs,
                        seed=seed,
                        preprocess=spec.to_dict(),
                        device="cpu",
                        precision="fp32",
                        **values,
                    )
                    runs.append(run_one(config, splits, len(ds.class_names)))
                    print(f"{ds_name} {label} seed {seed}: {runs[-1]}", file=sys.stderr, flush=True)
    _report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _report(results: dict[str, dict[str, list[dict[str, float]]]], args: argparse.Namespace) -> None:
    rows = []
    for ds_name, by_recipe in results.items():
        for label, runs in by_recipe.items():
            test = [r["test_accuracy"] for r in runs]
            val = [r["last_val_accuracy"] for r in runs]
            seen = sum(r["images_seen"] for r in runs)
            per_k = 1000 * sum(r["seconds"] for r in runs) / seen
            cpu = [r["cpu_seconds"] for r in runs if "cpu_seconds" in r]
            cpu_k = f"{1000 * sum(cpu) / seen:.1f}" if len(cpu) == len(runs) else "-"
            rows.append(
                [
                    ds_name,
                    label,
                    f"{statistics.mean(test):.3f}",
                    f"{min(test):.3f}",
                    f"{statistics.mean(val):.3f}",
                    f"{min(val):.3f}",
                    f"{per_k:.1f}",
                    cpu_k,
                    str(len(runs)),
                ]
            )
    table(
        f"seed_resnet, {args.size}x{args.size}, {args.epochs} epochs, {args.seeds} seeds, fp32, "
        f"{args.threads} thread(s)",
        [
            "dataset",
            "recipe",
            "test acc mean",
            "test acc worst",
            "last val acc mean",
            "last val acc worst",
            "wall s per 1k images seen",
            "CPU s per 1k images seen",
            "runs",
        ],
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
