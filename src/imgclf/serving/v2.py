"""The Open Inference Protocol v2 subset (KServe / Triton): health, metadata, infer, repository load.

``infer`` takes one input: ``BYTES`` (base64-encoded image files, decoded by the one image path) or
``FP32`` ``[N, 3, H, W]`` already preprocessed; it answers ``probabilities`` ``FP32 [N, C]``. A multi-label
model adds ``labels`` ``BYTES [N]``: each image's classes at or over their thresholds joined by ``|``, or
``none`` (its metadata lists the task and thresholds).

Usage::

    add_v2(fastapi_app, state)      # state: imgclf.serving.app.ServerState
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from imgclf._version import __version__
from imgclf.classifier import NO_LABEL
from imgclf.serving.inputs import HTTPProblem
from imgclf.serving.v2_inputs import parse_v2

PLATFORM = "imgclf_pytorch"


def _metadata(served: Any) -> dict[str, Any]:
    spec = served.classifier.preprocess
    outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, served.classifier.num_classes]}]
    parameters: dict[str, Any] = {"class_names": list(served.classifier.class_names), "digest": served.digest}
    if served.classifier.multi_label:
        outputs.append({"name": "labels", "datatype": "BYTES", "shape": [-1]})
        parameters.update(task="multi_label", thresholds=served.classifier.thresholds.tolist())
    return {
        "name": served.name,
        "versions": ["1"],
        "platform": PLATFORM,
        "inputs": [
            {"name": "images", "datatype": "BYTES", "shape": [-1]},
            {"name": "input", "datatype": "FP32", "shape": [-1, 3, spec.height, spec.width]},
        ],
        "outputs": outputs,
        "parameters": parameters,
    }


def _probability_rows(served: Any, preds: list[Any]) -> list[list[float]]:
    """Probabilities in class order; v2 has no per-item errors, so one bad image fails the request."""
    bad = [p for p in preds if p.error is not None]
    if bad:
        raise HTTPProblem(422, f"input image {preds.index(bad[0])}: {bad[0].error}")
    classes = served.classifier.class_names
    return [[p.probabilities[c] for c in classes] for p in preds]


def _infer_response(served: Any, rows: list[list[float]], request_id: str | None) -> dict[str, Any]:
    """The v2 inference response: one ``probabilities`` output, FP32 [N, C], row-major."""
    out = {
        "model_name": served.name,
        "model_version": "1",
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [len(rows), served.classifier.num_classes],
                "data": [v for row in rows for v in row],
            }
        ],
    }
    thresholds = served.classifier.thresholds
    if thresholds is not None:
        names = served.classifier.class_names
        sets = [[c for c, v, t in zip(names, row, thresholds, strict=True) if v >= t] for row in rows]
        labels = ["|".join(s) or NO_LABEL for s in sets]
        out["outputs"].append({"name": "labels", "datatype": "BYTES", "shape": [len(rows)], "data": labels})
    if request_id is not None:
        out["id"] = request_id
    return out


def add_v2(app: FastAPI, state: Any) -> None:
    """Register the v2 routes on ``app``."""

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "imgclf", "version": __version__, "extensions": ["model_repository"]}

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        if state.draining:
            return JSONResponse({"ready": False, "error": "server is shutting down"}, 503)
        return JSONResponse({"ready": True})

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> dict[str, Any]:
        return _metadata(state.model(name))

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> JSONResponse:
        state.model(name)
        return JSONResponse({"name": name, "ready": not state.draining}, 503 if state.draining else 200)

    @app.post("/v2/models/{name}/infer")
    async def infer(request: Request, name: str) -> dict[str, Any]:
        served = state.model(name)
        with state.inferring_request():
            body = await request.body()
            kind, payload, request_id = parse_v2(body, served, state.settings.max_images)
            work = {"images": payload} if kind == "bytes" else {"tensor": payload}
            result = await state.infer(request, served, **work)
        rows = _probability_rows(served, result) if kind == "bytes" else result.tolist()
        state.metrics.images.labels(served.name).inc(len(rows))
        return _infer_response(served, rows, request_id)

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str) -> dict[str, Any]:
        served = await state.reload(name)
        return {"name": name, "loaded": True, "digest": served.digest}
