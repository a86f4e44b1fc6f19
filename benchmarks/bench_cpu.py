"""CPU speed figures for imgclf: training, cache build, model load, prediction, fresh-process CLI.

Prints Markdown tables and the machine they were measured on. Not a test: run it on a quiet machine.

Usage::

    .venv/bin/python benchmarks/bench_cpu.py            # everything but the full training run
    .venv/bin/python benchmarks/bench_cpu.py --full     # also time `imgclf train` on the seed-size demo data
    .venv/bin/python benchmarks/bench_cpu.py --compile  # also time torch.compile (slow first compile)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import bare_loop_rate, fit_rate, machine, median_time, table
from PIL import Image

from imgclf.classifier import Classifier
from imgclf.cli.allocator import tune_allocator
from imgclf.config import PreprocessSpec
from imgclf.data.decode import load_split, open_cache
from imgclf.data.folders import scan_dataset
from imgclf.data.synthetic import write_demo_dataset
from imgclf.models import registry

SPEC = PreprocessSpec()


def bench_training(args: argparse.Namespace) -> None:
    rows = []
    variants = [(32, "fp32", False), (32, "fp32", True), (32, "bf16", True), (128, "bf16", True)]
    for batch, precision, cl in variants:
        for compile_ in [False, True] if args.compile else [False]:
            steps = max(4, 352 // batch)
            bare = bare_loop_rate("cpu", batch, precision, cl, compile_, steps)
            ours = fit_rate("cpu", batch, precision, cl, compile_, batch * steps)
            rows.append(
                [
                    batch,
                    precision,
                    "channels_last" if cl else "NCHW",
                    "yes" if compile_ else "no",
                    f"{bare:.1f}",
                    f"{ours:.1f}",
                    f"{100 * (ours / bare - 1):+.1f} %",
                ]
            )
    table(
        "Training throughput (seed_resnet 64x64, full augmentation), images/s",
        ["batch", "precision", "layout", "compile", "bare PyTorch loop", "imgclf fit", "imgclf vs bare"],
        rows,
    )


def _pillow_chunk(paths: list[str]) -> int:
    """Pillow's own decode + resize, nothing else (the reference rate)."""
    for p in paths:
        with Image.open(p) as img:
            img.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    return len(paths)


def bench_cache(work: Path) -> None:
    demo = work / "demo8"
    write_demo_dataset(demo, scale=8)
    paths = [str(p) for p in sorted(demo.rglob("*")) if p.is_file()]
    cores = len(os.sched_getaffinity(0))
    pillow = len(paths) / min(median_time(lambda: _pillow_chunk(paths), repeat=1) for _ in range(3))
    parts = [paths[i::cores] for i in range(cores)]
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        pillow_n = len(paths) / min(
            median_time(lambda: pool.map(_pillow_chunk, parts), repeat=1) for _ in range(3)
        )
    samples = [s for split in scan_dataset(demo).splits.values() for s in split]
    colds, warms = [], []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            load_split(samples, SPEC, cache=open_cache(SPEC, tmp))
            colds.append(len(samples) / (time.perf_counter() - start))
            start = time.perf_counter()
            load_split(samples, SPEC, cache=open_cache(SPEC, tmp))
            warms.append(time.perf_counter() - start)
    cold, warm = max(colds), min(warms)
    table(
        f"Decode-once cache ({len(paths)} demo images of ~130 px, best of 3)",
        ["what", "figure"],
        [
            ["Pillow decode + resize, one process", f"{pillow:.0f} images/s"],
            [f"Pillow decode + resize, {cores} processes", f"{pillow_n:.0f} images/s"],
            [
                f"imgclf cache build, {cores} worker processes",
                f"{cold:.0f} images/s ({cold / (pillow * cores):.0%} of Pillow x {cores} cores, "
                f"{cold / pillow_n:.0%} of Pillow in {cores} processes)",
            ],
            [f"imgclf warm cache, {len(samples)} images", f"{warm * 1000:.1f} ms"],
        ],
    )


def bench_predict(demo: Path, work: Path) -> Path:
    torch.manual_seed(0)
    clf = Classifier(
        registry.build("seed_resnet", 2, (64, 64)),
        ["Parasitized", "Uninfected"],
        SPEC,
        "seed_resnet",
        {},
    )
    import imgclf

    model = work / "bench.imgclf"
    imgclf.save(clf, model)
    load_s = median_time(lambda: imgclf.load(model), repeat=7)
    loaded = imgclf.load(model)
    image = str(next(demo.rglob("*.png")))
    one = median_time(lambda: loaded.predict([image]), repeat=50, warmup=5)
    batch = np.random.default_rng(0).integers(0, 256, size=(512, 64, 64, 3), dtype=np.uint8)
    rows = [
        ["model file load (imgclf.load)", f"{load_s * 1000:.1f} ms"],
        ["one image, decode + forward, in process", f"{one * 1000:.1f} ms"],
    ]
    for bs in (64, 256):
        t = median_time(lambda bs=bs: loaded.predict_proba_uint8(batch, batch_size=bs), repeat=3)
        rows.append([f"batch prediction, float32, batch {bs}", f"{len(batch) / t:.0f} images/s"])
    table("Prediction (seed_resnet, CPU)", ["what", "figure"], rows)
    return model


def bench_fresh_process(demo: Path, model: Path, work: Path) -> None:
    def run(cmd: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    exe = [sys.executable, "-m", "imgclf"]
    testing = str(demo / "testing")
    predict = exe + [
        "predict",
        "--model",
        str(model),
        "--images",
        testing,
        "--sample",
        "16",
        "--montage",
        str(work / "m.png"),
    ]
    rows = [
        [
            "python -c 'import torch' (the floor)",
            f"{min(run([sys.executable, '-c', 'import torch']) for _ in range(3)):.2f} s",
        ],
        ["imgclf predict, 16 images + montage", f"{min(run(predict) for _ in range(3)):.2f} s"],
    ]
    table("Fresh process wall time (best of 3)", ["command", "wall time"], rows)


def bench_full_train(demo: Path, work: Path) -> None:
    model = work / "full.imgclf"
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "imgclf",
            "train",
            "--dataset",
            str(demo),
            "--model",
            str(model),
            "--cache-dir",
            str(work / "cache"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    report = json.loads((work / "full-run" / "report.json").read_text())
    table(
        "Seed-size `imgclf train` (25 epochs, default recipe, cold cache)",
        ["what", "figure"],
        [
            ["wall time, whole process", f"{wall:.1f} s"],
            ["test accuracy", f"{report['report']['accuracy']:.4f}"],
            ["vs the Keras recipe's ~230 s (perf-notes, Xeon)", f"{230 / wall:.2f}x faster"],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="also time the seed-size `imgclf train` run")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    parser.add_argument("--only", choices=("train", "cache", "predict"), help="run one section")
    args = parser.parse_args()
    tune_allocator()  # as the imgclf command line does
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = work / "demo"
        write_demo_dataset(demo)
        if args.only in (None, "train"):
            bench_training(args)
        if args.only in (None, "cache"):
            bench_cache(work)
        if args.only in (None, "predict"):
            model = bench_predict(demo, work)
            bench_fresh_process(demo, model, work)
        if args.full:
            bench_full_train(demo, work)


if __name__ == "__main__":
    main()
