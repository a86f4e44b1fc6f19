"""GPU training throughput of imgclf's own loop, checked for correctness first, in one go.

1. Correctness: train the seed recipe's network on demo data (scale 8) with the fast GPU settings and
   check the loss falls and the validation accuracy rises.
2. Throughput: imgclf ``fit`` on a synthetic uint8 dataset resident on the GPU, with the full
   augmentation, for each variant (batch, precision/layout, compile); the first epoch (warm-up and
   compilation) is excluded. A bare PyTorch loop doing the same work is timed beside it.
3. DistributedDataParallel with one process (NCCL on CUDA, gloo on the CPU): the same ``fit`` under a
   process group of one must give the weights of the plain run, and its images/s shows DDP's own cost
   (gradient buckets, the all-reduce call, the per-step stop vote) — the part of multi-GPU scaling
   one GPU can measure.

Usage::

    python benchmarks/bench_gpu.py                       # on a CUDA machine (about 5-8 minutes)
    python benchmarks/bench_gpu.py --device cpu --smoke  # check the script itself on a CPU
    python benchmarks/bench_gpu.py --only-ddp            # just the 1-GPU DDP check (about 1 minute)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import bare_loop_rate, fit_rate, machine, table

from imgclf.config import TrainConfig
from imgclf.data.decode import load_split
from imgclf.data.folders import scan_dataset
from imgclf.data.synthetic import write_demo_dataset
from imgclf.training.loop import fit
from imgclf.training.state import create_state


def correctness(device: str, smoke: bool) -> list[list[object]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        write_demo_dataset(root, scale=0.5 if smoke else 8)
        ds = scan_dataset(root)
        cfg = TrainConfig(
            epochs=2 if smoke else 25,
            batch_size=64 if smoke else 256,
            device=device,
            precision="auto",
            channels_last=True,
            lr=0.1,
        )
        train = load_split(ds.splits["training"], cfg.preprocess)
        val = load_split(ds.splits["validation"], cfg.preprocess)
        state = create_state(cfg, 2)
        start = time.perf_counter()
        fit(cfg, state, train, val)
        seconds = time.perf_counter() - start
    h = state.history
    ok = h[-1]["loss"] < h[0]["loss"]
    return [
        ["epochs", len(h)],
        ["train images", len(train)],
        ["first / last loss", f"{h[0]['loss']:.3f} / {h[-1]['loss']:.3f}"],
        ["last val accuracy", f"{h[-1].get('val_accuracy', float('nan')):.3f}"],
        ["loss fell", "yes" if ok else "NO"],
        ["wall time", f"{seconds:.1f} s"],
    ]


def ddp_check(device: str, smoke: bool) -> list[list[object]]:
    """The same epochs with and without a DDP process group of one; equal weights, and each rate."""
    import os
    import socket

    import torch
    from common import synthetic_split

    from imgclf.training.distributed import DistOptions, start_group
    from imgclf.world import World

    n, batch, epochs = (256, 64, 2) if smoke else (16384, 256, 4)
    # Deterministic on the CPU only: grid_sample's CUDA backward has no deterministic kernel.
    exact = device == "cpu"
    cfg = TrainConfig(epochs=epochs, batch_size=batch, device=device, precision="fp32", deterministic=exact)
    data = synthetic_split(n)
    with socket.socket() as s:  # a free port for the one-process rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    dev = torch.device(device if device != "cuda" else "cuda:0")
    group = start_group(World(), dev, DistOptions(timeout_s=120), even_alone=True)
    assert group is not None
    try:
        plain, ddp = create_state(cfg, 2), create_state(cfg, 2)
        fit(cfg, plain, data)
        fit(cfg, ddp, data, group=group)
    finally:
        group.close()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    a, b = plain.model.state_dict(), ddp.model.state_dict()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())

    def rate(state) -> float:
        steady = sorted(r["seconds"] for r in state.timings[1:])
        return (n // batch) * batch / steady[len(steady) // 2]

    r_plain, r_ddp = rate(plain), rate(ddp)
    return [
        ["backend", group.backend],
        ["images, batch, epochs", f"{n}, {batch}, {epochs} (fp32{', deterministic' if exact else ''})"],
        ["largest weight difference, DDP vs plain", f"{worst:.3g}" + (" (bitwise)" if worst == 0 else "")],
        ["plain fit images/s", f"{r_plain:,.0f}"],
        ["DDP (world size 1) fit images/s", f"{r_ddp:,.0f}"],
        ["DDP's own cost", f"{100 * (r_plain / r_ddp - 1):+.1f} % time per step"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script, not the speed")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    parser.add_argument("--only-ddp", action="store_true", help="run only the 1-process DDP check")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    table("DistributedDataParallel, world size 1", ["what", "value"], ddp_check(args.device, args.smoke))
    if args.only_ddp:
        return
    table(
        "Correctness: seed recipe network, fast settings, demo data",
        ["what", "value"],
        correctness(args.device, args.smoke),
    )
    n, epochs = (512, 2) if args.smoke else (65536, 4)
    variants = [(256, "fp32", False, False), (256, "bf16", True, False), (1024, "bf16", True, False)]
    if not args.no_compile:
        variants += [(1024, "bf16", True, True), (2048, "bf16", True, True)]
    if args.smoke:
        variants = [(64, "fp32", False, False), (64, "bf16", True, False)]
    rows = []
    for batch, precision, cl, comp in variants:
        rate = fit_rate(args.device, batch, precision, cl, comp, n, epochs)
        bare = bare_loop_rate(args.device, batch, precision, cl, comp, steps=max(4, min(n // batch, 64)))
        rows.append(
            [
                batch,
                precision,
                "channels_last" if cl else "NCHW",
                "yes" if comp else "no",
                f"{bare:,.0f}",
                f"{rate:,.0f}",
                f"{100 * (rate / bare - 1):+.1f} %",
            ]
        )
        print(rows[-1], flush=True)
    table(
        f"Training throughput, seed_resnet 64x64, full augmentation, data resident on the device, images/s "
        f"(imgclf fit over {n} images, median epoch after the first; bare loop after 3 warm-up steps)",
        ["batch", "precision", "layout", "compile", "bare PyTorch loop", "imgclf fit", "imgclf vs bare"],
        rows,
    )


if __name__ == "__main__":
    main()
