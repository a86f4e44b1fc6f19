"""``imgclf serve`` on loopback against in-process ``Classifier.predict``: images/s and latency.

A seed_resnet model (the default recipe, 64x64, 2 classes) classifies 96x96 PNG cell-sized images.
In-process: ``predict`` on a batch of 64 encoded images (decoding included) and on one image. Server:
one image per request (raw body), at concurrency 1, 8 and 64, with each ``--batch-delay-ms`` given.
Bounded: a fixed number of requests per setting.

Usage::

    python benchmarks/bench_serve.py                      # delays 0 and 2 ms
    python benchmarks/bench_serve.py --delays 0 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from common import machine, table
from PIL import Image

import imgclf
from imgclf.classifier import Classifier
from imgclf.cli.allocator import tune_allocator
from imgclf.config import PreprocessSpec
from imgclf.models import registry

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cell_images(n: int) -> list[bytes]:
    """``n`` encoded 96x96 PNGs: a disc on a noisy background, like a cell crop."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    out = []
    for _ in range(n):
        img = rng.normal(40, 10, (96, 96, 3))
        disc = (yy - 48 + rng.integers(-8, 8)) ** 2 + (xx - 48 + rng.integers(-8, 8)) ** 2 < 35**2
        img[disc] = rng.uniform(120, 230, 3)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def in_process(path: Path, images: list[bytes], repeat: int) -> list[list[object]]:
    clf = imgclf.load(path)
    clf.predict(images[:64])  # warm-up
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        clf.predict(images[:64], batch_size=64)
        rates.append(64 / (time.perf_counter() - start))
    singles = []
    for i in range(repeat * 20):
        start = time.perf_counter()
        clf.predict(images[i % len(images)])
        singles.append(time.perf_counter() - start)
    return [
        ["in-process, batch of 64", f"{statistics.median(rates):.0f}", "", ""],
        [
            "in-process, one image",
            f"{1 / statistics.median(singles):.0f}",
            f"{percentile(singles, 50) * 1e3:.2f}",
            f"{percentile(singles, 99) * 1e3:.2f}",
        ],
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: Path, delay_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [
        sys.executable,
        "-m",
        "imgclf",
        "serve",
        str(path),
        "--port",
        str(port),
        "--batch-delay-ms",
        str(delay_ms),
        "--max-queue",
        "4096",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


async def load(
    url: str, images: list[bytes], concurrency: int, requests: int
) -> tuple[float, list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests:
            i = sent
            sent += 1
            start = time.perf_counter()
            try:
                r = await c.post("/v1/predict", content=images[i % len(images)])
            except httpx.TransportError as exc:
                errors.append(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200:
                errors.append(str(r.status_code))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        for _ in range(concurrency):  # open the connections before timing
            await c.get("/v2/health/live")
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        return requests / (time.perf_counter() - start), latencies, errors


def server_rows(path: Path, images: list[bytes], delay_ms: float, requests: int) -> list[list[object]]:
    proc, url = start_server(path, delay_ms)
    rows = []
    try:
        for concurrency in (1, 8, 64):
            n = max(requests // (4 if concurrency == 1 else 1), concurrency * 2)
            asyncio.run(load(url, images, concurrency, min(n, 64)))  # warm-up
            rate, lat, errors = asyncio.run(load(url, images, concurrency, n))
            if errors:
                print(f"delay {delay_ms:g} ms, concurrency {concurrency}: {len(errors)} errors {set(errors)}")
            rows.append(
                [
                    f"server, delay {delay_ms:g} ms, concurrency {concurrency}",
                    f"{rate:.0f}",
                    f"{percentile(lat, 50) * 1e3:.2f}",
                    f"{percentile(lat, 99) * 1e3:.2f}",
                ]
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delays", default="0,2", help="--batch-delay-ms values to run (default 0,2)")
    parser.add_argument("--requests", type=int, default=512, help="requests per concurrency (default 512)")
    parser.add_argument("--repeat", type=int, default=10, help="in-process repetitions (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server (1)")
    args = parser.parse_args()
    # The same thread count and allocator setting on both sides (the CLI tunes the allocator).
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    tune_allocator()
    print(machine(), flush=True)
    torch.manual_seed(0)
    model = registry.build("seed_resnet", 2, (64, 64))
    clf = Classifier(model, ["Parasitized", "Uninfected"], PreprocessSpec(), "seed_resnet", {})
    images = cell_images(256)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.imgclf"
        imgclf.save(clf, path)
        rows = in_process(path, images, args.repeat)
        for delay in (float(d) for d in args.delays.split(",")):
            rows += server_rows(path, images, delay, args.requests)
    table(
        "imgclf serve vs in-process predict (one 96x96 PNG per request)",
        ["setting", "images/s", "p50 ms", "p99 ms"],
        rows,
    )


if __name__ == "__main__":
    main()
