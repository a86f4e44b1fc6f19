"""Shared helpers for the benchmark scripts: machine description, timing, tables, the bare loop.

Usage::

    from common import bare_loop_rate, fit_rate, machine, median_time, table
    print(machine())
    print(bare_loop_rate("cpu", 32, "bf16", channels_last=True, compile_=False, steps=11))
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence


def machine() -> str:
    """One line describing the CPU, core count, Python, torch and (if any) the GPU."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            text = fh.read()
        cpu = next(
            line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")
        )
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
        cpu += " [" + ",".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) + "]"
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = ""
    if torch.cuda.is_available():
        gpu = f"; GPU {torch.cuda.get_device_name(0)}"
    return (
        f"{cpu}; {cores} cores; Python {platform.python_version()}; torch {torch.__version__}; "
        f"{torch.get_num_threads()} torch threads{gpu}"
    )


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def synthetic_images(n: int) -> tuple[object, object]:
    """``(images, labels)``: ``n`` random uint8 64x64 RGB images and 0/1 labels (numpy), seeded."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)
    return images, rng.integers(0, 2, size=n).astype(np.int64)


def synthetic_split(n: int):  # noqa: ANN201 - DecodedSplit, imported lazily
    """A :class:`imgclf.data.decode.DecodedSplit` of :func:`synthetic_images`."""
    from imgclf.data.decode import DecodedSplit

    images, labels = synthetic_images(n)
    return DecodedSplit(images, labels, [f"x{i}" for i in range(n)], [""] * n)


def fit_rate(
    device: str, batch: int, precision: str, channels_last: bool, compile_: bool, n: int, epochs: int = 3
) -> float:
    """Images/s of imgclf's own ``fit`` on ``n`` synthetic images: median epoch after the first (warm-up)."""
    import torch

    from imgclf.config import TrainConfig
    from imgclf.training.loop import fit
    from imgclf.training.state import create_state

    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch,
        device=device,
        precision=precision,
        channels_last=channels_last,
        compile=compile_,
    )
    state = create_state(cfg, 2)
    fit(cfg, state, synthetic_split(n))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    steady = sorted(r["seconds"] for r in state.timings[1:])
    return (n // batch) * batch / steady[len(steady) // 2]


def bare_loop_rate(
    device: str, batch: int, precision: str, channels_last: bool, compile_: bool, steps: int, warmup: int = 3
) -> float:
    """Images/s of a plain PyTorch loop doing exactly the work of one imgclf training step.

    The data sits on ``device`` as uint8, as ``fit`` keeps it; each step draws the augmentation, scales,
    warps, runs the network under the same autocast and layout, and takes the same optimizer step.
    """
    import torch
    import torch.nn.functional as F

    from imgclf.config import PreprocessSpec, TrainConfig
    from imgclf.images.preprocess import to_tensor
    from imgclf.models import registry
    from imgclf.training.augment import affine_matrices, augment_batch, sample_params
    from imgclf.training.device import resolve_device, resolve_precision
    from imgclf.training.optim import KerasSGD

    dev = resolve_device(device)
    spec, aug = PreprocessSpec(), TrainConfig().augment
    torch.manual_seed(0)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model = registry.build("seed_resnet", 2, (64, 64)).to(dev, memory_format=memory)
    opt = KerasSGD([{"params": model.parameters()}], lr=0.01, momentum=0.9)
    net = torch.compile(model) if compile_ else model
    dtype = resolve_precision(precision, dev)
    images, labels = synthetic_images(batch * steps)
    x_all, y_all = torch.from_numpy(images).to(dev), torch.from_numpy(labels).to(dev)
    gen = torch.Generator().manual_seed(0)

    def step(i: int) -> None:
        idx = torch.arange(i * batch, (i + 1) * batch, device=dev)
        mats = affine_matrices(sample_params(batch, aug, gen), 64, 64).to(dev, torch.float32)
        x = augment_batch(to_tensor(x_all[idx], spec), aug, mats).contiguous(memory_format=memory)
        with torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = net(x)
        loss = F.cross_entropy(out.float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for i in range(warmup):
        step(i % steps)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    return batch * steps / (time.perf_counter() - start)
