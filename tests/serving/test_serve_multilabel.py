"""A multi-label model behind ``imgclf serve``: v1 rows carry the label set, v2 adds a ``labels`` output."""

from __future__ import annotations

import base64
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402
from servehelpers import png  # noqa: E402

from helpers import make_classifier  # noqa: E402
from imgclf.modelfile import load, save  # noqa: E402
from imgclf.serving.app import ServeSettings, create_app  # noqa: E402
from imgclf.serving.models import ModelStore  # noqa: E402

THRESHOLDS = [0.45, 0.99, 0.5]


def multilabel_model(path: Path, thresholds: list[float] = THRESHOLDS) -> Path:
    clf = make_classifier(("cat", "dog", "fox"), seed=2)
    clf.manifest["task"] = {"type": "multi_label", "thresholds": thresholds, "balance": "none"}
    save(clf, path)
    return path


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    path = multilabel_model(tmp_path_factory.mktemp("ml_serve") / "pets.imgclf")
    with TestClient(create_app(ModelStore.open({"pets": str(path)}), ServeSettings())) as c:
        yield c, load(path)


def test_v1_rows_carry_the_label_set_and_every_probability(api):
    c, clf = api
    image = png(4)
    want = clf.predict(image)[0]
    r = c.post("/v1/models/pets/predict", content=image, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    (row,) = r.json()["predictions"]
    assert row["labels"] == want.labels and row["label"] == ("|".join(want.labels) or "none")
    assert row["probabilities"] == want.probabilities and set(row["probabilities"]) == {"cat", "dog", "fox"}
    probs = np.array([want.probabilities[k] for k in ("cat", "dog", "fox")])
    assert want.labels == [
        k for k, p, t in zip(("cat", "dog", "fox"), probs, THRESHOLDS, strict=True) if p >= t
    ]


def test_v2_metadata_and_infer_give_thresholds_and_label_sets(api):
    c, clf = api
    meta = c.get("/v2/models/pets").json()
    assert meta["parameters"]["task"] == "multi_label" and meta["parameters"]["thresholds"] == THRESHOLDS
    assert {"name": "labels", "datatype": "BYTES", "shape": [-1]} in meta["outputs"]
    images = [png(5), png(6)]
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "BYTES",
                "shape": [2],
                "data": [base64.b64encode(b).decode() for b in images],
            }
        ]
    }
    r = c.post("/v2/models/pets/infer", json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    want = clf.predict(images)
    assert outputs["labels"]["data"] == [p.label for p in want]
    assert outputs["probabilities"]["data"] == [
        p.probabilities[k] for p in want for k in ("cat", "dog", "fox")
    ]
