"""``imgclf serve`` under faults, each bounded in time: clients that vanish or crawl, a flood of
malformed requests, reloads with a damaged file, SIGTERM with requests in flight."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from servehelpers import ServerProcess, big_png, bomb_png, metric, png, raw_socket, wait_until, write_model  # noqa: E402

pytestmark = pytest.mark.slow

TIMEOUT_S = 10
# big_png images: a request whose decoding takes seconds even on an idle machine (the decode pool runs
# them two at a time), within the pixel budget the fixture sets
SLOW_IMAGES = 48


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = write_model(tmp_path_factory.mktemp("faults") / "m.imgclf")
    with ServerProcess([path, "--timeout-s", TIMEOUT_S, "--max-request-megapixels", 200]) as s:
        s.model_path = path
        yield s


def in_flight(server) -> float:
    return metric(server.url, "imgclf_in_flight_requests") - 1  # minus the /metrics request itself


def slow_request(server, results: list, key: object) -> threading.Thread:
    files = [("files", (f"{i}.png", big_png())) for i in range(SLOW_IMAGES)]

    def go():
        results.append((key, httpx.post(server.url + "/v1/predict", files=files, timeout=60).status_code))

    t = threading.Thread(target=go)
    t.start()
    return t


def test_client_gone_mid_upload(server):
    s = raw_socket(
        server.port,
        "POST /v1/predict HTTP/1.1\nHost: x\nContent-Type: image/png\nContent-Length: 100000",
        b"\x89PNG" + b"\0" * 996,
    )
    wait_until(lambda: in_flight(server) >= 1, timeout=10)
    s.close()
    wait_until(lambda: in_flight(server) == 0, timeout=10)
    assert httpx.post(server.url + "/v1/predict", content=png(1), timeout=30).status_code == 200


def test_client_gone_mid_inference_is_dropped_from_the_queue(server):
    body = (
        b"".join(
            f'--b\r\nContent-Disposition: form-data; name="f"; filename="{i}.png"\r\n\r\n'.encode()
            + big_png()
            + b"\r\n"
            for i in range(SLOW_IMAGES)
        )
        + b"--b--\r\n"
    )
    batches = metric(server.url, "imgclf_batch_size_images_count")
    gone_before = metric(server.url, "imgclf_client_disconnects_total")
    results: list = []
    first = slow_request(server, results, "first")
    wait_until(lambda: in_flight(server) >= 1, timeout=10)
    time.sleep(0.3)  # its body is in; the worker is busy decoding its images
    gone = raw_socket(
        server.port,
        "POST /v1/predict HTTP/1.1\nHost: x\nContent-Type: multipart/form-data; "
        f"boundary=b\nContent-Length: {len(body)}",
        body,
    )
    wait_until(lambda: in_flight(server) >= 2, timeout=10)
    time.sleep(0.2)
    gone.close()  # while it waits behind the first request
    first.join(60)
    assert results == [("first", 200)]
    wait_until(lambda: in_flight(server) == 0, timeout=10)
    assert metric(server.url, "imgclf_batch_size_images_count") == batches + 1  # the gone one never ran
    # A disconnect is normal: counted, one access-log line (499), no CancelledError traceback.
    assert metric(server.url, "imgclf_client_disconnects_total") == gone_before + 1
    log = server.log()
    assert "CancelledError" not in log and "Traceback" not in log, log[-3000:]
    assert '"POST /v1/predict" 499' in log
    assert httpx.post(server.url + "/v1/predict", content=png(2), timeout=30).status_code == 200


def test_body_at_one_byte_per_second_times_out_and_others_are_unaffected(server):
    crawler = raw_socket(
        server.port, "POST /v1/predict HTTP/1.1\nHost: x\nContent-Type: image/png\nContent-Length: 60"
    )
    answer: list[bytes] = []

    def crawl():
        try:
            for _ in range(TIMEOUT_S + 5):
                crawler.sendall(b"x")
                time.sleep(1)
        except OSError:
            pass

    def read():
        data = crawler.recv(4096)
        crawler.settimeout(3)
        try:
            while b"error" not in data and (part := crawler.recv(4096)):
                data += part
        except OSError:
            pass
        answer.append(data)

    threads = [threading.Thread(target=crawl), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for i in range(5):  # meanwhile everybody else is served promptly
        start = time.monotonic()
        assert httpx.post(server.url + "/v1/predict", content=png(i), timeout=30).status_code == 200
        assert time.monotonic() - start < TIMEOUT_S / 2
        time.sleep(0.3)
    threads[1].join(TIMEOUT_S + 10)
    crawler.close()
    threads[0].join(15)
    assert answer and answer[0].startswith(b"HTTP/1.1 408"), answer
    assert b"request body arrived too slowly" in answer[0]


def malformed_requests() -> list[dict]:
    form = [("files", ("empty.png", b""))]
    return [
        {"content": b"--zz\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=yy"}},
        {"json": {"images": ["not base64!"]}},
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        {"content": b"", "headers": {"content-type": "image/png"}},
        {"files": form},
        {"content": png(3)[:50], "headers": {"content-type": "image/png"}},
        {"content": bomb_png(), "headers": {"content-type": "image/png"}},
        {"content": b"[" * 50_000 + b"]" * 50_000, "headers": {"content-type": "application/json"}},
        {"content": b'{"images": [1, 2]}', "headers": {"content-type": "application/json"}},
        {"json": {"inputs": [{"datatype": "FP32", "shape": [1, 3, 2, 2], "data": [1]}]}, "v2": True},
    ]


def test_a_thousand_malformed_requests_are_4xx_and_the_server_stays_ready(server):
    kinds = malformed_requests()
    big_string = json.dumps("a" * 10_000_000).encode()  # a 10 MB JSON string
    statuses = []
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for i in range(1000):
            if i % 250 == 0:
                r = c.post("/v1/predict", content=big_string, headers={"content-type": "application/json"})
            else:
                kind = dict(kinds[i % len(kinds)])
                url = "/v2/models/m/infer" if kind.pop("v2", False) else "/v1/predict"
                r = c.post(url, **kind)
            statuses.append(r.status_code)
            assert "error" in r.json() and "Traceback" not in r.text
        assert c.get("/v2/health/ready").status_code == 200
        assert c.post("/v1/predict", content=png(4)).status_code == 200
    assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert time.monotonic() - started < 120


def test_reload_by_sighup_swaps_and_a_truncated_file_keeps_the_old_model(server):
    def digest():
        return httpx.get(server.url + "/v1/models", timeout=30).json()["models"][0]["digest"]

    old = digest()
    write_model(server.model_path, seed=5)
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: digest() != old, timeout=60, interval=0.2)
    new = digest()
    answer = httpx.post(server.url + "/v1/predict", content=png(5), timeout=30).json()
    data = server.model_path.read_bytes()
    server.model_path.write_bytes(data[: len(data) // 3])
    r = httpx.post(server.url + "/v2/repository/models/m/load", timeout=60)
    assert r.status_code == 422 and "m.imgclf" in r.json()["error"]
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert digest() == new
    assert httpx.post(server.url + "/v1/predict", content=png(5), timeout=30).json() == answer
    assert httpx.get(server.url + "/v2/health/ready", timeout=30).status_code == 200


def held_request(port: int, body: bytes):
    """A POST of ``body`` whose last 16 bytes are held back: in flight until :func:`finish` sends them."""
    head = f"POST /v1/predict HTTP/1.1\nHost: x\nContent-Type: image/png\nContent-Length: {len(body)}"
    return raw_socket(port, head, body[:-16])


def finish(sock, body: bytes) -> int:
    """Send a held request's last bytes; its response's status code."""
    sock.sendall(body[-16:])
    status = sock.recv(64).split(b" ")[1]  # b"HTTP/1.1 200 OK..."
    sock.close()
    return int(status)


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(tmp_path):
    """Requests held open by their clients keep the server draining (ready 503, new work refused), however
    fast the machine; once they complete, each gets its answer and the server exits 0."""
    path = write_model(tmp_path / "m.imgclf")
    server = ServerProcess([path])
    bodies = [png(i) for i in range(3)]
    held = [held_request(server.port, body) for body in bodies]
    wait_until(lambda: in_flight(server) >= 3, timeout=20)
    server.proc.send_signal(signal.SIGTERM)
    ready = server.url + "/v2/health/ready"
    wait_until(lambda: httpx.get(ready, timeout=10).status_code == 503, timeout=20)
    refused = httpx.post(server.url + "/v1/predict", content=png(9), timeout=10)
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
    assert [finish(sock, body) for sock, body in zip(held, bodies, strict=True)] == [200, 200, 200]
    code, err = server.stop(timeout=60)
    assert code == 0, err
    assert "shutting down" in err
