"""ONNX vs PyTorch: fresh-process ``imgclf predict`` with a montage, batch throughput and peak memory.

One run, the same images for every figure: a seed_resnet model file (64x64, two classes; given with
``--model`` or built with random weights, which time the same as trained ones) is exported to .onnx, then

* ``imgclf predict`` of 16 images with ``--montage``, in a fresh process, from the .imgclf and the .onnx
  (median of ``--repeat`` runs; peak RSS of the process);
* batch throughput, decoding included (``clf.predict_proba(paths, batch_size=B)`` over 64 images), at
  batch 1 and 64, torch vs onnxruntime, each in its own fresh worker process (peak RSS of the worker).

The parent process imports neither torch nor imgclf (set-up runs in a child), so each child's peak RSS
(``wait4``; Linux counts what a child inherits at fork) is its own.

Usage::

    python benchmarks/bench_onnx.py                       # a few minutes on 2 cores
    python benchmarks/bench_onnx.py --model malaria.imgclf --repeat 5 --threads 1
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


def _child(argv: list[str]) -> str:
    """Run ``argv`` in a fresh process; its stdout."""
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-2000:]}")
    return proc.stdout


def _measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run ``argv`` in a fresh process: wall seconds, its peak RSS in MiB (``wait4``), its stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"failed ({code}): {' '.join(argv)}")
    return seconds, usage.ru_maxrss // 1024, out


def worker(model: str, paths: list[str], batch: int, repeat: int, threads: int) -> None:
    """In a fresh process: load, warm up, then images/s of predict_proba over ``paths`` at ``batch``."""
    from imgclf.cli.allocator import tune_allocator

    tune_allocator()  # as the CLI does, for both runtimes
    import imgclf

    if model.endswith(".onnx"):
        clf = imgclf.load(model, threads=threads or None)
    else:
        import torch

        if threads:
            torch.set_num_threads(threads)
        clf = imgclf.load(model)
    clf.predict_proba(paths[:batch], batch_size=batch)  # warm-up
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        clf.predict_proba(paths, batch_size=batch)
        rates.append(len(paths) / (time.perf_counter() - start))
    print(json.dumps({"rate": statistics.median(rates), "torch": "torch" in sys.modules}))


def setup(folder: Path, model: str | None) -> None:
    """In a child: demo images, the model file (random seed_resnet unless given), the .onnx; JSON out."""
    sys.path.insert(0, str(Path(__file__).parent))
    from common import machine

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
    seconds, parity = time.perf_counter() - start, result.parity
    print(
        json.dumps(
            {
                "machine": machine(),
                "model": model,
                "onnx": str(folder / "model.onnx"),
                "paths": paths,
                "export": f"export + parity gate: {seconds:.1f} s, {result.file_bytes} bytes, "
                f"max |Δp| {parity['max_abs_diff']:.3g} on {parity['inputs']} inputs",
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an .imgclf model file (default: a random seed_resnet)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median; default 3)")
    parser.add_argument("--threads", type=int, default=0, help="throughput threads (default: each runtime's)")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "PATHS_JSON", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--setup", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        paths = json.loads(Path(args.worker[1]).read_text())
        worker(args.worker[0], paths, int(args.worker[2]), args.repeat, args.threads)
        return
    if args.setup:
        setup(Path(args.setup), args.model)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        extra = ["--model", args.model] if args.model else []
        info = json.loads(_child([sys.executable, __file__, "--setup", tmp, *extra]))
        print(info["machine"])
        print(info["export"])
        paths = info["paths"][:THROUGHPUT_IMAGES]
        print("\nfresh process: imgclf predict of 16 images with --montage (median of runs; peak RSS)")
        for name, path in (("imgclf", info["model"]), ("onnx", info["onnx"])):
            argv = [sys.executable, "-m", "imgclf", "predict", "--model", path, "--images", *paths[:16]]
            runs = [_measured([*argv, "--montage", str(folder / f"{name}.png")]) for _ in range(args.repeat)]
            secs = sorted(r[0] for r in runs)
            print(
                f"  {name:7s} {statistics.median(secs):.2f} s (runs {', '.join(f'{s:.2f}' for s in secs)}), "
                f"peak RSS {max(r[1] for r in runs)} MiB"
            )
        listing = folder / "paths.json"
        listing.write_text(json.dumps(paths))
        threads = args.threads or "runtime default"
        print(f"\nthroughput, decoding included ({len(paths)} images; threads: {threads}; fresh worker each)")
        for batch in (1, 64):
            for name, path in (("torch", info["model"]), ("onnxruntime", info["onnx"])):
                argv = [
                    sys.executable,
                    __file__,
                    "--repeat",
                    str(args.repeat),
                    "--threads",
                    str(args.threads),
                ]
                _, rss, out = _measured([*argv, "--worker", path, str(listing), str(batch)])
                result = json.loads(out)
                print(
                    f"  batch {batch:2d}  {name:11s} {result['rate']:7.1f} images/s  peak RSS {rss} MiB"
                    f"  (torch imported: {result['torch']})"
                )


if __name__ == "__main__":
    main()
