"""The v2 protocol's edges: exact element types per datatype, non-finite numbers, nested data, and the
binary tensor data extension (requests and responses) over the ASGI app."""

from __future__ import annotations

import base64
import json
import struct
import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402
from servehelpers import png, write_model  # noqa: E402

from imgclf.images.preprocess import preprocess  # noqa: E402
from imgclf.modelfile import load  # noqa: E402
from imgclf.serving.app import ServeSettings, create_app  # noqa: E402
from imgclf.serving.models import ModelStore  # noqa: E402

SHAPE = [1, 3, 16, 16]
COUNT = 3 * 16 * 16


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("serve_v2") / "cells.imgclf")


@pytest.fixture(scope="module")
def api(model_file):
    with TestClient(create_app(ModelStore.open({"cells": str(model_file)}), ServeSettings())) as c:
        yield c


def fp32(data, shape=SHAPE, **extra):
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": data, **extra}]}


def binary_body(header: dict, raw: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + raw, {"inference-header-content-length": str(len(head))}


def read_binary(r) -> tuple[dict, bytes]:
    n = int(r.headers["inference-header-content-length"])
    return json.loads(r.content[:n]), r.content[n:]


@pytest.mark.parametrize(
    ("index", "value", "kind"),
    [(0, "0.5", "string"), (7, True, "boolean"), (COUNT - 1, None, "null"), (3, {"a": 1}, "object")],
)
def test_fp32_elements_must_be_json_numbers(api, index, value, kind):
    data = [0.0] * COUNT
    data[index] = value
    r = api.post("/v2/models/cells/infer", json=fp32(data))
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(f"FP32 data holds a {kind}; received data[{index}] = {value!r}")


def test_bytes_elements_must_be_strings(api):
    body = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": ["AA==", 5]}]}
    r = api.post("/v2/models/cells/infer", json=body)
    assert r.status_code == 400
    assert r.json()["error"].startswith("BYTES data holds a number; received data[1] = 5")


def test_integers_are_numbers_and_nested_data_equals_flat(api):
    x = np.random.default_rng(0).uniform(-2, 2, SHAPE).astype(np.float32)
    flat = api.post("/v2/models/cells/infer", json=fp32(x.ravel().tolist()))
    nested = api.post("/v2/models/cells/infer", json=fp32(x.tolist()))
    assert flat.status_code == nested.status_code == 200, nested.text
    assert flat.json()["outputs"] == nested.json()["outputs"]
    ints = api.post("/v2/models/cells/infer", json=fp32([0] * COUNT))
    assert ints.status_code == 200, ints.text
    bad = x.tolist()
    bad[0][2][5][1] = "x"
    r = api.post("/v2/models/cells/infer", json=fp32(bad))
    assert r.json()["error"].startswith("FP32 data holds a string; received data[0][2][5][1] = 'x'")
    r = api.post("/v2/models/cells/infer", json=fp32([[0.0] * 10]))
    assert r.status_code == 400 and "nested input 'data' does not follow its shape" in r.text


@pytest.mark.parametrize(("literal", "where"), [("1e39", 4), ("1e400", 4), ("-" + "9" * 400, 4)])
def test_non_finite_fp32_inputs_are_400_naming_the_element(api, literal, where):
    items = ["0.0"] * COUNT
    items[where] = literal
    body = '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": [%s]}]}'
    r = api.post("/v2/models/cells/infer", content=(body % ",".join(items)).encode())
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(
        f"FP32 data holds a number that is not finite as float32; received data[{where}] = "
    )


def test_finite_inputs_with_non_finite_outputs_are_422(api):
    r = api.post("/v2/models/cells/infer", json=fp32([3e38, -3e38] * (COUNT // 2)))
    assert r.status_code == 422, r.text
    assert r.json() == {
        "error": "the model's output is not finite for this input; received probabilities of input row 0"
        " hold NaN or infinity; expected inputs scaled like the model's preprocessing (GET"
        " /v2/models/NAME). Fix: preprocess the images as the model's metadata says, or send them as BYTES"
    }


def test_server_metadata_advertises_binary_tensor_data(api):
    assert "binary_tensor_data" in api.get("/v2").json()["extensions"]


def test_binary_fp32_and_bytes_inputs_and_binary_output_equal_json(api, model_file):
    clf = load(model_file)
    images = [png(3), png(4)]
    want = clf.predict_proba(images)
    x = preprocess(images, clf.preprocess).numpy()
    raw = x.astype("<f4").tobytes()
    header = {
        "id": "b1",
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    body, headers = binary_body(header, raw)
    r = api.post("/v2/models/cells/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    head, tail = read_binary(r)
    assert head["id"] == "b1"
    (out,) = head["outputs"]
    assert out["shape"] == [2, 2] and out["parameters"] == {"binary_data_size": 16} and "data" not in out
    np.testing.assert_allclose(np.frombuffer(tail, "<f4").reshape(2, 2), want, atol=1e-6)

    elements = b"".join(struct.pack("<I", len(b)) + b for b in images)
    header = {
        "inputs": [
            {
                "name": "images",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(elements)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    body, headers = binary_body(header, elements)
    r = api.post("/v2/models/cells/versions/1/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    _, tail = read_binary(r)
    assert np.frombuffer(tail, "<f4").tobytes() == want.astype("<f4").tobytes()

    # The same BYTES as JSON (base64), output as JSON: the same numbers.
    header["inputs"][0].pop("parameters")
    header["inputs"][0]["data"] = [base64.b64encode(b).decode() for b in images]
    header["parameters"]["binary_data_output"] = False
    r = api.post("/v2/models/cells/infer", json=header)
    assert r.status_code == 200 and "inference-header-content-length" not in r.headers
    assert r.json()["outputs"][0]["data"] == [float(v) for v in want.ravel()]


@pytest.mark.parametrize(
    ("header_length", "size", "raw", "start"),
    [
        ("abc", 4, b"\0" * 4, "bad Inference-Header-Content-Length"),
        ("99999", 4, b"\0" * 4, "bad Inference-Header-Content-Length"),
        (None, 8, b"\0" * 4, "binary tensor data does not match the JSON header"),
        (None, 4, b"\xff\0\0\0", "binary BYTES element is cut short"),
        (None, 8, struct.pack("<I", 0) * 2, "BYTES input shape does not match its data"),
        (None, -1, b"", "input parameter 'binary_data_size' must be a non-negative integer"),
    ],
)
def test_malformed_binary_bodies_are_400(api, header_length, size, raw, start):
    header = {
        "inputs": [
            {"name": "images", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": size}}
        ]
    }
    body, headers = binary_body(header, raw)
    if header_length is not None:
        headers["inference-header-content-length"] = header_length
    r = api.post("/v2/models/cells/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(start)


def test_binary_fp32_must_fill_the_shape_with_finite_values(api):
    for raw, start in [
        (b"\0" * 8, "FP32 binary data does not fill the shape"),
        (np.full(COUNT, np.inf, "<f4").tobytes(), "FP32 data holds a number that is not finite"),
    ]:
        header = {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": SHAPE,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
        body, headers = binary_body(header, raw)
        r = api.post("/v2/models/cells/infer", content=body, headers=headers)
        assert r.status_code == 400 and r.json()["error"].startswith(start), r.text


@pytest.mark.parametrize(
    ("extra", "start"),
    [
        ({"outputs": [{"name": "logits"}]}, "unknown output requested"),
        (
            {"outputs": [{"name": "probabilities", "parameters": {"binary_data": "yes"}}]},
            "outputs[0] parameter",
        ),
        (
            {"parameters": {"binary_data_output": 1}},
            "request parameter 'binary_data_output' must be a boolean",
        ),
    ],
)
def test_bad_output_requests_are_400(api, extra, start):
    r = api.post("/v2/models/cells/infer", json={**fp32([0.0] * COUNT), **extra})
    assert r.status_code == 400 and r.json()["error"].startswith(start), r.text


def test_unknown_model_version_is_404(api):
    r = api.post("/v2/models/cells/versions/2/infer", json=fp32([0.0] * COUNT))
    assert r.status_code == 404 and r.json()["error"].startswith("no such model version")
