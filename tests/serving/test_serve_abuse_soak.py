"""Soak under abuse: 1,000 malformed or abusive requests mixed with 1,000 valid ones against one
``imgclf serve``. Every valid request is answered with the library's probabilities, every abusive one
with a 4xx (or, where the client leaves, with nothing), the process's memory grows by less than 50 MB
over the run, and the log holds no traceback. Bounded: 2,000 requests, 16 at a time, loopback only."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import struct

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from servehelpers import ServerProcess, bomb_png, png, write_model  # noqa: E402

from imgclf.images.preprocess import preprocess  # noqa: E402
from imgclf.modelfile import load  # noqa: E402

pytestmark = pytest.mark.slow

VALID = 1000
ABUSIVE = 1000
CONCURRENCY = 16
WARMUP = 200  # requests of the same mix before the first memory reading
MAX_GROWTH = 50 * 2**20
IMAGES = 8
SHAPE = [1, 3, 16, 16]


def v2_json(dtype: str, shape: list[int], data: list, **extra) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "datatype": dtype, "shape": shape, "data": data}], **extra}
    ).encode()


def v2_binary(header: dict, raw: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + raw, {"inference-header-content-length": str(len(head))}


class Soak:
    def __init__(self, server: ServerProcess, images: list[bytes], want: np.ndarray, x: np.ndarray) -> None:
        self.server = server
        self.images = images
        self.want = want  # (IMAGES, C): the library's probabilities
        self.x = x  # (IMAGES, 3, 16, 16): the preprocessed inputs
        self.failures: list[str] = []
        self.statuses: dict[str, dict[int, int]] = {}

    def count(self, kind: str, status: int) -> None:
        bucket = self.statuses.setdefault(kind, {})
        bucket[status] = bucket.get(status, 0) + 1

    def check(self, kind: str, ok: bool, detail: object) -> None:
        if not ok and len(self.failures) < 20:
            self.failures.append(f"{kind}: {str(detail)[:300]}")

    # --- valid requests: the answer must be the library's ----------------------------------------------

    async def valid(self, c: httpx.AsyncClient, rng: random.Random) -> None:
        kind = rng.choice(["raw", "multipart", "json", "v2-bytes-json", "v2-bytes-binary", "v2-fp32-binary"])
        picks = [rng.randrange(IMAGES) for _ in range(rng.randint(1, 3))]
        if kind == "raw":
            picks = picks[:1]
            r = await c.post("/v1/predict", content=self.images[picks[0]])
        elif kind == "multipart":
            r = await c.post("/v1/predict", files=[("f", (f"{i}.png", self.images[i])) for i in picks])
        elif kind == "json":
            r = await c.post(
                "/v1/predict", json={"images": [base64.b64encode(self.images[i]).decode() for i in picks]}
            )
        elif kind == "v2-bytes-json":
            data = [base64.b64encode(self.images[i]).decode() for i in picks]
            r = await c.post("/v2/models/m/infer", content=v2_json("BYTES", [len(picks)], data))
        elif kind == "v2-bytes-binary":
            raw = b"".join(struct.pack("<I", len(self.images[i])) + self.images[i] for i in picks)
            inp = {"name": "images", "datatype": "BYTES", "shape": [len(picks)]}
            header = {"inputs": [{**inp, "parameters": {"binary_data_size": len(raw)}}]}
            header["parameters"] = {"binary_data_output": True}
            body, headers = v2_binary(header, raw)
            r = await c.post("/v2/models/m/infer", content=body, headers=headers)
        else:
            raw = self.x[picks].astype("<f4").tobytes()
            inp = {"name": "input", "datatype": "FP32", "shape": [len(picks), 3, 16, 16]}
            header = {"inputs": [{**inp, "parameters": {"binary_data_size": len(raw)}}]}
            body, headers = v2_binary(header, raw)
            r = await c.post("/v2/models/m/infer", content=body, headers=headers)
        self.count(kind, r.status_code)
        if r.status_code != 200:
            self.check(kind, False, f"{r.status_code} {r.text}")
            return
        got = self.probabilities(kind, r)
        self.check(kind, np.allclose(got, self.want[picks], atol=1e-5), (got, self.want[picks]))

    def probabilities(self, kind: str, r: httpx.Response) -> np.ndarray:
        if kind.startswith("v2") and "inference-header-content-length" in r.headers:
            n = int(r.headers["inference-header-content-length"])
            shape = json.loads(r.content[:n])["outputs"][0]["shape"]
            return np.frombuffer(r.content[n:], "<f4").reshape(shape)
        if kind.startswith("v2"):
            out = r.json()["outputs"][0]
            return np.asarray(out["data"], np.float32).reshape(out["shape"])
        return np.asarray(
            [[row["probabilities"][c] for c in ("ring", "square")] for row in r.json()["predictions"]]
        )

    # --- abusive requests: a 4xx, or nothing for a client that leaves ------------------------------------

    async def abusive(self, c: httpx.AsyncClient, rng: random.Random) -> None:
        zeros = [0.0] * (3 * 16 * 16)
        cut_input = {"name": "i", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4}}
        cut = v2_binary({"inputs": [cut_input]}, b"\xff\0\0\0")  # an element longer than the data
        cases = {
            "bad-json": lambda: c.post(
                "/v1/predict", content=b'{"images": [', headers={"content-type": "application/json"}
            ),
            "bad-base64": lambda: c.post("/v1/predict", json={"images": ["%%%"]}),
            "text-body": lambda: c.post(
                "/v1/predict", content=b"hello", headers={"content-type": "text/plain"}
            ),
            "empty": lambda: c.post("/v1/predict", content=b""),
            "too-many": lambda: c.post("/v1/predict", json={"images": ["AA=="] * 9}),
            "not-an-image": lambda: c.post("/v1/predict", content=b"GIF89a" + b"\0" * 50),
            "pixel-bomb": lambda: c.post("/v1/predict", content=bomb_png()),
            "over-budget": lambda: c.post("/v1/predict", files=[("f", ("b.png", bomb_png(5000, 5000)))] * 2),
            "bad-top-k": lambda: c.post("/v1/predict?top_k=-3", content=self.images[0]),
            "no-model": lambda: c.post("/v1/models/nope/predict", content=self.images[0]),
            "fp32-string": lambda: c.post(
                "/v2/models/m/infer", content=v2_json("FP32", SHAPE, ["1"] + zeros[1:])
            ),
            "fp32-bool": lambda: c.post(
                "/v2/models/m/infer", content=v2_json("FP32", SHAPE, [True] + zeros[1:])
            ),
            "fp32-huge": lambda: c.post(
                "/v2/models/m/infer", content=v2_json("FP32", SHAPE, [1e39] + zeros[1:])
            ),
            "fp32-overflow": lambda: c.post(
                "/v2/models/m/infer", content=v2_json("FP32", SHAPE, [3e38, -3e38] * 384)
            ),
            "fp32-short": lambda: c.post("/v2/models/m/infer", content=v2_json("FP32", SHAPE, zeros[:5])),
            "v2-dtype": lambda: c.post("/v2/models/m/infer", content=v2_json("INT8", [1], [1])),
            "v2-output": lambda: c.post(
                "/v2/models/m/infer", content=v2_json("FP32", SHAPE, zeros, outputs=[{"name": "z"}])
            ),
            "v2-header-length": lambda: c.post(
                "/v2/models/m/infer", content=b"{}", headers={"inference-header-content-length": "999999"}
            ),
            "v2-cut-bytes": lambda: c.post("/v2/models/m/infer", content=cut[0], headers=cut[1]),
        }
        raw_cases = ["declared-huge", "gone-mid-body", "gone-after-request", "garbage"]
        kind = rng.choice(sorted(cases) + raw_cases)
        if kind in cases:
            r = await cases[kind]()
            self.count(kind, r.status_code)
            ok = 400 <= r.status_code < 500 and "error" in r.json()
            self.check(kind, ok, f"{r.status_code} {r.text}")
            return
        await self.raw(kind)

    async def raw(self, kind: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        try:
            if kind == "declared-huge":
                writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n")
            elif kind == "gone-mid-body":
                writer.write(
                    b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n" + b"\0" * 999
                )
            elif kind == "gone-after-request":
                image = self.images[0]
                head = f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(image)}\r\n\r\n"
                writer.write(head.encode() + image)
            else:
                writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
            await writer.drain()
            if kind in ("declared-huge", "garbage"):
                answer = await asyncio.wait_for(reader.read(65536), 30)
                status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
                self.count(kind, status)
                self.check(kind, 400 <= status < 500, answer[:200])
            else:
                self.count(kind, 0)
        finally:
            writer.close()


def test_a_thousand_abusive_requests_mixed_with_a_thousand_valid_ones(tmp_path):
    model = write_model(tmp_path / "m.imgclf", ("ring", "square"))
    clf = load(model)
    images = [png(100 + i, size=20 + 3 * i) for i in range(IMAGES)]
    want = clf.predict_proba(images)
    x = preprocess(images, clf.preprocess).numpy()
    plan = ["valid"] * VALID + ["abusive"] * ABUSIVE
    random.Random(0).shuffle(plan)
    warm = ["valid", "abusive"] * (WARMUP // 2)
    with ServerProcess([model, "--max-images-per-request", "8", "--timeout-s", "20"]) as server:
        soak = Soak(server, images, want, x)

        async def run(kinds: list[str], seed: int) -> None:
            queue = list(enumerate(kinds))
            limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
            async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as c:

                async def worker() -> None:
                    while queue:
                        i, kind = queue.pop()
                        rng = random.Random(seed * 100_000 + i)
                        await (soak.valid(c, rng) if kind == "valid" else soak.abusive(c, rng))

                await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

        asyncio.run(run(warm, 1))
        before = server.rss_bytes()
        soak.statuses.clear()
        asyncio.run(run(plan, 2))
        ready = httpx.get(server.url + "/v2/health/ready", timeout=30)
        after = server.rss_bytes()
        code, log = server.stop()
    valid = {
        k: v
        for k, v in soak.statuses.items()
        if k.startswith(("raw", "multipart", "json", "v2-bytes", "v2-fp32"))
    }
    print(f"soak: RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB; statuses {soak.statuses}")
    assert soak.failures == []
    assert sum(n for s in valid.values() for n in s.values()) == VALID
    assert sum(n for s in soak.statuses.values() for n in s.values()) == VALID + ABUSIVE
    assert ready.status_code == 200
    assert after - before < MAX_GROWTH, (before, after)
    assert code == 0
    assert "Traceback" not in log, log[-3000:]
