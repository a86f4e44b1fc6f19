"""Inference threads on a busy machine: `imgclf predict` wall time with 1 thread, every core, and auto.

Each run is a fresh `imgclf predict` process (import, load, decode, classify) of the same images with a
seed_resnet at 64x64 (random weights time like trained ones). Settings alternate within each round so
drifting background load hits them alike; with --busy N, N extra processes spin on the CPU meanwhile
(another job on the machine). Prints the median per setting, and the machine's load. Not a test.

Usage::

    .venv/bin/python benchmarks/bench_threads.py --busy 1 --rounds 3
    .venv/bin/python benchmarks/bench_threads.py --busy 0 --rounds 3 --model m.imgclf --images dir/
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _spin() -> None:
    while True:
        pass


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _model_and_images(work: Path, count: int) -> tuple[str, str]:
    import imgclf
    from imgclf.config import PreprocessSpec
    from imgclf.data.synthetic import write_demo_dataset
    from imgclf.models import registry

    images = work / "demo"
    write_demo_dataset(images, scale=max(count / 360, 0.01), seed=1)
    model = registry.build("seed_resnet", 2, (64, 64), {})
    spec = PreprocessSpec(height=64, width=64)
    clf = imgclf.Classifier(model, ["Parasitized", "Uninfected"], spec, "seed_resnet", {})
    path = work / "seed.imgclf"
    imgclf.save(clf, path)
    return str(path), str(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=1, help="spinning processes meanwhile (default 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", help="image folder (default: demo images)")
    parser.add_argument("--model", help="model file (default: a random seed_resnet 64x64)")
    parser.add_argument("--count", type=int, default=256, help="demo images to make (default 256)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    settings = {"1": "1", f"{cores} (all cores)": str(cores), "auto": "auto"}
    with tempfile.TemporaryDirectory() as tmp:
        model, images = args.model, args.images
        if model is None or images is None:
            model, images = _model_and_images(Path(tmp), args.count)
        spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
        for p in spinners:
            p.start()
        times: dict[str, list[float]] = {name: [] for name in settings}
        loads = []
        try:
            time.sleep(2 if args.busy else 0)
            for _ in range(args.rounds):
                for name, value in settings.items():
                    drop = ("OMP_NUM_THREADS", "IMGCLF_THREADS")
                    env = {k: v for k, v in os.environ.items() if k not in drop}
                    loads.append(os.getloadavg()[0])
                    start = time.perf_counter()
                    subprocess.run(
                        [sys.executable, "-m", "imgclf", "predict", "-m", model, "-i", images,
                         "--threads", value],
                        check=True, stdout=subprocess.DEVNULL, env=env,
                    )  # fmt: skip
                    times[name].append(time.perf_counter() - start)
        finally:
            for p in spinners:
                p.terminate()
    print(f"CPU: {_cpu_name()}, {cores} usable cores; {args.busy} spinning process(es) meanwhile; "
          f"1-min load average during the runs {min(loads):.1f}-{max(loads):.1f}")  # fmt: skip
    for name, values in times.items():
        print(f"--threads {name:<14} median {statistics.median(values):6.2f} s   runs " +
              " ".join(f"{v:.2f}" for v in values))  # fmt: skip


if __name__ == "__main__":
    main()
