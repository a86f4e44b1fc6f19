"""Soak: 64 concurrent clients against ``imgclf serve``: zero errors, and resident memory over the
last 1,000 requests grows by less than 20 MB (bounded: 1,200 requests; 5,120 in the slow run)."""

from __future__ import annotations

import asyncio

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from servehelpers import ServerProcess, png, write_model  # noqa: E402

CLIENTS = 64
MEASURED = 1000  # requests between the two memory readings
MAX_GROWTH = 20 * 1024 * 1024


def soak(server: ServerProcess, total: int) -> tuple[dict[int, int], int, int]:
    """Send ``total`` requests from ``CLIENTS`` concurrent clients; ``(statuses, rss before, rss after)``."""
    images = [png(i) for i in range(16)]
    statuses: dict[int, int] = {}
    rss = {}
    sent = 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < total:
            i = sent
            sent += 1
            if i == total - MEASURED:
                rss["before"] = server.rss_bytes()
            r = await c.post("/v1/predict", content=images[i % len(images)])
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    async def main() -> None:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
            await asyncio.gather(*(client(c) for _ in range(CLIENTS)))

    asyncio.run(main())
    return statuses, rss["before"], server.rss_bytes()


def check_soak(tmp_path, total: int) -> None:
    with ServerProcess([write_model(tmp_path / "m.imgclf")]) as server:
        statuses, before, after = soak(server, total)
        code, log = server.stop()
    print(f"soak: {total} requests, statuses {statuses}, RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB")
    assert statuses == {200: total}
    assert after - before < MAX_GROWTH, (before, after)
    assert code == 0


def test_soak_64_clients(tmp_path):
    check_soak(tmp_path, 1200)


@pytest.mark.slow
def test_soak_64_clients_long(tmp_path):
    check_soak(tmp_path, 5120)
