"""Open Inference Protocol v2 ``infer`` bodies → encoded images (``BYTES``) or a float32 batch (``FP32``).

As in :mod:`imgclf.serving.inputs`, only the container is parsed: encoded images go to the one decode
path untouched; an FP32 tensor must already have the model's input shape.

Two body forms are read. Plain JSON: each input's ``data`` holds the tensor's elements, flat or nested
to its shape, of exactly the JSON type the protocol gives its datatype (FP32: numbers; BYTES: strings,
here base64-encoded image files); anything else is refused naming the element. The binary tensor data
extension (``Inference-Header-Content-Length: N``): the first N bytes are the JSON header, the rest the
inputs' raw bytes in input order, each sized by its ``binary_data_size`` parameter (FP32: little-endian
float32, row-major; BYTES: every element as a 4-byte little-endian length and that many bytes, here
raw image files). The request also says whether the answer's output is wanted as binary data.

Usage::

    req = parse_v2(body, served, max_images=64, header_length=None)
    req.kind, req.payload       # ("bytes", [b"...", ...]) or ("fp32", float32 array (N, 3, H, W))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from imgclf.serving.inputs import decode_base64, parse_json, problem, shape_of, too_many
from imgclf.serving.models import ServedModel

OUTPUT_NAME = "probabilities"
FLOAT32_MAX = float(np.finfo(np.float32).max)
_JSON_TYPES = {str: "string", bool: "boolean", list: "array", dict: "object", type(None): "null"}


@dataclass(frozen=True)
class V2Request:
    """A parsed v2 ``infer`` request.

    Attributes:
        kind: ``"bytes"`` (payload: a list of encoded images) or ``"fp32"`` (a float32 array (N, 3, H, W)).
        payload: The input's data.
        request_id: The body's ``id`` when it is a string.
        binary_output: Whether the client asked for the output as binary data (the extension).
    """

    kind: str
    payload: Any
    request_id: str | None
    binary_output: bool


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


def split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """``(JSON header, binary tail)`` of a body; without ``Inference-Header-Content-Length`` all is JSON.

    Raises:
        HTTPProblem: 400 if the header's value is not a length within the body.
    """
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isdigit() or not 0 < int(text) <= len(body):
        raise problem(
            400,
            "bad Inference-Header-Content-Length",
            received=f"{text[:30]!r} for a {len(body)}-byte body",
            expected="the byte length of the JSON header that starts the body",
            fix="set it to the JSON header's length (tritonclient does), or drop it for a JSON-only body",
        )
    n = int(text)
    return body[:n], body[n:]


def parse_v2(
    body: bytes, served: ServedModel, max_images: int, header_length: str | None = None
) -> V2Request:
    """A v2 ``infer`` body (JSON, or JSON header + binary tensor data) → :class:`V2Request`.

    Args:
        body: The request body.
        served: The model the request is for (its input size).
        max_images: Most images (first dimension) one request may hold.
        header_length: The ``Inference-Header-Content-Length`` header's value, if sent.

    Raises:
        HTTPProblem: 400 for a malformed request, 413 for too many images.
    """
    head, tail = split_binary(body, header_length)
    doc = parse_json(head)
    item = _v2_input(doc)
    request_id = doc["id"] if isinstance(doc.get("id"), str) else None
    binary_output = _binary_output(doc)
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
    raw = _binary_input(item, tail)
    if raw is None and not isinstance(data, list):
        raise problem(
            400,
            "input 'data' must be a list",
            received=shape_of(data),
            expected="a JSON list (or the binary tensor data extension's binary_data_size parameter)",
            fix="put the tensor's values in 'data'",
        )
    if shape[0] > max_images:
        raise too_many(shape[0], max_images)
    if dtype == "BYTES":
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise _bytes_shape(shape, "")
        if raw is not None:
            return V2Request("bytes", _bytes_elements(raw, shape[0]), request_id, binary_output)
        listed = cast(list[Any], data)  # without binary data, `data` was checked to be a list
        items = _elements(listed, shape)
        if len(items) != shape[0]:
            raise _bytes_shape(shape, f", {len(items)} items")
        _check_types(items, (str,), shape, listed, "BYTES", "strings (base64-encoded image files)")
        images = [decode_base64(x, f"data[{i}]") for i, x in enumerate(items)]
        return V2Request("bytes", images, request_id, binary_output)
    if dtype == "FP32":
        return V2Request("fp32", _fp32(shape, data, raw, served), request_id, binary_output)
    raise problem(
        400,
        "unsupported input datatype",
        received=repr(dtype)[:40],
        expected="BYTES or FP32",
        fix="send encoded images as BYTES or preprocessed pixels as FP32",
    )


def _binary_output(doc: dict[str, Any]) -> bool:
    """Whether the output goes back as binary: ``binary_data_output``, or the output's ``binary_data``."""
    params = _parameters(doc.get("parameters"), "request 'parameters'")
    binary = _flag(params, "binary_data_output", "request parameter 'binary_data_output'")
    outputs = doc.get("outputs")
    if outputs is None:
        return binary
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise problem(
            400,
            "'outputs' must be a list of objects",
            received=shape_of(outputs),
            expected=f'[{{"name": "{OUTPUT_NAME}"}}]',
            fix="drop 'outputs' or name the probabilities output",
        )
    for i, out in enumerate(outputs):
        if out.get("name") != OUTPUT_NAME:
            raise problem(
                400,
                "unknown output requested",
                received=f"outputs[{i}].name = {str(out.get('name'))[:40]!r}",
                expected=repr(OUTPUT_NAME),
                fix="see the model's outputs: GET /v2/models/NAME",
            )
        params = _parameters(out.get("parameters"), f"outputs[{i}].parameters")
        if "binary_data" in params:
            binary = _flag(params, "binary_data", f"outputs[{i}] parameter 'binary_data'")
    return binary


