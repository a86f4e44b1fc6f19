"""The server's FastAPI app: the web page, the v1 JSON API, the v2 protocol, metrics.

Usage::

    store = ModelStore.open({"malaria": "malaria.imgclf"})
    asgi = create_app(store, ServeSettings(max_images=16))   # an ASGI app (uvicorn, httpx.ASGITransport)
    asgi.state.close()                                        # stop the inference thread
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from imgclf._version import __version__
from imgclf.errors import ModelFileError
from imgclf.serving.batching import MAX_BATCH, InferenceQueue, QueueFull
from imgclf.serving.decoding import Decoded, decode_request, good_rows, predictions
from imgclf.serving.guard import ADMITTED, Guard
from imgclf.serving.inputs import HTTPProblem, from_error, parse_top_k, problem, read_images
from imgclf.serving.metrics import Metrics
from imgclf.serving.models import ModelStore, ServedModel
from imgclf.serving.settings import ServeSettings

log = logging.getLogger("imgclf.serve")

STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


class ServerState:
    """What the routes share: models, inference queue, metrics, in-flight count, draining flag."""

    def __init__(self, store: ModelStore, settings: ServeSettings) -> None:
        self.store = store
        self.settings = settings
        self.metrics = Metrics()
        self.inferring = 0  # inference requests in progress, from route entry to answer
        self.queue = InferenceQueue(
            settings.max_queue, settings.batch_delay_ms / 1000, self._batch_ran, lambda: self.inferring
        )
        self.in_flight = 0
        self.draining = False
        self.decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="imgclf-decode")
        self.decoding = 0  # images of requests in the decode step (bounded like the queue)
        for name in store.names():
            served = store.get(name)
            self.metrics.set_model(name, served.digest, served.classifier.arch)
        self.queue.start()

    def _batch_ran(self, size: int) -> None:
        self.metrics.batch_size.observe(size)

    def request_started(self) -> None:
        """Count a request in (event-loop thread only)."""
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)

    def request_finished(self) -> None:
        """Count a request out."""
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)

    def model(self, name: str | None) -> ServedModel:
        """The model ``name`` (the first one for None), or a 404."""
        served = self.store.get(name)
        if served is None:
            raise problem(
                404,
                "no such model",
                received=repr(name),
                expected=f"one of {self.store.names()}",
                fix="see GET /v1/models",
            )
        return served

    async def reload(self, name: str) -> ServedModel:
        """Reload ``name`` off the event loop; the old model keeps serving if the new file is refused."""
        self.model(name)
        try:
            served = await asyncio.to_thread(self.store.reload, name)
        except ModelFileError as exc:
            log.error("reload of %s refused, the old model keeps serving: %s", name, exc)
            raise from_error(422, exc) from None
        self.metrics.set_model(name, served.digest, served.classifier.arch)
        log.info("reloaded %s (digest %s)", name, served.digest)
        return served

    @contextlib.contextmanager
    def inferring_request(self) -> Iterator[None]:
        """Count an inference route's request while it runs (the queue gathers batches by it)."""
        self.inferring += 1
        try:
            yield
        finally:
            self.inferring -= 1

    def refuse_if_draining(self, request: Request) -> None:
        """503 for a request that arrived after shutdown began: new work goes to another instance. One
        that arrived before (marked by the guard, its body perhaps still uploading) is finished."""
        if self.draining and not request.scope.get("state", {}).get(ADMITTED, False):
            raise HTTPProblem(503, "server is shutting down; retry on another instance", {"retry-after": "1"})

    async def infer(self, request: Request, served: ServedModel, **work: Any) -> Any:
        """Queue work for ``served`` and wait for it; a client that goes away cancels its queued work."""
        self.refuse_if_draining(request)
        try:
            future = self.queue.submit(served, **work)
        except QueueFull as exc:
            busy = problem(
                503,
                "server busy",
                received=str(exc),
                expected="room in the queue (--max-queue)",
                fix="retry after a second",
            )
            busy.headers["retry-after"] = "1"
            raise busy from None
        self.metrics.queue_depth.set(self.queue.depth)
        waiter = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not waiter.done():
                waiter.cancel()  # cancels the queued job, so the worker drops it
            self.metrics.queue_depth.set(self.queue.depth)
        if waiter not in done:  # cancelled just above, so waiter.result() would raise CancelledError
            raise ClientDisconnect()
        return waiter.result()

    async def decode(self, request: Request, served: ServedModel, images: list[bytes]) -> Decoded:
        """Decode ``images`` in the decode pool within the request's pixel budget.

        The request's cancellation (its deadline, its client gone) stops the decoding at the next image.
        """
        if self.decoding + len(images) > self.settings.max_queue:
            busy = problem(
                503,
                "server busy",
                received=f"{self.decoding} images being decoded (limit {self.settings.max_queue})",
                expected="room in the queue (--max-queue)",
                fix="retry after a second",
            )
            busy.headers["retry-after"] = "1"
            raise busy
        clf = served.classifier
        budget = self.settings.request_pixels(*clf.preprocess.size)
        cancelled = threading.Event()
        self.decoding += len(images)
        waiter: asyncio.Future[Any] = asyncio.wrap_future(
            self.decoder.submit(decode_request, clf, images, budget, cancelled)
        )
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            cancelled.set()  # done, or abandoned: a decode still running stops at its next image
            if not waiter.done():
                waiter.cancel()  # nobody waits for its outcome (Abandoned) any more
            self.decoding -= len(images)
        if waiter not in done:
            raise ClientDisconnect()
        return waiter.result()

    async def classify(self, request: Request, served: ServedModel, images: list[bytes]) -> list[Any]:
        """Predictions for encoded ``images``: decoded in the pool, then inferred a batch at a time
        (the batches ``imgclf predict`` makes), so an abandoned request stops between batches."""
        self.refuse_if_draining(request)
        decoded = await self.decode(request, served, images)
        parts, flags = [], []
        for start in range(0, len(images), MAX_BATCH):
            rows = good_rows(decoded, start, start + MAX_BATCH)
            if rows.stop > rows.start:
                probs, unlike = await self.infer(request, served, pixels=decoded.pixels[rows])
                parts.append(probs)
                flags.append(unlike)
        probs = np.concatenate(parts) if parts else np.zeros((0, served.classifier.num_classes), np.float32)
        unlike = None if not flags or any(f is None for f in flags) else np.concatenate(flags)
        return predictions(served.classifier, decoded, probs, unlike)

    def close(self) -> None:
        """Stop the inference thread (queued work finishes first) and the decode pool."""
        self.queue.stop()
        self.decoder.shutdown(wait=False, cancel_futures=True)


