"""Run the app under uvicorn with imgclf's signal handling.

``SIGTERM`` (and a first Ctrl-C): readiness turns 503, new work is refused, requests in flight finish
(at most ``grace_s``), then the server stops and the process exits 0. A second Ctrl-C stops at once.
``SIGHUP``: every model file is loaded, verified and warmed up again and swapped in; a file that is
refused leaves the old model serving (the error is logged).

Usage::

    serve(create_app(store, settings), host="127.0.0.1", port=8000, grace_s=30)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from imgclf.serving.inputs import HTTPProblem
from imgclf.serving.protocol import ConnectionLog, connection_cap, guarded_protocol, raise_open_file_limit

log = logging.getLogger("imgclf.serve")


class _Server(uvicorn.Server):
    """uvicorn's server with draining on SIGTERM and reloading on SIGHUP."""

    def __init__(self, config: uvicorn.Config, state: Any, grace_s: float) -> None:
        super().__init__(config)
        self.state = state
        self.grace_s = grace_s
        self._tasks: set[asyncio.Task] = set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGTERM: self._drain, signal.SIGINT: self._interrupt}
        if hasattr(signal, "SIGHUP"):
            handlers[signal.SIGHUP] = self._reload_all
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        try:
            yield
        finally:
            for sig in handlers:
                loop.remove_signal_handler(sig)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drain(self) -> None:
        if self.state.draining:
            return
        self.state.draining = True
        log.info("shutting down: readiness is 503; waiting for %d request(s) in flight", self.state.in_flight)
        self._spawn(self._exit_when_idle())

    def _interrupt(self) -> None:
        if self.state.draining:
            self.force_exit = self.should_exit = True
            return
        self._drain()

    async def _exit_when_idle(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while self.state.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.should_exit = True

    def _reload_all(self) -> None:
        async def reload_all() -> None:
            for name in self.state.store.names():
                with contextlib.suppress(HTTPProblem):  # refused: logged, the old model keeps serving
                    await self.state.reload(name)

        log.info("SIGHUP: reloading %d model(s)", len(self.state.store.names()))
        self._spawn(reload_all())


def serve(app: Any, *, host: str, port: int, grace_s: float) -> None:
    """Serve ``app`` (from :func:`imgclf.serving.app.create_app`) until SIGTERM/SIGINT.

    The connection limits (deadlines, cap, header size) are ``app.state.settings``'; the cap is lowered
    to fit the process's open-file limit, whose soft value is raised to the hard one first.
    """
    settings = app.state.settings
    open_files = raise_open_file_limit()
    cap = connection_cap(settings.max_connections, open_files) if open_files else settings.max_connections
    if cap < settings.max_connections:
        log.warning(
            "at most %d connections (not --max-connections %d): the process may open %d files (ulimit -n)",
            cap,
            settings.max_connections,
            open_files,
        )
    report = ConnectionLog(app.state.metrics)
    protocol = guarded_protocol(settings, report, max_connections=cap, open_files=open_files)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,  # the Guard writes one line per request, with its request ID
        timeout_graceful_shutdown=int(max(1, grace_s)),
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # a float works
        http=protocol,
        ws="none",  # no route speaks WebSocket: an upgrade request is answered as plain HTTP
        h11_max_incomplete_event_size=settings.max_header_bytes,
        lifespan="on",
        server_header=False,
    )
    _Server(config, app.state, grace_s).run()
