"""The ASGI layer around every request: request ID and access log, auth, body limit, deadline, metrics.

It sits outside the FastAPI app, so it also covers requests that never reach a route: an oversized
``Content-Length`` is refused before a byte of the body is read, a body that grows past the limit is
cut off as it streams, and a request past its deadline is cancelled (its queued inference dropped).

Usage::

    asgi = Guard(fastapi_app, state)     # state: imgclf.serving.app.ServerState
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

from imgclf.errors import safe_text
from imgclf.serving.inputs import HTTPProblem, problem

log = logging.getLogger("imgclf.serve")

OPEN_PATHS = frozenset(
    {"/", "/static/app.js", "/static/app.css", "/static/favicon.svg", "/favicon.ico", "/v2/health/live",
     "/v2/health/ready"}
)  # fmt: skip
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; "
        b"img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
# The request-state key the guard sets on arrival: True when the request arrived before shutdown began,
# so it is finished even if its body is still uploading when SIGTERM comes (ServerState.refuse_if_draining).
ADMITTED = "imgclf_admitted"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BodyTooLarge(HTTPProblem):
    """The body streamed past ``--max-body-mb``."""


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def body_too_large(size: str, limit: int) -> BodyTooLarge:
    """413 for a body over ``limit`` bytes."""
    p = problem(
        413,
        "request body too large",
        received=size,
        expected=f"at most {limit} bytes (--max-body-mb)",
        fix="send fewer or smaller images per request",
    )
    return BodyTooLarge(413, p.message)


class Guard:
    """Wraps the app; see the module docstring. ``state`` is the server's shared state."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        started = time.perf_counter()
        seen = {"status": 0, "body": 0, "body_done": False}
        limit = self.state.settings.max_body_bytes

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                extra = [(b"x-request-id", rid.encode()), *SECURITY_HEADERS]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        async def counted_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                seen["body"] += len(message.get("body", b""))
                if seen["body"] > limit:
                    raise body_too_large(f"more than {limit} bytes", limit)
                seen["body_done"] = not message.get("more_body", False)
            return message

        scope.setdefault("state", {})[ADMITTED] = not self.state.draining
        self.state.request_started()
        try:
            early = self._refuse_early(scope)
            if early is not None:
                await send_problem(send_with_headers, early)
            else:
                await self._call_with_deadline(scope, counted_receive, send_with_headers, seen)
        except Exception:  # noqa: BLE001 - logged here; the client got a JSON 500 (or nothing if gone)
            log.exception("%s unhandled error", rid)
            if not seen["status"]:
                await send_problem(send_with_headers, HTTPProblem(500, f"internal error (request {rid})"))
        finally:
            self.state.request_finished()
            self._log(scope, rid, seen["status"], time.perf_counter() - started)

    def _refuse_early(self, scope: dict[str, Any]) -> HTTPProblem | None:
        key = self.state.settings.api_key
        if key is not None and scope["path"] not in OPEN_PATHS:
            given = (_header(scope, b"authorization") or "").encode("latin-1")
            if not hmac.compare_digest(given, b"Bearer " + key):
                p = problem(
                    401,
                    "missing or wrong API key",
                    received="no matching Authorization header",
                    expected="Authorization: Bearer <the key in --api-key-file>",
                    fix="send the server's API key",
                )
                return HTTPProblem(401, p.message, {"www-authenticate": "Bearer"})
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.state.settings.max_body_bytes:
            return body_too_large(f"Content-Length {length}", self.state.settings.max_body_bytes)
        return None

    async def _call_with_deadline(self, scope: Any, receive: Any, send: Any, seen: dict[str, Any]) -> None:
        timeout = self.state.settings.timeout_s
        try:
            await asyncio.wait_for(self.app(scope, receive, send), timeout)
        except asyncio.TimeoutError:
            if seen["status"]:
                return
            if seen["body_done"] or scope["method"] in ("GET", "HEAD"):
                p = problem(
                    504,
                    "request took too long",
                    received=f"more than {timeout:g} s",
                    expected="an answer within --timeout-s",
                    fix="send fewer images or retry later",
                )
            else:
                p = problem(
                    408,
                    "request body arrived too slowly",
                    received=f"{seen['body']} bytes in {timeout:g} s",
                    expected="the whole body within --timeout-s",
                    fix="check the connection; send smaller requests",
                )
            await send_problem(send, p)

    def _log(self, scope: dict[str, Any], rid: str, status: int, seconds: float) -> None:
        route = scope.get("route")
        label = getattr(route, "path", None) or "unmatched"
        self.state.metrics.observe(label, status or 499, seconds)
        if status in (0, 499):  # the client went away first: normal, counted, this line its only log
            self.state.metrics.client_disconnects.inc()
        client = scope.get("client") or ("-", 0)
        path = safe_text(scope.get("path", ""))[:200]
        log.info(
            '%s %s "%s %s" %s %.1fms', rid, client[0], scope["method"], path, status or "-", seconds * 1e3
        )


async def send_problem(send: Any, p: HTTPProblem) -> None:
    """Answer ``{"error": message}`` with ``p.status`` directly over ASGI."""
    body = json.dumps({"error": p.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in p.headers.items()]
    try:
        await send({"type": "http.response.start", "status": p.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except OSError:  # the client is gone: nothing to deliver
        pass