async def _client_gone(request: Request) -> None:
    """Return once the client disconnects (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _row(filename: str | None, pred: Any, top_k: int) -> dict[str, Any]:
    """One result with ``imgclf predict --output x.jsonl``'s keys."""
    row: dict[str, Any] = {"path": filename} if filename else {}
    if pred.error is not None:
        # The library names a bytes source by its size; the client knows it by its file name.
        label = f"<{pred.source[1:-7]} bytes>" if pred.source.endswith(" bytes>") else pred.source
        row["error"] = pred.error.replace(label, filename, 1) if filename else pred.error
        return row
    row.update(label=pred.label, confidence=pred.confidence, probabilities=pred.probabilities)
    if getattr(pred, "unlike_training_data", None) is not None:  # the model file has an OOD threshold
        row["unlike_training_data"] = pred.unlike_training_data
    if pred.labels is not None:  # multi-label: the classes over their thresholds ([]: none of them)
        row["labels"] = pred.labels
    if top_k > 1:
        row["top_k"] = [{"label": k, "probability": v} for k, v in pred.top_k[:top_k]]
    return row


def _page(name: str, media_type: str) -> Response:
    data = resources.files("imgclf.serving").joinpath("static", name).read_bytes()
    return Response(data, media_type=media_type, headers={"cache-control": "no-cache"})


def _add_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"invalid request: {str(exc.errors())[:300]}"}, 422)

    async def on_gone(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=499)  # nobody reads it; the access log shows 499

    async def on_any(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal error (see the server log)"}, 500)

    app.add_exception_handler(HTTPProblem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ClientDisconnect, on_gone)
    app.add_exception_handler(Exception, on_any)


def _add_v1(app: FastAPI, state: ServerState) -> None:
    @app.get("/")
    async def page() -> Response:
        return _page("index.html", "text/html; charset=utf-8")

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            raise problem(404, "no such file", received=name, expected=sorted(STATIC), fix="load / instead")
        return _page(name, STATIC[name])

    @app.get("/favicon.ico")  # asked for by browsers whatever the page links: answer, no 404 in the log
    async def favicon() -> Response:
        return _page("favicon.svg", STATIC["favicon.svg"])

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"models": [state.model(n).card() for n in state.store.names()]}

    async def predict(request: Request, name: str | None) -> JSONResponse:
        served = state.model(name)
        top_k = parse_top_k(request.query_params.get("top_k"))
        with state.inferring_request():
            images = await read_images(request, state.settings.max_images)
            preds = await state.classify(request, served, [data for _, data in images])
        rows = [_row(filename, p, top_k) for (filename, _), p in zip(images, preds, strict=True)]
        good = sum(p.error is None for p in preds)
        state.metrics.images.labels(served.name).inc(good)
        body: dict[str, Any] = {"model": served.name, "digest": served.digest, "predictions": rows}
        if not good:  # nothing could be classified: the image path's error, as the CLI words it
            return JSONResponse({"error": rows[0]["error"], **body}, 422)
        return JSONResponse(body)

    @app.post("/v1/predict")
    async def predict_default(request: Request) -> JSONResponse:
        return await predict(request, None)

    @app.post("/v1/models/{name}/predict")
    async def predict_named(request: Request, name: str) -> JSONResponse:
        return await predict(request, name)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)


def create_app(store: ModelStore, settings: ServeSettings | None = None) -> Guard:
    """The server as an ASGI app (the FastAPI app inside :class:`Guard`); ``.state`` is its state."""
    from imgclf.serving.v2 import add_v2

    state = ServerState(store, settings or ServeSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(
        title="imgclf",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    _add_handlers(app)
    _add_v1(app, state)
    add_v2(app, state)
    return Guard(app, state)
