"""The official KServe v2 / Triton HTTP client (``tritonclient[http]``, a dev dependency) against a real
``imgclf serve``: with its defaults (binary tensor data both ways) and with JSON, for FP32 and BYTES
inputs, the probabilities equal ``/v1/predict``'s."""

from __future__ import annotations

import base64

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
triton = pytest.importorskip("tritonclient.http")

from servehelpers import ServerProcess, png, write_model  # noqa: E402

from imgclf.images.preprocess import preprocess  # noqa: E402
from imgclf.modelfile import load  # noqa: E402


def test_tritonclient_json_and_binary_fp32_and_bytes_equal_v1(tmp_path):
    model = write_model(tmp_path / "cells.imgclf", ("ring", "square"))
    clf = load(model)
    images = [png(11), png(12), png(13)]
    x = preprocess(images, clf.preprocess).numpy().astype(np.float32)
    with ServerProcess([model, "--batch-delay-ms", "0"]) as server:
        files = [("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
        rows = httpx.post(server.url + "/v1/predict", files=files, timeout=60).json()["predictions"]
        v1 = np.array([[r["probabilities"][c] for c in clf.class_names] for r in rows], dtype=np.float32)

        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=60)
        assert client.is_server_ready() and client.is_model_ready("cells")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        meta = client.get_model_metadata("cells")
        assert meta["outputs"][0]["name"] == "probabilities"

        def infer(name: str, dtype: str, data: np.ndarray, binary: bool) -> np.ndarray:
            inp = triton.InferInput(name, list(data.shape), dtype)
            inp.set_data_from_numpy(data, binary_data=binary)
            if binary:  # the client's defaults: binary input, no outputs named, so binary outputs
                result = client.infer("cells", [inp])
            else:
                out = triton.InferRequestedOutput("probabilities", binary_data=False)
                result = client.infer("cells", [inp], outputs=[out])
            assert result.get_output("probabilities")["datatype"] == "FP32"
            return result.as_numpy("probabilities")

        raw = np.array(images, dtype=np.object_)
        encoded = np.array([base64.b64encode(b) for b in images], dtype=np.object_)
        for name, dtype, data, binary in [
            ("images", "BYTES", raw, True),
            ("images", "BYTES", encoded, False),
        ]:
            got = infer(name, dtype, data, binary)
            assert got.dtype == np.float32 and got.shape == (3, 2)
            assert got.tobytes() == v1.tobytes(), (binary, got, v1)  # the same decode and batch: bitwise
        for binary in (True, False):
            got = infer("input", "FP32", x, binary)
            np.testing.assert_allclose(got, v1, atol=1e-6)  # preprocessed client-side: float rounding
        code, log = server.stop()
    assert code == 0 and "Traceback" not in log
