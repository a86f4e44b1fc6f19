"""``imgclf serve`` of an exported .onnx: the same routes answer through onnxruntime, as the .onnx's own
classifier does (no torch on that path), and the v2 FP32 input equals ``predict_proba_input``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402
from servehelpers import png, write_model  # noqa: E402

from imgclf.images.preprocess import preprocess_uint8, to_array  # noqa: E402
from imgclf.interop.onnx_export import export_onnx  # noqa: E402
from imgclf.interop.onnx_runtime import OnnxClassifier  # noqa: E402
from imgclf.loading import load  # noqa: E402
from imgclf.serving.app import ServeSettings, create_app  # noqa: E402
from imgclf.serving.models import ModelStore  # noqa: E402


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve_onnx")
    source = write_model(base / "cells.imgclf")
    export_onnx(source, base / "cells.onnx")
    return base / "cells.onnx"


def test_an_onnx_file_is_served_through_onnxruntime(onnx_file):
    store = ModelStore.open({"cells": str(onnx_file)})
    clf = load(onnx_file)
    assert isinstance(clf, OnnxClassifier)
    images = [png(1), png(2)]
    with TestClient(create_app(store, ServeSettings())) as api:
        for image in images:
            r = api.post("/v1/predict", content=image, headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            want = clf.predict(image)[0]
            (row,) = r.json()["predictions"]
            assert (row["label"], row["confidence"]) == (want.label, want.confidence)
            assert row["probabilities"] == want.probabilities
        x = to_array(np.stack([preprocess_uint8(i, clf.preprocess) for i in images]), clf.preprocess)
        fp32 = {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        body = {"inputs": [fp32]}
        r = api.post("/v2/models/cells/infer", json=body)
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(len(images), -1)
        np.testing.assert_array_equal(got, clf.predict_proba_input(x))
        card = api.get("/v1/models").json()
        assert "cells" in str(card)


def test_max_pixels_lowers_the_cap_for_served_models(onnx_file):
    """``imgclf serve --max-pixels N`` (ModelStore.open(max_pixels=)) refuses larger images with a 422."""
    store = ModelStore.open({"cells": str(onnx_file)}, max_pixels=100)
    assert store.get("cells").classifier.max_pixels == 100
    with TestClient(create_app(store, ServeSettings())) as api:
        r = api.post("/v1/predict", content=png(1), headers={"content-type": "image/png"})
        assert r.status_code == 422 and "image too large" in r.text, r.text
    store.reload("cells")
    assert store.get("cells").classifier.max_pixels == 100


def test_reload_from_an_imgclf_to_its_onnx_export_reports_the_new_files_digest(onnx_file, tmp_path):
    """The export records its source's tensor digest; the server must still tell the two files apart."""
    import shutil

    from imgclf.loading import inspect

    path = tmp_path / "cells.model"
    shutil.copyfile(onnx_file.with_suffix(".imgclf"), path)
    store = ModelStore.open({"cells": str(path)})
    with TestClient(create_app(store, ServeSettings())) as api:
        old = api.get("/v1/models").json()["models"][0]["digest"]
        shutil.copyfile(onnx_file, tmp_path / "new.onnx")
        (tmp_path / "new.onnx").replace(path)
        r = api.post("/v2/repository/models/cells/load")
        assert r.status_code == 200, r.text
        new = r.json()["digest"]
        assert new != old and new == inspect(onnx_file)["integrity"]["graph_sha256"]
        assert api.get("/v1/models").json()["models"][0]["digest"] == new
        assert f'digest="{new}"' in api.get("/metrics").text
        assert isinstance(store.get("cells").classifier, OnnxClassifier)
