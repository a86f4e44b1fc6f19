"""Helpers for the ``imgclf serve`` tests: small model files, encoded images, a server subprocess.

Usage::

    path = write_model(tmp_path / "m.imgclf")
    with ServerProcess([path]) as server:
        httpx.post(server.url + "/v1/predict", content=png(...))
"""

from __future__ import annotations

import functools
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import make_classifier

SRC = str(Path(__file__).resolve().parents[2] / "src")
START_TIMEOUT_S = 60


def write_model(
    path: Path, classes: tuple[str, ...] = ("ring", "square"), *, seed: int = 0, size: int = 16
) -> Path:
    """Save a small untrained small_cnn model (with probes) to ``path``."""
    from imgclf.modelfile import save

    save(make_classifier(classes, size=size, seed=seed), path)
    return path


def png(seed: int, size: int = 24, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """A small random image, encoded."""
    arr = np.random.default_rng(seed).integers(0, 256, (size, size + 3, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt)
    return buf.getvalue()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env() -> dict[str, str]:
    """The environment for a subprocess that runs this checkout's imgclf."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


class ServerProcess:
    """``python -m imgclf serve ARGS`` on a free loopback port; ready once ``/v2/health/ready`` is 200."""

    def __init__(self, args: list[object], *, ready: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "imgclf", "serve", *map(str, args), "--port", str(self.port)]
        # The log goes to a file: a pipe nobody reads fills up and blocks the server mid-test.
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=self._log, text=True
        )
        if ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def rss_bytes(self) -> int:
        """The server's resident memory now (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")

    def log(self) -> str:
        """What the server wrote to stderr so far."""
        self._log.seek(0)
        return self._log.read()

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        """SIGTERM, wait; ``(exit code, stderr)``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.log()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@functools.cache
def big_png(size: int = 1500) -> bytes:
    """A large image that compresses to ~10 kB but takes ~0.1-0.2 s to decode and resize: a slow request."""
    yy, xx = np.mgrid[0:size, 0:size]
    arr = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def metric(base_url: str, name: str) -> float:
    """The value of one unlabelled sample (or the sum over labels) in ``/metrics``."""
    import httpx

    total = 0.0
    for line in httpx.get(base_url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(check, timeout: float = 30, interval: float = 0.05) -> None:
    """Poll ``check()`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {check}")
        time.sleep(interval)


def raw_socket(port: int, head: str, body: bytes = b"") -> socket.socket:
    """Open a connection and send ``head`` (request line + headers, no blank line) and ``body``."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
    return s


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )
