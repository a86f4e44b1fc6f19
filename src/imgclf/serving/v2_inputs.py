"""Open Inference Protocol v2 ``infer`` bodies → encoded images (``BYTES``) or a float32 batch (``FP32``).

As in :mod:`imgclf.serving.inputs`, only the container is parsed: encoded images go to the one decode
path untouched; an FP32 tensor must already have the model's input shape.

Usage::

    kind, payload, request_id = parse_v2(body, served, max_images=64)   # ("bytes", [...]) or ("fp32", array)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from imgclf.serving.inputs import decode_base64, parse_json, problem, shape_of, too_many
from imgclf.serving.models import ServedModel


def _v2_input(doc: Any) -> dict[str, Any]:
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise problem(
            400,
            "v2 request needs exactly one input",
            received=shape_of(doc),
            expected='{"inputs": [{"name", "shape", "datatype", "data"}]}',
            fix="send one BYTES input of encoded images or one FP32 input [N, 3, H, W]",
        )
    return inputs[0]


def parse_v2(body: bytes, served: ServedModel, max_images: int) -> tuple[str, Any, str | None]:
    """A v2 ``infer`` body → ``(kind, payload, request id)``.

    ``kind`` is ``"bytes"`` with a list of encoded images or ``"fp32"`` with a float32 array
    (N, 3, H, W); the request id is the body's ``id`` when it is a string.

    Raises:
        HTTPProblem: 400 for a malformed request, 413 for too many images.
    """
    doc = parse_json(body)
    item = _v2_input(doc)
    request_id = doc["id"] if isinstance(doc.get("id"), str) else None
    dtype, shape, data = item.get("datatype"), item.get("shape"), item.get("data")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or not shape
        or any(d < 0 for d in shape)
    ):
        raise problem(
            400,
            "input 'shape' must be a list of non-negative integers",
            received=repr(shape)[:80],
            expected="e.g. [2] for BYTES or [2, 3, H, W] for FP32",
            fix="set 'shape'",
        )
    if not isinstance(data, list):
        raise problem(
            400,
            "input 'data' must be a list",
            received=shape_of(data),
            expected="a JSON list",
            fix="put the tensor's values in 'data'",
        )
    if shape[0] > max_images:
        raise too_many(shape[0], max_images)
    if dtype == "BYTES":
        if len(shape) not in (1, 2) or math.prod(shape) != len(data) or (len(shape) == 2 and shape[1] != 1):
            raise problem(
                400,
                "BYTES input shape does not match its data",
                received=f"shape {shape}, {len(data)} items",
                expected="shape [N] with N base64 images",
                fix="set shape to [len(data)]",
            )
        return "bytes", [decode_base64(x, f"data[{i}]") for i, x in enumerate(data)], request_id
    if dtype == "FP32":
        return "fp32", _fp32(shape, data, served), request_id
    raise problem(
        400,
        "unsupported input datatype",
        received=repr(dtype)[:40],
        expected="BYTES or FP32",
        fix="send encoded images as BYTES or preprocessed pixels as FP32",
    )


def _fp32(shape: list[int], data: list[Any], served: ServedModel) -> np.ndarray:
    spec = served.classifier.preprocess
    want = [shape[0] if shape else 0, 3, spec.height, spec.width]
    if shape != want or shape[0] < 1:
        raise problem(
            400,
            "FP32 input has the wrong shape",
            received=str(shape),
            expected=f"[N, 3, {spec.height}, {spec.width}] with N >= 1",
            fix="preprocess images to the model's input size (see GET /v2/models/NAME)",
        )
    try:
        arr = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is None or arr.size != math.prod(shape) or not np.isfinite(arr).all():
        raise problem(
            400,
            "FP32 data does not fill the shape with finite numbers",
            received=f"{len(data)} items",
            expected=f"{math.prod(shape)} finite numbers, row-major",
            fix="flatten the tensor in row-major (C) order",
        )
    return np.ascontiguousarray(arr.reshape(shape))
