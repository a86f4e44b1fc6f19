"""``imgclf serve``'s connection layer (serving/protocol.py) against raw sockets on 127.0.0.1.

Idle and trickling connections are closed at the header deadline, slow bodies at the body deadline,
connections beyond the cap are answered 503, malformed HTTP gets a JSON error, and a legitimate
request is answered meanwhile. Deadlines are set short by flags; every socket is bounded in time.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from servehelpers import ServerProcess, metric, png, wait_until, write_model  # noqa: E402

HEADER_S = 1.0
BODY_S = 2.0
KEEP_ALIVE_S = 3.0
MAX_BODY_MB = 1


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("conn") / "m.imgclf")


@pytest.fixture(scope="module")
def server(model):
    args = [model, "--header-timeout-s", HEADER_S, "--body-timeout-s", BODY_S, "--keep-alive-s", KEEP_ALIVE_S]
    with ServerProcess([*args, "--timeout-s", 30, "--max-body-mb", MAX_BODY_MB]) as s:
        yield s


def connect(port: int, data: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        s.sendall(data)
    return s


def read_until_closed(s: socket.socket, within: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``within`` seconds pass (False)."""
    deadline = time.monotonic() + within
    out = b""
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            part = s.recv(65536)
        except TimeoutError:
            return out, False
        except ConnectionResetError:
            return out, True
        if not part:
            return out, True
        out += part
    return out, False


def read_response(s: socket.socket) -> bytes:
    """One whole response with a Content-Length, read from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def json_error(raw: bytes) -> tuple[int, dict, bytes]:
    """(status, JSON body, header block) of one raw HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), raw[:300]
    return status, json.loads(body), head


def predict_ok(server) -> bool:
    r = httpx.post(server.url + "/v1/predict", content=png(1), timeout=30)
    return r.status_code == 200 and len(r.json()["predictions"]) == 1