def _parameters(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise problem(
            400,
            f"{what} must be an object",
            received=shape_of(value),
            expected='a JSON object, e.g. {"binary_data": true}',
            fix="send parameters as a JSON object or leave them out",
        )
    return value


def _flag(params: dict[str, Any], key: str, what: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise problem(
            400,
            f"{what} must be a boolean",
            received=repr(value)[:40],
            expected="true or false",
            fix=f"send {key}: true or false",
        )
    return value


def _binary_input(item: dict[str, Any], tail: bytes) -> bytes | None:
    """The input's raw bytes when it uses the binary extension (None: its data is JSON)."""
    params = _parameters(item.get("parameters"), "input 'parameters'")
    size = params.get("binary_data_size")
    if size is None:
        if tail:
            raise _binary_mismatch(f"{len(tail)} bytes after the JSON header, no input with binary_data_size")
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise problem(
            400,
            "input parameter 'binary_data_size' must be a non-negative integer",
            received=repr(size)[:40],
            expected="the input's byte count in the binary part of the body",
            fix="let tritonclient set it, or set it to the tensor's byte length",
        )
    if "data" in item:
        raise problem(
            400,
            "an input has both 'data' and 'binary_data_size'",
            received="both",
            expected="one of them",
            fix="send the tensor either in JSON 'data' or as binary data",
        )
    if size != len(tail):
        raise _binary_mismatch(f"binary_data_size {size}, {len(tail)} bytes after the JSON header")
    return tail


def _binary_mismatch(received: str) -> Any:
    return problem(
        400,
        "binary tensor data does not match the JSON header",
        received=received,
        expected="the inputs' binary_data_size values to add up to the bytes after the JSON header",
        fix="set Inference-Header-Content-Length to the JSON header's length and binary_data_size per input",
    )


def _bytes_shape(shape: list[int], items: str) -> Any:
    return problem(
        400,
        "BYTES input shape does not match its data",
        received=f"shape {shape}{items}",
        expected="shape [N] with N base64 images",
        fix="set shape to [len(data)]",
    )


def _bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """Binary BYTES elements: each a 4-byte little-endian length followed by that many bytes."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw) and len(out) <= count:
        n = int.from_bytes(raw[pos : pos + 4], "little") if pos + 4 <= len(raw) else -1
        if n < 0 or pos + 4 + n > len(raw):
            raise problem(
                400,
                "binary BYTES element is cut short",
                received=f"element {len(out)} at byte {pos} of {len(raw)}",
                expected="a 4-byte little-endian length, then that many bytes, per element",
                fix="serialize with tritonclient.utils.serialize_byte_tensor",
            )
        out.append(raw[pos + 4 : pos + 4 + n])
        pos += 4 + n
    if len(out) != count:
        raise _bytes_shape([count], f", {len(out)}{'+' if pos < len(raw) else ''} binary elements")
    return out


def _elements(data: list[Any], shape: list[int]) -> list[Any]:
    """A tensor's elements in row-major order: ``data`` is flat, or nested exactly to ``shape``."""
    if not data or type(data[0]) is not list:
        return data  # flat (a list among the elements is refused by the type check)
    out: list[Any] = []

    def walk(level: list[Any], depth: int, where: str) -> None:
        last = depth == len(shape) - 1
        if type(level) is not list or len(level) != shape[depth]:
            raise problem(
                400,
                "nested input 'data' does not follow its shape",
                received=f"{where}: {shape_of(level)}" + (f" of {len(level)}" if type(level) is list else ""),
                expected=f"a list of {shape[depth]} at depth {depth} of shape {shape}",
                fix="send the data flat in row-major order, or nested exactly as its shape",
            )
        if last:
            out.extend(level)
            return
        for i, sub in enumerate(level):
            walk(sub, depth + 1, f"{where}[{i}]")

    walk(data, 0, "data")
    return out


def _where(i: int, shape: list[int], data: list[Any]) -> str:
    """The element's name as the client wrote it: ``data[i]`` (flat) or ``data[a][b]...`` (nested)."""
    if data and type(data[0]) is list:
        return "data" + "".join(f"[{int(k)}]" for k in np.unravel_index(i, shape))
    return f"data[{i}]"


def _check_types(
    items: list[Any], allowed: tuple[type, ...], shape: list[int], data: list[Any], dtype: str, expected: str
) -> None:
    """Every element is of an allowed JSON type (``type`` is exact: a boolean is not a number)."""
    if set(map(type, items)) <= set(allowed):
        return
    i, x = next((i, x) for i, x in enumerate(items) if type(x) not in allowed)
    kind = _JSON_TYPES.get(type(x), "number")
    raise problem(
        400,
        f"{dtype} data holds a {kind}",
        received=f"{_where(i, shape, data)} = {repr(x)[:40]}",
        expected=f"{expected}, as the Open Inference Protocol types {dtype} elements",
        fix=f"send every element as {expected.split(' (')[0]}",
    )


def _finite32(x: Any) -> bool:
    try:
        return math.isfinite(x) and abs(float(x)) <= FLOAT32_MAX
    except OverflowError:  # an integer beyond any float
        return False


def _fp32(shape: list[int], data: Any, raw: bytes | None, served: ServedModel) -> np.ndarray:
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
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != 4 * count:
            raise problem(
                400,
                "FP32 binary data does not fill the shape",
                received=f"{len(raw)} bytes",
                expected=f"{4 * count} bytes ({count} little-endian float32 values, row-major)",
                fix="send the tensor as float32 in row-major (C) order",
            )
        arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise _not_finite(f"element {int(bad[0])} = {arr[bad[0]]}")
        return arr.reshape(shape)
    items = _elements(data, shape)
    if len(items) != count:
        raise problem(
            400,
            "FP32 data does not fill the shape",
            received=f"{len(items)} items",
            expected=f"{count} numbers, row-major",
            fix="flatten the tensor in row-major (C) order",
        )
    _check_types(items, (float, int), shape, data, "FP32", "numbers")
    try:
        with np.errstate(over="ignore"):
            arr = np.asarray(items, dtype=np.float32)
        ok = bool(np.isfinite(arr).all())
    except OverflowError:  # an integer literal beyond float64
        ok = False
    if not ok:
        i = next(i for i, x in enumerate(items) if not _finite32(x))
        raise _not_finite(f"{_where(i, shape, data)} = {repr(items[i])[:40]}")
    return np.ascontiguousarray(arr.reshape(shape))


def _not_finite(received: str) -> Any:
    return problem(
        400,
        "FP32 data holds a number that is not finite as float32",
        received=received,
        expected=f"finite numbers within +-{FLOAT32_MAX:.4g}",
        fix="send the preprocessed pixels (see the model's preprocess in GET /v2/models/NAME)",
    )
