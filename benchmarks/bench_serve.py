"""``imgclf serve`` on loopback against in-process ``Classifier.predict``: images/s and latency.

A seed_resnet model (the default recipe, 64x64, 2 classes) classifies 96x96 PNG cell-sized images.
In-process: ``predict`` on a batch of 64 encoded images (decoding included) and on one image. Server:
one image per request (raw body), at concurrency 1, 8 and 64, with each ``--batch-delay-ms`` given, from a
minimal keep-alive HTTP/1.1 client (see ``load``). Concurrency 1 alternates with in-process predictions.
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


def in_process_rows(clf: Classifier, images: list[bytes], repeat: int) -> tuple[list[list[object]], float]:
    """In-process batch-of-64 rate and one-image latency; also returns the batched rate."""
    batched = batched_rate(clf, images, repeat)
    singles = []
    for i in range(repeat * 20):
        start = time.perf_counter()
        clf.predict([images[i % len(images)]])
        singles.append(time.perf_counter() - start)
    rows = [
        ["in-process, batch of 64", f"{batched:.0f}", "", ""],
        [
            "in-process, one image",
            f"{1 / statistics.median(singles):.0f}",
            f"{percentile(singles, 50) * 1e3:.2f}",
            f"{percentile(singles, 99) * 1e3:.2f}",
        ],
    ]
    return rows, batched


def batched_rate(clf: Classifier, images: list[bytes], repeat: int) -> float:
    """Median images/s of ``predict`` on 64 encoded images at once (decoding included)."""
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        clf.predict(images[:64], batch_size=64)
        rates.append(64 / (time.perf_counter() - start))
    return statistics.median(rates)


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


def request_bytes(port: int, image: bytes) -> bytes:
    """One raw-body ``POST /v1/predict`` (HTTP/1.1, keep-alive), built once before timing."""
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(image)}\r\n\r\n"
    )
    return head.encode() + image


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    """Send one request on an open connection, read the whole response; return its status code."""
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines) if k.lower() == "content-length")
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def load(port: int, requests: list[bytes], concurrency: int) -> tuple[float, list[float], list[str]]:
    """Send ``requests`` over ``concurrency`` keep-alive connections; images/s, latencies, errors.

    A minimal HTTP/1.1 client on asyncio streams with every request built beforehand: on a 2-core
    machine the client shares the cores with the server, and a full client library (httpx) costs
    several ms of CPU per request, which would be counted against the server.
    """
    latencies: list[float] = []
    errors: list[str] = []
    todo = iter(requests)

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for raw in todo:
                start = time.perf_counter()
                status = await exchange(reader, writer, raw)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors.append(str(status))
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return len(requests) / (time.perf_counter() - start), latencies, errors


def paired_latency(
    clf: Classifier, port: int, images: list[bytes], n: int
) -> tuple[list[float], list[float]]:
    """One request at a time, each right after the same image predicted in-process.

    Alternating the two cancels the drift of a shared machine's load; the difference of the medians is
    the server's overhead per request.
    """

    async def run() -> tuple[list[float], list[float]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        local, remote = [], []
        for i in range(n):
            image = images[i % len(images)]
            raw = request_bytes(port, image)
            start = time.perf_counter()
            clf.predict([image])
            local.append(time.perf_counter() - start)
            start = time.perf_counter()
            if await exchange(reader, writer, raw) != 200:
                raise SystemExit("the server refused a request")
            remote.append(time.perf_counter() - start)
        writer.close()
        return local, remote

    return asyncio.run(run())


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1e3:.2f}"


def server_rows(
    clf: Classifier, path: Path, images: list[bytes], delay_ms: float, requests: int, repeat: int
) -> tuple[list[list[object]], list[str]]:
    """Rows for one ``--batch-delay-ms``, and the verdicts against the issue's two targets."""
    proc, url = start_server(path, delay_ms)
    port = int(url.rsplit(":", 1)[1])
    rows, verdicts = [], []
    try:
        paired_latency(clf, port, images, 20)  # warm-up
        local, remote = paired_latency(clf, port, images, max(requests // 2, 50))
        extra = (percentile(remote, 50) - percentile(local, 50)) * 1e3
        rows.append(
            [
                f"server, delay {delay_ms:g} ms, concurrency 1",
                f"{len(remote) / sum(remote):.0f}",
                ms(remote, 50),
                ms(remote, 99),
            ]
        )
        verdicts.append(
            f"delay {delay_ms:g} ms, concurrency 1: p50 {ms(remote, 50)} ms vs {ms(local, 50)} ms in-process "
            f"(alternating) = {extra:+.2f} ms (target: within 3 ms)"
        )
        for concurrency in (8, 64):
            batch = [
                request_bytes(port, images[i % len(images)]) for i in range(max(requests, concurrency * 4))
            ]
            asyncio.run(load(port, batch[: concurrency * 2], concurrency))  # warm-up
            local_rate = batched_rate(clf, images, repeat)  # measured next to the server run
            rate, lat, errors = asyncio.run(load(port, batch, concurrency))
            if errors:
                print(f"delay {delay_ms:g} ms, concurrency {concurrency}: {len(errors)} errors {set(errors)}")
            rows.append(
                [
                    f"server, delay {delay_ms:g} ms, concurrency {concurrency}",
                    f"{rate:.0f}",
                    ms(lat, 50),
                    ms(lat, 99),
                ]
            )
            if concurrency == 64:
                verdicts.append(
                    f"delay {delay_ms:g} ms, concurrency 64: {rate:.0f} images/s vs {local_rate:.0f} "
                    f"in-process batched (measured just before) = {rate / local_rate:.2f}x (target: >= 0.8x)"
                )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return rows, verdicts


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
    print(machine(), f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    torch.manual_seed(0)
    model = registry.build("seed_resnet", 2, (64, 64))
    clf = Classifier(model, ["Parasitized", "Uninfected"], PreprocessSpec(), "seed_resnet", {})
    images = cell_images(256)
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.imgclf"
        imgclf.save(clf, path)
        loaded = imgclf.load(path)
        loaded.predict(images[:64])  # warm-up
        rows, _ = in_process_rows(loaded, images, args.repeat)
        for delay in (float(d) for d in args.delays.split(",")):
            more, said = server_rows(loaded, path, images, delay, args.requests, args.repeat)
            rows += more
            verdicts += said
    table(
        "imgclf serve vs in-process predict (one 96x96 PNG per request)",
        ["setting", "images/s", "p50 ms", "p99 ms"],
        rows,
    )
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    for line in verdicts:
        print("-", line)


if __name__ == "__main__":
    main()
