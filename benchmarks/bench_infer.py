"""Inference speed per runtime and precision: torch fp32/bf16, onnxruntime fp32/int8, OpenVINO fp32/int8.

For each model (the seed ResNet at 64x64 and at 224x224 by default, random weights, which time the same
as trained ones; ``--model`` times a model file instead) the script measures, on already-preprocessed
float input (decoding is not timed):

* batch 1: images/s, and p50 / p99 latency of single calls;
* batch 64: images/s.

Every runtime gets the same explicit thread count (``--threads``, printed): torch intra-op threads,
onnxruntime ``intra_op_num_threads``, OpenVINO ``INFERENCE_NUM_THREADS`` (one stream, f32 inference
precision for the fp32 row, so it does not silently run bf16). The int8 models are imgclf's static QDQ
quantization (:mod:`imgclf.interop.onnx_quantize`) calibrated on ``--calibration`` seeded synthetic images
(the ranges, not the kernels, depend on them); OpenVINO runs that same QDQ graph (its CPU plugin turns
QDQ into int8 kernels). Runtimes that are not installed, or bf16 on a CPU without it, are reported as
skipped.

Usage::

    python benchmarks/bench_infer.py                          # both sizes, a few minutes on 2 cores
    python benchmarks/bench_infer.py --sizes 64 --threads 2 --seconds 5 --json out.json
    python benchmarks/bench_infer.py --quick                  # a few iterations: does every path run?
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 64
PATHS = ("torch fp32", "torch bf16", "onnxruntime fp32", "onnxruntime int8", "openvino fp32", "openvino int8")


def cpu_line() -> str:
    """The CPU model and its bf16/int8 flags, from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "unknown CPU"
    lines = text.splitlines()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown CPU")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}; {cores} cores available; flags: {' '.join(f for f in wanted if f in flags) or 'none'}"


def time_path(
    run: Callable[[np.ndarray], Any], x1: np.ndarray, xb: np.ndarray, seconds: float, min_iters: int
) -> dict[str, float]:
    """Warm up, then batch-1 latencies and batch-``len(xb)`` throughput of ``run``."""
    for _ in range(2):
        run(x1)
    run(xb)
    lat: list[float] = []
    start = time.perf_counter()
    while len(lat) < min_iters or (time.perf_counter() - start < seconds and len(lat) < 100_000):
        t = time.perf_counter()
        run(x1)
        lat.append(time.perf_counter() - t)
    n = 0
    start = time.perf_counter()
    while n < min_iters or time.perf_counter() - start < seconds:
        run(xb)
        n += 1
    batch_s = time.perf_counter() - start
    lat_ms = np.array(lat) * 1000
    return {
        "batch1_images_per_s": len(lat) / (float(lat_ms.sum()) / 1000),
        "batch1_p50_ms": float(np.percentile(lat_ms, 50)),
        "batch1_p99_ms": float(np.percentile(lat_ms, 99)),
        "batch1_calls": len(lat),
        f"batch{len(xb)}_images_per_s": n * len(xb) / batch_s,
        f"batch{len(xb)}_calls": n,
    }


def _model_file(arch: str, size: int, folder: Path) -> Path:
    """A random-weight ``arch`` model file at ``size``x``size``, two classes."""
    import torch

    import imgclf
    from imgclf.classifier import Classifier
    from imgclf.config import PreprocessSpec
    from imgclf.models import registry

    torch.manual_seed(0)
    model = registry.build(arch, 2, (size, size), {})
    path = folder / f"{arch}_{size}.imgclf"
    imgclf.save(Classifier(model, ["a", "b"], PreprocessSpec(height=size, width=size), arch, {}), path)
    return path


