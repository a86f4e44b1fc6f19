"""The HTTP/1.1 connection layer: deadlines, a connection cap and JSON answers to malformed requests.

uvicorn's h11 protocol closes a connection only when a keep-alive period passes *after* a response, and
any byte received cancels that timer: a client that sends nothing, or one byte of its headers every few
seconds, holds a connection (and a file descriptor) forever. ASGI middleware cannot help, since it runs
only once the headers are complete. :class:`GuardedH11Protocol` is uvicorn's protocol with:

* a header deadline, armed when the connection opens (or the first byte of a later request arrives)
  and disarmed when the request's headers are complete: past it, a 408 (or, if nothing came, a close);
* a body deadline, from the end of the headers to the end of the body, answered or not: past it a 408
  if nothing was answered yet, and the connection is closed either way;
* a cap on open connections: beyond it a 503 and a close (a reset once close to the open-file limit);
* JSON answers with the server's error shape instead of h11's plain-text ``400 Bad Request`` for
  malformed framing (431 for a header block over the limit);
* a connection whose request is answered before its body arrived is closed rather than kept alive;
* a client that stops reading its answers (the send buffer stays full for the body deadline) is reset.

Every error answer says ``connection: close`` and is followed by a lingering close (our side shut,
the client's late bytes read and dropped for a moment) so that a client still sending reads the answer
instead of a reset. Each such close is counted in ``imgclf_connections_closed_total{reason}`` and logged
through :class:`ConnectionLog`, which writes one line per interval however many there were.

Usage::

    protocol = guarded_protocol(settings, ConnectionLog(metrics), max_connections=4000, open_files=8192)
    uvicorn.Config(app, http=protocol, h11_max_incomplete_event_size=settings.max_header_bytes)
"""

from __future__ import annotations

import asyncio
import collections
import http
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from imgclf.errors import safe_text
from imgclf.serving.guard import SECURITY_HEADERS
from imgclf.serving.inputs import HTTPProblem, problem
from imgclf.serving.settings import ServeSettings

log = logging.getLogger("imgclf.serve")

LOG_INTERVAL_S = 10.0  # at most one summary line per interval, however many connections were closed
LINGER_S = 2.0  # after an error answer: how long a client's late bytes are read and dropped
FD_RESERVE = 256  # open files kept free of connections: model files, logs, the 503 answers themselves