def trickle(socks: list[socket.socket], stop: threading.Event, every: float = 0.2) -> threading.Thread:
    """Send one header byte on each socket every ``every`` seconds until it is closed or ``stop``."""

    def go():
        live = list(socks)
        while live and not stop.is_set():
            for s in list(live):
                try:
                    s.send(b"a")
                except OSError:
                    live.remove(s)
            stop.wait(every)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def hold_idle_and_trickling(server, count: int, header_s: float, *, all_open: bool = False) -> None:
    """``count`` connections, half silent and half trickling header bytes, all closed by the server
    at ``header_s``; a prediction is answered meanwhile (once all are open at once if ``all_open``)."""
    started = time.monotonic()
    idle = [connect(server.port) for _ in range(count // 2)]
    tricklers = [
        connect(server.port, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(count // 2)
    ]
    stop = threading.Event()
    thread = trickle(tricklers, stop)
    try:
        if all_open:
            assert metric(server.url, "imgclf_open_connections") >= count
        assert predict_ok(server)  # answered while they are held open
        for s in idle:
            data, closed = read_until_closed(s, header_s + 10)
            assert closed and data == b"", "an idle connection was not closed at the header deadline"
        for s in tricklers:
            data, closed = read_until_closed(s, 5)
            assert closed, "a trickling connection was not closed at the header deadline"
            status, body, _ = json_error(data)
            assert status == 408 and body["error"].startswith("request headers arrived too slowly")
        assert time.monotonic() - started < header_s + 10
        assert predict_ok(server)
    finally:
        stop.set()
        thread.join(10)
        for s in idle + tricklers:
            s.close()


def test_idle_and_trickling_connections_are_closed_at_the_header_deadline(server):
    before = metric(server.url, "imgclf_connections_closed_total")
    hold_idle_and_trickling(server, 300, HEADER_S)
    wait_until(lambda: metric(server.url, "imgclf_connections_closed_total") >= before + 300, timeout=10)
    # One line for the first close, then at most one summary per interval: not 300 lines.
    time.sleep(0.5)
    assert len(re.findall(r"connection\(?s?\)? .*closed", server.log())) < 10, server.log()[-2000:]


@pytest.mark.slow
def test_two_thousand_idle_and_trickling_connections_do_not_stop_predict(model):
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2300:
        if hard != resource.RLIM_INFINITY and hard < 2300:
            pytest.skip(f"this process may open {hard} files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2300, hard))
    header_s = 6  # long enough that all 2,000 are open at once; the other limits at their defaults
    with ServerProcess([model, "--header-timeout-s", header_s]) as server:
        hold_idle_and_trickling(server, 2000, header_s, all_open=True)
        _, log = server.stop()
    assert "Traceback" not in log
    assert len(re.findall(r"connection\(?s?\)? .*closed", log)) < 10, log[-2000:]


def test_a_kept_alive_connection_trickling_its_next_request_gets_408(server):
    s = connect(server.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(s).startswith(b"HTTP/1.1 200")
    stop = threading.Event()
    thread = trickle([s], stop)  # each byte used to cancel the only timer (keep-alive)
    try:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Slow: ")
        data, closed = read_until_closed(s, HEADER_S + 5)
    finally:
        stop.set()
        thread.join(10)
        s.close()
    assert closed
    assert json_error(data)[0] == 408


def test_an_idle_kept_alive_connection_is_closed_after_keep_alive(server):
    s = connect(server.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(s).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    data, closed = read_until_closed(s, KEEP_ALIVE_S + 5)
    s.close()
    assert closed and data == b""
    assert KEEP_ALIVE_S - 0.5 < time.monotonic() - started < KEEP_ALIVE_S + 3


def test_a_trickling_body_gets_408_at_the_body_deadline(server):
    # --timeout-s is 30: the body deadline, not the request deadline, answers.
    s = connect(
        server.port,
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 500\r\n\r\n",
    )
    stop = threading.Event()
    thread = trickle([s], stop)
    started = time.monotonic()
    try:
        data, closed = read_until_closed(s, BODY_S + 5)
    finally:
        stop.set()
        thread.join(10)
        s.close()
    assert closed and time.monotonic() - started < BODY_S + 3
    status, body, _ = json_error(data)
    assert status == 408
    assert body["error"].startswith("request body arrived too slowly")
    assert "--body-timeout-s" in body["error"]


def test_an_answer_before_the_body_closes_the_connection(server):
    # 413 from the declared length: the body that follows would otherwise be read into the void.
    s = connect(
        server.port,
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 900000000\r\n\r\n" + b"x" * 1000,
    )
    data, closed = read_until_closed(s, KEEP_ALIVE_S - 0.5)
    s.close()
    assert closed
    assert json_error(data)[0] == 413


def test_a_client_that_stops_reading_its_answers_is_reset_at_the_body_deadline(server):
    before = metric(server.url, 'imgclf_connections_closed_total{reason="write_timeout"}')
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    s.connect(("127.0.0.1", server.port))
    try:
        # ~6 kB answers, pipelined, never read: more than the kernel and uvicorn buffer on loopback.
        s.sendall(b"GET /static/app.js HTTP/1.1\r\nHost: x\r\n\r\n" * 1200)
        wait_until(
            lambda: metric(server.url, 'imgclf_connections_closed_total{reason="write_timeout"}') > before,
            timeout=BODY_S + 20,
        )
    finally:
        s.close()
    assert predict_ok(server)
    log = server.log()
    assert "Traceback" not in log and "without completing response" not in log, log[-2000:]


CHUNK = b"100000\r\n" + b"a" * 0x100000 + b"\r\n"
MALFORMED = {
    "bad chunk size": (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
        400,
    ),
    "NUL in a header name": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A\x00b: 1\r\n\r\n", 400),
    "space before colon": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n", 400),
    "not HTTP": (b"HELLO THERE\r\n\r\n", 400),
    "bad Content-Length": (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 12a\r\n\r\n", 400),
    "two Content-Lengths": (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
    ),
    "unknown transfer coding": (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    ),
    "no Host": (b"GET /v1/models HTTP/1.1\r\n\r\n", 400),
    "header block in one piece over 16 KiB": (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20000 + b"\r\n\r\n",
        431,
    ),
    "unfinished header block over 16 KiB": (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20000,
        431,
    ),
    "trailers over 16 KiB": (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: "
        + b"a" * 20000
        + b"\r\n\r\n",
        431,
    ),
    "Content-Length 10^18": (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"1" + b"0" * 18 + b"\r\n\r\n",
        413,
    ),
    "chunked body over the limit": (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: image/png\r\n"
        + b"\r\n"
        + CHUNK * (MAX_BODY_MB + 1),
        413,
    ),
    "chunked body over the limit to a route that does not read it": (
        b"POST /v1/models HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + CHUNK * (MAX_BODY_MB + 1),
        405,
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_http_gets_a_json_error_and_a_close(server, name):
    request, expected = MALFORMED[name]
    s = connect(server.port, request)
    data, closed = read_until_closed(s, KEEP_ALIVE_S - 0.5)  # before keep-alive could close it
    s.close()
    assert closed, data[:300]
    status, body, head = json_error(data)
    assert status == expected
    assert set(body) == {"error"}
    assert status == 405 or "expected" in body["error"], body
    assert b"x-content-type-options: nosniff" in head.lower()
    assert predict_ok(server)


@pytest.mark.slow  # a server of its own
def test_connections_beyond_the_cap_get_503_json(model):
    cap = 40
    with ServerProcess([model, "--max-connections", cap, "--header-timeout-s", 30]) as server:
        held = [connect(server.port) for _ in range(cap)]  # accepted in order: the next ones are over
        extra = [connect(server.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(5)]
        for s in extra:
            data, closed = read_until_closed(s, 5)
            assert closed
            status, body, head = json_error(data)
            assert status == 503 and b"retry-after: 1" in head.lower()
            assert (
                body["error"].startswith("server busy: too many connections")
                and "--max-connections" in body["error"]
            )
            s.close()
        for s in held[: cap // 2]:
            s.close()
        wait_until(lambda: predict_ok(server), timeout=10)  # room again
        for s in held[cap // 2 :]:
            s.close()
        _, log = server.stop()
    assert log.count("over --max-connections") + log.count("(--max-connections): answered 503") >= 1
    assert "Traceback" not in log


def test_connection_log_writes_one_line_then_one_summary_per_interval(caplog):
    import asyncio

    from imgclf.serving.metrics import Metrics
    from imgclf.serving.protocol import ConnectionLog

    metrics = Metrics()
    report = ConnectionLog(metrics, interval_s=0.2)

    async def flood():
        for i in range(500):
            report.note("header_timeout" if i % 2 else "malformed", ("10.0.0.1", i), f"detail {i}")
        await asyncio.sleep(0.5)  # the summary comes after one interval; nothing after the next

    with caplog.at_level("WARNING", logger="imgclf.serve"):
        asyncio.run(flood())
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "connection from 10.0.0.1:0 closed: detail 0",
        "499 more connection(s) closed in the last 0.2 s: 250 no complete request headers in time"
        " (--header-timeout-s), 249 malformed HTTP (JSON 4xx)",
    ]
    body = metrics.render()[0].decode()
    assert 'imgclf_connections_closed_total{reason="header_timeout"} 250.0' in body
    assert 'imgclf_connections_closed_total{reason="malformed"} 250.0' in body


def test_the_connection_cap_leaves_room_below_the_open_file_limit():
    from imgclf.serving.protocol import FD_RESERVE, connection_cap

    assert connection_cap(4096, 1 << 20) == 4096
    assert connection_cap(4096, 1024) == 1024 - FD_RESERVE
    assert connection_cap(4096, 10) == 1


def test_new_connections_are_reset_only_close_to_the_open_file_limit():
    from imgclf.serving.protocol import FD_RESERVE, ConnectionLog, guarded_protocol
    from imgclf.serving.settings import ServeSettings

    def ceiling(cap: int, open_files: int) -> int | None:
        return guarded_protocol(
            ServeSettings(), ConnectionLog(), max_connections=cap, open_files=open_files
        ).ceiling

    assert ceiling(4096, 20000) == 20000 - FD_RESERVE // 2  # beyond the cap: 503s, not resets
    assert ceiling(1024 - FD_RESERVE, 1024) == 1024 - FD_RESERVE // 2
    assert ceiling(4096, 0) is None  # limit unknown: never reset


def test_the_soft_open_file_limit_is_raised_to_the_hard_one():
    import subprocess
    import sys

    from servehelpers import cli_env

    resource = pytest.importorskip("resource")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit leaves nothing to raise")
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "from imgclf.serving.protocol import raise_open_file_limit\n"
        "got = raise_open_file_limit()\n"
        "print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    got, soft = map(int, out.stdout.split())
    assert got == soft > 256
    if hard != resource.RLIM_INFINITY:
        assert soft == hard


@pytest.mark.slow
def test_soak_a_thousand_abusive_connections_among_a_thousand_valid_requests(server):
    answered = [request for request, _ in MALFORMED.values() if len(request) < 100_000]
    vanishing = [
        b"",  # connect and close
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Le",  # gone mid-headers
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n\x89PNG",  # gone mid-body
    ]
    abuses = [(request, True) for request in answered] + [(request, False) for request in vanishing]
    expected = httpx.post(server.url + "/v1/predict", content=png(7), timeout=30).json()["predictions"]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for _ in range(50):  # warm up before measuring memory
            assert c.post("/v1/predict", content=png(7)).status_code == 200
    rss = server.rss_bytes()
    failures: list = []

    def abuse():
        for i in range(1000):
            request, wait = abuses[i % len(abuses)]
            s = connect(server.port, request)
            try:
                if wait and i % 3:  # a third of the malformed ones vanish without reading the answer
                    data, closed = read_until_closed(s, 5)
                    if not (closed and data.startswith(b"HTTP/1.1 4")):
                        failures.append(("abuse", data[:200]))
            finally:
                s.close()

    thread = threading.Thread(target=abuse)
    thread.start()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for _ in range(1000):
            r = c.post("/v1/predict", content=png(7))
            if r.status_code != 200 or r.json()["predictions"] != expected:
                failures.append((r.status_code, r.text[:200]))
    thread.join(60)
    assert not thread.is_alive()
    assert not failures, failures[:3]
    assert server.rss_bytes() - rss < 50 * 1024 * 1024
    assert predict_ok(server)
    assert "Traceback" not in server.log()