def _runners(model_path: Path, folder: Path, threads: int, calibration: int) -> dict[str, Any]:
    """One callable (float NCHW input -> output) per path, or the reason it is skipped."""
    import torch

    import imgclf
    from imgclf.interop.onnx_export import export_onnx
    from imgclf.interop.onnx_quantize import quantize_bytes
    from imgclf.interop.onnx_runtime import new_session, read_onnx_bytes, run_session
    from imgclf.precision import native_bf16

    clf = imgclf.load(model_path)
    spec = clf.preprocess
    out: dict[str, Any] = {}
    net = clf.model

    def torch_run(dtype: Any) -> Callable[[np.ndarray], Any]:
        def run(x: np.ndarray) -> Any:
            t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            with (
                torch.inference_mode(),
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None),
            ):
                return net(t).float()

        return run

    out["torch fp32"] = torch_run(None)
    native = native_bf16()
    out["torch bf16"] = torch_run(torch.bfloat16) if native else "skipped: no native bf16 on this CPU"

    fp32_path = folder / f"{model_path.stem}.onnx"
    export_onnx(model_path, fp32_path)
    fp32 = read_onnx_bytes(fp32_path)
    rng = np.random.default_rng(20261206)
    calib = rng.integers(0, 256, size=(calibration, spec.height, spec.width, 3), dtype=np.uint8)
    int8 = quantize_bytes(fp32, calib, spec)
    int8_path = folder / f"{model_path.stem}.int8.onnx"
    int8_path.write_bytes(int8)
    for name, data in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8)):
        session = new_session(data, name, threads)
        out[name] = lambda x, s=session: run_session(s, x)
    try:
        import openvino as ov
    except ImportError:
        for name in ("openvino fp32", "openvino int8"):
            out[name] = "skipped: openvino is not installed"
        return out
    core = ov.Core()
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    for name, path in (("openvino fp32", fp32_path), ("openvino int8", int8_path)):
        compiled = core.compile_model(ov.convert_model(str(path)), "CPU", config)
        request = compiled.create_infer_request()
        out[name] = lambda x, r=request: r.infer({0: x})[0]
    return out


def bench_model(
    model_path: Path, folder: Path, *, threads: int, seconds: float, min_iters: int, calibration: int
) -> dict[str, Any]:
    """Every path's figures for one model file."""
    import imgclf
    from imgclf.images.preprocess import to_array

    spec = imgclf.load(model_path).preprocess
    rng = np.random.default_rng(0)
    xb = to_array(rng.integers(0, 256, size=(BATCH, spec.height, spec.width, 3), dtype=np.uint8), spec)
    x1 = np.ascontiguousarray(xb[:1])
    results: dict[str, Any] = {}
    for name, run in _runners(model_path, folder, threads, calibration).items():
        if isinstance(run, str):
            results[name] = {"skipped": run}
            continue
        results[name] = time_path(run, x1, xb, seconds, min_iters)
        print(f"  {name:<18} {_row(results[name])}", file=sys.stderr, flush=True)
    return {"model": f"{spec.height}x{spec.width}", "paths": results}


def _row(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return r["skipped"]
    return (
        f"b1 {r['batch1_images_per_s']:8.1f} img/s  p50 {r['batch1_p50_ms']:7.2f} ms  "
        f"p99 {r['batch1_p99_ms']:7.2f} ms  b{BATCH} {r[f'batch{BATCH}_images_per_s']:8.1f} img/s"
    )


def table(report: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    lines = [
        f"| model | path | batch 1 img/s | p50 ms | p99 ms | batch {BATCH} img/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m in report["models"]:
        for name, r in m["paths"].items():
            if "skipped" in r:
                lines.append(f"| {m['label']} | {name} | {r['skipped']} | | | |")
            else:
                lines.append(
                    f"| {m['label']} | {name} | {r['batch1_images_per_s']:.0f} | {r['batch1_p50_ms']:.2f} | "
                    f"{r['batch1_p99_ms']:.2f} | {r[f'batch{BATCH}_images_per_s']:.0f} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table (stdout) and return the report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="input sides (default 64 224)")
    p.add_argument("--arch", default="seed_resnet", help="registered architecture (default seed_resnet)")
    p.add_argument("--model", help="time this model file instead of random-weight --arch models")
    p.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: all cores)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    p.add_argument("--min-iters", type=int, default=5, help="calls per measurement at least (default 5)")
    p.add_argument("--calibration", type=int, default=64, help="int8 calibration images (default 64)")
    p.add_argument(
        "--quick", action="store_true", help="a few iterations, tiny sizes: checks every path runs"
    )
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.min_iters, args.calibration = 0.0, 2, 8
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)

    import torch

    torch.set_num_threads(threads)
    versions = {"torch": torch.__version__}
    for mod in ("onnxruntime", "openvino"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "not installed"
    header = f"# {cpu_line()}\n# threads per runtime: {threads}; " + ", ".join(
        f"{k} {v}" for k, v in versions.items()
    )
    print(header, file=sys.stderr, flush=True)
    report: dict[str, Any] = {"cpu": cpu_line(), "threads": threads, "versions": versions, "models": []}
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        folder = Path(tmp)
        files = (
            [(Path(args.model), Path(args.model).name)]
            if args.model
            else [(_model_file(args.arch, s, folder), f"{args.arch} {s}x{s}") for s in args.sizes]
        )
        for path, label in files:
            print(f"{label}:", file=sys.stderr, flush=True)
            result = bench_model(
                path,
                folder,
                threads=threads,
                seconds=args.seconds,
                min_iters=args.min_iters,
                calibration=args.calibration,
            )
            result["label"] = label
            report["models"].append(result)
    print(header)
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