# uvicorn logs these once per request that asks for them; ConnectionLog summarises malformed requests
# and an upgrade is simply not done, so the protocols log through a logger that drops these lines (and
# keeps everything else).
_UVICORN_NOISE = frozenset(
    {
        "Invalid HTTP request received.",
        "Unsupported upgrade request.",
        "No supported WebSocket library detected. Please use \"pip install 'uvicorn[standard]'\", or install "
        "'websockets' or 'wsproto' manually.",
    }
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _UVICORN_NOISE


_protocol_log = logging.getLogger("imgclf.serve.http")
_protocol_log.addFilter(_DropNoise())

REASONS = {
    "header_timeout": "no complete request headers in time (--header-timeout-s)",
    "body_timeout": "request body not complete in time (--body-timeout-s)",
    "over_capacity": "over --max-connections (503)",
    "fd_limit": "aborted at the open-file limit",
    "malformed": "malformed HTTP (JSON 4xx)",
    "unanswered_body": "answered before its body arrived",
    "write_timeout": "not reading its answers (--body-timeout-s)",
}


class ConnectionLog:
    """Counts closed connections by reason (metrics) and logs them at most once per interval.

    The first close after a quiet interval is logged at once with its details; the ones that follow
    are summed into one line per ``interval_s`` for as long as they keep coming.

    Args:
        metrics: The server's :class:`~imgclf.serving.metrics.Metrics` (None: log only).
        interval_s: Shortest time between two lines.
    """

    def __init__(self, metrics: Any = None, interval_s: float = LOG_INTERVAL_S) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self.counts: collections.Counter[str] = collections.Counter()
        self._flush: asyncio.TimerHandle | None = None

    def note(self, reason: str, client: Any, detail: str) -> None:
        """Record one connection closed for ``reason`` (a key of ``REASONS``)."""
        if self.metrics is not None:
            self.metrics.connections_closed.labels(reason).inc()
        if self._flush is None:
            peer = f"{client[0]}:{client[1]}" if client else "unknown client"
            log.warning("connection from %s closed: %s", peer, detail)
            self._flush = asyncio.get_running_loop().call_later(self.interval_s, self._summarise)
        else:
            self.counts[reason] += 1

    def _summarise(self) -> None:
        self._flush = None
        if not self.counts:
            return
        parts = ", ".join(f"{n} {REASONS.get(reason, reason)}" for reason, n in self.counts.most_common())
        log.warning(
            "%d more connection(s) closed in the last %g s: %s", self.counts.total(), self.interval_s, parts
        )
        self.counts.clear()
        self._flush = asyncio.get_running_loop().call_later(self.interval_s, self._summarise)


def connection_cap(wanted: int, open_files: int) -> int:
    """The connection cap that leaves ``FD_RESERVE`` of the process's ``open_files`` limit free."""
    return max(1, min(wanted, open_files - FD_RESERVE))


def raise_open_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the soft limit now (0 where unknown)."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # e.g. above the kernel's nr_open: keep the soft limit
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def guarded_protocol(
    settings: ServeSettings, report: ConnectionLog, *, max_connections: int, open_files: int = 0
) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` class bound to these limits (uvicorn's ``http=`` argument).

    Args:
        settings: The server's limits.
        report: Where closed connections are counted and logged.
        max_connections: The cap (see :func:`connection_cap`); beyond it a 503.
        open_files: The process's open-file limit (0: unknown); within ``FD_RESERVE // 2`` of it a new
            connection is reset without an answer, so that the descriptors never run out.
    """
    ceiling = max(max_connections, open_files - FD_RESERVE // 2) if open_files else None
    attrs = {"settings": settings, "report": report, "max_connections": max_connections, "ceiling": ceiling}
    return type("ImgclfH11Protocol", (GuardedH11Protocol,), attrs)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits in the module docstring (see :func:`guarded_protocol`)."""

    settings: ServeSettings = ServeSettings()
    report: ConnectionLog = ConnectionLog()
    max_connections: int = ServeSettings().max_connections
    ceiling: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = _protocol_log
        self._deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._phase = "headers"  # idle (between requests), headers, body, answering
        self._closing = False  # an error answer went out: late bytes are dropped until the close
        self._body_bytes = 0
        self._error: h11.RemoteProtocolError | None = None
        parse = self.conn.next_event

        def next_event() -> Any:
            try:
                event = parse()
            except h11.RemoteProtocolError as exc:
                self._error = exc
                raise
            if isinstance(event, (h11.Request, h11.EndOfMessage)):  # a header block, or the trailers
                size = sum(len(k) + len(v) + 4 for k, v in event.headers)
                if isinstance(event, h11.Request):
                    size += len(event.method) + len(event.target)
                if size > self.settings.max_header_bytes:
                    self._error = h11.RemoteProtocolError("header block too large", error_status_hint=431)
                    raise self._error
            elif isinstance(event, h11.Data):
                self._body_bytes += len(event.data)
            return event

        self.conn.next_event = next_event  # type: ignore[method-assign]

    # connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        open_now = len(self.connections)
        self._set_gauge()
        if self.ceiling is not None and open_now > self.ceiling:
            # Close to the open-file limit: no answer, and no lingering that would hold the descriptor.
            self.report.note("fd_limit", self.client, f"{open_now} connections open")
            self._closing = True
            transport.abort()
        elif open_now > self.max_connections:
            cap = self.max_connections
            p = problem(
                503,
                "server busy: too many connections",
                received=f"{open_now} open connections",
                expected=f"at most {cap} (--max-connections)",
                fix="retry after a second; reuse connections (keep-alive)",
            )
            p.headers["retry-after"] = "1"
            self._answer(
                p, "over_capacity", f"{open_now} open, at most {cap} (--max-connections): answered 503"
            )
        else:
            self._arm(self.settings.header_timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
        super().connection_lost(exc)
        self._set_gauge()

    def data_received(self, data: bytes) -> None:
        if self._closing:  # after our error answer: read and drop what the client still sends
            return
        if self._phase == "idle":  # the first byte of the next request on a kept-alive connection
            self._phase = "headers"
            self._arm(self.settings.header_timeout_s, self._headers_late)
        super().data_received(data)

    def handle_events(self) -> None:
        if self._closing:
            return
        try:
            super().handle_events()
        except Exception as exc:  # noqa: BLE001 - bytes uvicorn could not turn into a request
            # Otherwise asyncio logs a traceback per connection ("data_received() call failed").
            self._error = None
            self.send_400_response(f"{type(exc).__name__}: {exc}")
            return
        if not self._closing:
            self._follow_request()

    def on_response_complete(self) -> None:
        if self._closing:
            return
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            # Answered before its body arrived (a 413, 404 or 408): keep-alive would read the rest of
            # the body into the void for as long as the client sends it; close instead.
            self.server_state.total_requests += 1
            self.report.note("unanswered_body", self.client, "answered before its body arrived")
            self._linger()
            return
        super().on_response_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.settings.body_timeout_s, self._not_reading)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _not_reading(self) -> None:
        # The answer cannot be delivered, so nothing is answered: the connection is reset, which also
        # releases the request's task waiting to write (uvicorn's send() waits for the buffer to drain).
        self._write_deadline = None
        limit = self.settings.body_timeout_s
        self.report.note("write_timeout", self.client, f"answers not read for {limit:g} s")
        self._closing = True
        self.transport.abort()

    def shutdown(self) -> None:
        if self._closing:
            self.transport.close()
            return
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        """h11 refused the bytes: answer with our JSON error (uvicorn's is plain text), then close."""
        exc = self._error
        status = exc.error_status_hint if exc is not None else 400
        received = safe_text(str(exc) if exc is not None else msg)[:200]
        if self._closing:  # already answered
            return
        if status == 431:
            limit = self.settings.max_header_bytes
            p = problem(
                431,
                "request line and headers too large",
                received=f"more than {limit} bytes",
                expected=f"at most {limit} bytes",
                fix="send fewer or shorter headers",
            )
        else:
            p = problem(
                status,
                "malformed HTTP request",
                received=received,
                expected="an HTTP/1.1 request line, headers and body framing (RFC 9112)",
                fix="check the client or proxy that sent it",
            )
        self._answer(p, "malformed", f"{received}: answered {status}")

    # deadlines

    def _follow_request(self) -> None:
        """Move the deadlines along with the request h11 has parsed so far."""
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._phase == "answering":  # a new cycle began after the last response
                pending = bool(self.conn.trailing_data[0])
                self._phase = "headers" if pending else "idle"
                if pending:
                    self._arm(self.settings.header_timeout_s, self._headers_late)
        elif state is h11.SEND_BODY:
            if self._phase in ("idle", "headers"):
                self._phase = "body"
                self._body_bytes = 0
                self._arm(self.settings.body_timeout_s, self._body_late)
        elif self._phase != "answering":  # the whole request is in (or the connection is switching/closing)
            self._phase = "answering"
            self._disarm()

    def _headers_late(self) -> None:
        self._deadline = None
        limit = self.settings.header_timeout_s
        if not self.conn.trailing_data[0]:
            # Nothing came at all: there is no request to answer.
            self.report.note("header_timeout", self.client, f"no request within {limit:g} s")
            self._closing = True
            self.transport.close()
            return
        p = problem(
            408,
            "request headers arrived too slowly",
            received=f"an incomplete request line or headers after {limit:g} s",
            expected="the request line and headers within --header-timeout-s",
            fix="check the connection; send each request at once",
        )
        self._answer(p, "header_timeout", f"incomplete headers after {limit:g} s: answered 408")

    def _body_late(self) -> None:
        self._deadline = None
        limit = self.settings.body_timeout_s
        if self._mid_response():
            self.report.note("body_timeout", self.client, f"{self._body_bytes} body bytes in {limit:g} s")
            self._closing = True
            self.transport.close()
            return
        p = problem(
            408,
            "request body arrived too slowly",
            received=f"{self._body_bytes} bytes in {limit:g} s",
            expected="the whole body within --body-timeout-s",
            fix="check the connection; send smaller requests",
        )
        self._answer(p, "body_timeout", f"{self._body_bytes} body bytes in {limit:g} s: answered 408")

    def _mid_response(self) -> bool:
        return self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    # answers

    def _answer(self, p: HTTPProblem, reason: str, detail: str) -> None:
        """Write ``p`` as our JSON error (bypassing h11, whose state no longer matters), then close."""
        self.report.note(reason, self.client, detail)
        if self._mid_response():
            self._closing = True  # half a response is out: it cannot carry another
            self.transport.close()
            return
        body = json.dumps({"error": p.message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *((k.encode(), v.encode()) for k, v in p.headers.items()),
            *SECURITY_HEADERS,
        ]
        try:
            phrase = http.HTTPStatus(p.status).phrase
        except ValueError:  # a status h11 hinted that Python does not name
            phrase = "Error"
        head = f"HTTP/1.1 {p.status} {phrase}\r\n".encode() + b"".join(
            k + b": " + v + b"\r\n" for k, v in headers
        )
        self.transport.write(head + b"\r\n" + body)
        self._linger()

    def _linger(self) -> None:
        """Shut our side, drop what the client still sends for ``LINGER_S``, then close."""
        self._closing = True
        self._unset_keepalive_if_required()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's receive() now says the client is gone
            self.cycle.message_event.set()
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_S, self.transport.close)

    def _set_gauge(self) -> None:
        if self.report.metrics is not None:
            self.report.metrics.open_connections.set(len(self.connections))
