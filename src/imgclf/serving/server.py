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

log = logging.getLogger("imgclf.serve")

# uvicorn's default is 5 s; under load (a busy 2-core machine) a benchmark client hit a connection reset,
# most likely a pooled connection closed as it was reused. 15 s keeps them; an idle one costs little.
KEEP_ALIVE_S = 15


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
    """Serve ``app`` (from :func:`imgclf.serving.app.create_app`) until SIGTERM/SIGINT."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,  # the Guard writes one line per request, with its request ID
        timeout_graceful_shutdown=int(max(1, grace_s)),
        timeout_keep_alive=KEEP_ALIVE_S,
        lifespan="on",
        server_header=False,
    )
    _Server(config, app.state, grace_s).run()
