"""ONNX vs PyTorch: fresh-process ``imgclf predict`` with a montage, batch throughput and peak memory.

One run, the same images for every figure: a seed_resnet model file (64x64, two classes; given with
``--model`` or built with random weights, which time the same as trained ones) is exported to .onnx, then

* ``imgclf predict`` of 16 images with ``--montage``, in a fresh process, from the .imgclf and the .onnx
  (median of ``--repeat`` runs; peak RSS of the process);
* batch throughput, decoding included (``clf.predict_proba(paths, batch_size=B)`` over 64 images), at
  batch 1 and 64, torch vs onnxruntime, each in its own fresh worker process (peak RSS of the worker).

Usage::

    python benchmarks/bench_onnx.py                       # about a minute on 2 cores
    python benchmarks/bench_onnx.py --model malaria.imgclf --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THROUGHPUT_IMAGES = 64


def _timed_child(argv: list[str]) -> tuple[float, int, str]:
    """Like :func:`_run` but measuring the child's own peak RSS via ``wait4``."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}")
    return seconds, usage.ru_maxrss // 1024, out


def worker(model: str, paths: list[str], batch: int, repeat: int) -> None:
    """In a fresh process: load, warm up, then images/s of predict_proba over ``paths`` at ``batch``."""
    from imgclf.cli.allocator import tune_allocator

    tune_allocator()  # as the CLI does, for both runtimes
    import imgclf

    clf = imgclf.load(model)
    clf.predict_proba(paths[:batch], batch_size=batch)  # warm-up
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        clf.predict_proba(paths, batch_size=batch)
        rates.append(len(paths) / (time.perf_counter() - start))
    print(json.dumps({"rate": statistics.median(rates), "torch": "torch" in sys.modules}))


def _setup(folder: Path, model: str | None) -> tuple[Path, Path, list[str]]:
    import imgclf
    from imgclf.config import PreprocessSpec
    from imgclf.data.synthetic import write_demo_dataset
    from imgclf.interop.onnx_export import export_onnx
    from imgclf.models import registry

    write_demo_dataset(folder / "demo", scale=0.7, seed=7)
    paths = sorted(str(p) for p in (folder / "demo" / "testing").rglob("*") if p.is_file())
    if model is None:
        net = registry.build("seed_resnet", 2, (64, 64), {})
        clf = imgclf.Classifier(net, ["Parasitized", "Uninfected"], PreprocessSpec(), "seed_resnet", {})
        model = str(folder / "seed.imgclf")
        imgclf.save(clf, model)
    start = time.perf_counter()
    result = export_onnx(model, folder / "model.onnx", parity_images=folder / "demo" / "testing")
    print(
        f"export + parity gate: {time.perf_counter() - start:.1f} s, {result.file_bytes} bytes, "
        f"max |Δp| {result.parity['max_abs_diff']:.3g} on {result.parity['inputs']} inputs"
    )
    return Path(model), folder / "model.onnx", paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an .imgclf model file (default: a random seed_resnet)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median; default 3)")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "PATHS_JSON", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], json.loads(Path(args.worker[1]).read_text()), int(args.worker[2]), args.repeat)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from common import machine

    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, onnx_file, paths = _setup(folder, args.model)
        paths = paths[:THROUGHPUT_IMAGES]
        sixteen = paths[:16]
        print("\nfresh process: imgclf predict of 16 images with --montage (median of runs; peak RSS)")
        for name, path in (("imgclf", model), ("onnx", onnx_file)):
            runs = [
                _timed_child(
                    [
                        sys.executable,
                        "-m",
                        "imgclf",
                        "predict",
                        "--model",
                        str(path),
                        "--images",
                        *sixteen,
                        "--montage",
                        str(folder / f"{name}.png"),
                    ]
                )
                for _ in range(args.repeat)
            ]
            secs = sorted(r[0] for r in runs)
            print(
                f"  {name:7s} {statistics.median(secs):.2f} s (runs {', '.join(f'{s:.2f}' for s in secs)}), "
                f"peak RSS {max(r[1] for r in runs)} MiB"
            )
        listing = folder / "paths.json"
        listing.write_text(json.dumps(paths))
        print(f"\nthroughput, decoding included ({len(paths)} images; fresh worker per figure; peak RSS)")
        for batch in (1, 64):
            for name, path in (("torch", model), ("onnxruntime", onnx_file)):
                secs, rss, out = _timed_child(
                    [
                        sys.executable,
                        __file__,
                        "--repeat",
                        str(args.repeat),
                        "--worker",
                        str(path),
                        str(listing),
                        str(batch),
                    ]
                )
                result = json.loads(out)
                print(
                    f"  batch {batch:2d}  {name:11s} {result['rate']:7.1f} images/s  peak RSS {rss} MiB"
                    f"  (torch imported: {result['torch']})"
                )


if __name__ == "__main__":
    main()
