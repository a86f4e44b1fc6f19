"""The Open Inference Protocol v2 subset (KServe / Triton): health, metadata, infer, repository load.

``infer`` takes one input: ``BYTES`` (image files: base64 strings in JSON, raw bytes as binary data;
decoded by the one image path) or ``FP32`` ``[N, 3, H, W]`` already preprocessed; it answers
``probabilities`` ``FP32 [N, C]``, in JSON or, when asked, as binary data. Both directions support the
binary tensor data extension (``Inference-Header-Content-Length``; see :mod:`imgclf.serving.v2_inputs`),
so the official ``tritonclient.http`` works with its defaults. A multi-label
model adds ``labels`` ``BYTES [N]`` (as JSON data): each image's classes at or over their thresholds joined by
``|``, or ``none`` (its metadata lists the task and thresholds).

Usage::

    add_v2(fastapi_app, state)      # state: imgclf.serving.app.ServerState
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from imgclf._version import __version__
from imgclf.classifier import label_text
from imgclf.serving.inputs import HTTPProblem, problem
from imgclf.serving.v2_inputs import OUTPUT_NAME, parse_v2

PLATFORM = "imgclf_pytorch"
EXTENSIONS = ["model_repository", "binary_tensor_data"]
HEADER_LENGTH = "inference-header-content-length"


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


def _probability_rows(served: Any, preds: list[Any]) -> np.ndarray:
    """Probabilities (N, C) in class order; v2 has no per-item errors, so one bad image fails the request."""
    bad = [p for p in preds if p.error is not None]
    if bad:
        raise HTTPProblem(422, f"input image {preds.index(bad[0])}: {bad[0].error}")
    classes = served.classifier.class_names
    return np.array([[p.probabilities[c] for c in classes] for p in preds], dtype=np.float32)


def _check_finite(probs: np.ndarray) -> None:
    """A model output that is not finite (an extreme FP32 input) is the client's problem, not a 200."""
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if bad.size:
        raise problem(
            422,
            "the model's output is not finite for this input",
            received=f"probabilities of input row {int(bad[0])} hold NaN or infinity",
            expected="inputs scaled like the model's preprocessing (GET /v2/models/NAME)",
            fix="preprocess the images as the model's metadata says, or send them as BYTES",
        )


def _infer_response(served: Any, probs: np.ndarray, request_id: str | None, binary: bool) -> Response:
    """The v2 inference response: one ``probabilities`` output, FP32 [N, C], row-major (JSON or binary)."""
    output: dict[str, Any] = {
        "name": OUTPUT_NAME,
        "datatype": "FP32",
        "shape": [len(probs), served.classifier.num_classes],
    }
    raw = np.ascontiguousarray(probs, dtype="<f4").tobytes()
    if binary:
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = [float(v) for v in probs.ravel()]
    out: dict[str, Any] = {"model_name": served.name, "model_version": "1", "outputs": [output]}
    clf = served.classifier
    if clf.thresholds is not None:  # multi-label: the label sets, as JSON data in either answer form
        labels = [label_text(clf.label_set(row) or []) for row in probs]
        out["outputs"].append({"name": "labels", "datatype": "BYTES", "shape": [len(probs)], "data": labels})
    if request_id is not None:
        out["id"] = request_id
    if not binary:
        return JSONResponse(out)
    head = json.dumps(out, separators=(",", ":")).encode()
    return Response(
        head + raw,
        media_type="application/octet-stream",
        headers={"inference-header-content-length": str(len(head))},
    )


def add_v2(app: FastAPI, state: Any) -> None:
    """Register the v2 routes on ``app``."""

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "imgclf", "version": __version__, "extensions": EXTENSIONS}

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

    async def infer(request: Request, name: str) -> Response:
        served = state.model(name)
        with state.inferring_request():
            body = await request.body()
            # Parsing (up to --max-body-mb of JSON numbers) takes a while: the decode pool, not the loop.
            header_length = request.headers.get(HEADER_LENGTH)
            req = await asyncio.get_running_loop().run_in_executor(
                state.decoder, parse_v2, body, served, state.settings.max_images, header_length
            )
            if req.kind == "bytes":
                probs = _probability_rows(served, await state.classify(request, served, req.payload))
            else:
                probs = await state.infer(request, served, tensor=req.payload)
        _check_finite(probs)
        state.metrics.images.labels(served.name).inc(len(probs))
        return _infer_response(served, probs, req.request_id, req.binary_output)

    @app.post("/v2/models/{name}/infer")
    async def infer_latest(request: Request, name: str) -> Response:
        return await infer(request, name)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(request: Request, name: str, version: str) -> Response:
        if version != "1":
            raise problem(
                404,
                "no such model version",
                received=repr(version[:20]),
                expected="'1' (each name serves one version)",
                fix="leave the version out: POST /v2/models/NAME/infer",
            )
        return await infer(request, name)

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str) -> dict[str, Any]:
        served = await state.reload(name)
        return {"name": name, "loaded": True, "digest": served.digest}
