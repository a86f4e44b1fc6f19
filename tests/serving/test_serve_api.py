"""``imgclf serve`` over its ASGI app (Starlette's httpx-based TestClient): every route, input and error."""

from __future__ import annotations

import base64
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

with warnings.catch_warnings():  # Starlette's notice about httpx2; the client works the same
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402
from servehelpers import bomb_png, png, write_model  # noqa: E402

from helpers import run_cli  # noqa: E402
from imgclf.modelfile import load  # noqa: E402
from imgclf.serving.app import ServeSettings, create_app  # noqa: E402
from imgclf.serving.models import ModelStore  # noqa: E402

XSS = "<img src=x onerror=alert(1)>"
TEXT_ONLY_FORM = b'--y\r\nContent-Disposition: form-data; name="a"\r\n\r\nv\r\n--y--\r\n'


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("serve_api")
    return {
        "cells": write_model(base / "cells.imgclf"),
        "xss": write_model(base / "xss.imgclf", ("ok", XSS), seed=3),
    }


@pytest.fixture(scope="module")
def store(model_files) -> ModelStore:
    return ModelStore.open({name: str(p) for name, p in model_files.items()})


def client(store: ModelStore, **settings) -> TestClient:
    return TestClient(create_app(store, ServeSettings(**settings)))


@pytest.fixture
def api(store):
    with client(store) as c:
        yield c


# --- v1 predict: the three body kinds, parity with Classifier.predict ---------------------------------


def test_raw_body_equals_classifier_predict_bitwise(api, model_files):
    image = png(1)
    want = load(model_files["cells"]).predict(image)[0]
    for url in ("/v1/predict", "/v1/models/cells/predict"):
        r = api.post(url, content=image, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        (row,) = r.json()["predictions"]
        assert row == {
            "label": want.label,
            "confidence": want.confidence,
            "probabilities": want.probabilities,
        }


def test_curl_default_content_type_is_read_as_raw_image(api):
    # curl --data-binary sends application/x-www-form-urlencoded unless told otherwise
    r = api.post("/v1/predict", content=png(2), headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] in ("ring", "square")


def test_multipart_batch_answers_good_images_and_marks_bad_ones_like_the_cli(
    api, model_files, tmp_path, monkeypatch
):
    good, bad, truncated = png(3), b"this is no image", png(4)[:60]
    files = [("files", ("a.png", good)), ("files", ("b.png", bad)), ("files", ("c.png", truncated))]
    r = api.post("/v1/models/cells/predict?top_k=2", files=files)
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    assert [row["path"] for row in rows] == ["a.png", "b.png", "c.png"]
    # the CLI's messages for files of those names (relative paths, so the names match)
    monkeypatch.chdir(tmp_path)
    for name, data in (("a.png", good), ("b.png", bad), ("c.png", truncated)):
        Path(name).write_bytes(data)
    want = load(model_files["cells"]).predict(["a.png", "b.png", "c.png"], top_k=2, errors="return")
    assert rows[0]["probabilities"] == want[0].probabilities
    assert rows[0]["top_k"] == [{"label": k, "probability": v} for k, v in want[0].top_k]
    assert rows[1] == {"path": "b.png", "error": want[1].error}
    assert rows[2] == {"path": "c.png", "error": want[2].error}
    assert want[1].error.startswith("not a supported image") and want[2].error.startswith("cannot decode")


def test_json_base64_images_with_names(api, model_files):
    images = [png(5), png(6, mode="L"), png(7, fmt="JPEG")]
    body = {"images": [base64.b64encode(b).decode() for b in images], "names": ["x", "y", "z"]}
    r = api.post("/v1/predict", json=body)
    assert r.status_code == 200, r.text
    want = load(model_files["cells"]).predict(images)
    got = r.json()["predictions"]
    assert [g["path"] for g in got] == ["x", "y", "z"]
    assert [g["probabilities"] for g in got] == [w.probabilities for w in want]


@pytest.mark.parametrize("top_k", ["0", "-1", "abc"])
def test_bad_top_k_is_400(api, top_k):
    r = api.post(f"/v1/predict?top_k={top_k}", content=png(1))
    assert r.status_code == 400 and r.json()["error"].startswith("top_k must be a positive integer")


def test_single_bad_image_is_422_with_the_image_message(api):
    r = api.post("/v1/predict", content=b"GIF89a nonsense")
    assert r.status_code == 422
    assert r.json()["error"].startswith("cannot decode image") or r.json()["error"].startswith(
        "not a supported"
    )


def test_decompression_bomb_is_422_before_decoding(api):
    r = api.post("/v1/predict", content=bomb_png())
    assert r.status_code == 422
    assert r.json()["error"].startswith("image too large")


# --- limits -------------------------------------------------------------------------------------------


def test_body_over_limit_by_content_length_is_413(store):
    with client(store, max_body_bytes=1000) as c:
        r = c.post("/v1/predict", content=b"x" * 1001)
        assert r.status_code == 413 and r.json()["error"].startswith("request body too large")
        assert "Content-Length 1001" in r.json()["error"]


def test_streamed_body_over_limit_is_cut_off_with_413(store):
    sent = []

    def chunks():
        for _ in range(100):
            sent.append(1)
            yield b"x" * 500

    with client(store, max_body_bytes=1000) as c:
        r = c.post("/v1/predict", content=chunks())
    assert r.status_code == 413 and "more than 1000 bytes" in r.json()["error"]


def test_too_many_images_is_413(store):
    with client(store, max_images=2) as c:
        files = [("files", (f"{i}.png", png(i))) for i in range(3)]
        assert c.post("/v1/predict", files=files).status_code == 413
        body = {"images": [base64.b64encode(png(i)).decode() for i in range(3)]}
        r = c.post("/v1/predict", json=body)
        assert r.status_code == 413 and r.json()["error"].startswith("too many images in one request")
        v2 = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [3], "data": body["images"]}]}
        assert c.post("/v2/models/cells/infer", json=v2).status_code == 413


def test_full_queue_is_503_with_retry_after(store):
    with client(store, max_queue=1) as c:
        r = c.post("/v1/predict", json={"images": [base64.b64encode(png(i)).decode() for i in range(2)]})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"].startswith("server busy")


def test_request_over_deadline_is_504_and_its_work_is_dropped(store, monkeypatch):
    import threading

    from imgclf.serving import batching

    release, ran = threading.Event(), []
    original = batching._run_pixels

    def slow(jobs):
        ran.append(len(jobs))
        release.wait(5)
        return original(jobs)

    monkeypatch.setattr(batching, "_run_pixels", slow)
    with client(store, timeout_s=0.3) as c:
        first = c.post("/v1/predict", content=png(1))  # blocks the worker until released
        assert first.status_code == 504 and first.json()["error"].startswith("request took too long")
        second = c.post("/v1/predict", content=png(2))  # queued behind the blocked job, times out too
        assert second.status_code == 504
        release.set()
        monkeypatch.setattr(batching, "_run_pixels", original)
        assert c.post("/v1/predict", content=png(3)).status_code == 200
    assert ran == [1]  # the second request's work was dropped from the queue, never run


@pytest.mark.parametrize(
    ("body", "ctype", "status", "start"),
    [
        (b"", "image/png", 400, "empty request body"),
        (b"hello", "text/plain", 415, "unsupported content type"),
        (b"{nope", "application/json", 400, "request body is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "request body is not valid JSON"),
        (b'{"images": ["@@@"]}', "application/json", 400, "images[0] is not valid base64"),
        (b'{"images": []}', "application/json", 400, "JSON body needs a non-empty list 'images'"),
        (b'{"images": [1]}', "application/json", 400, "images[0] is not a base64 string"),
        (b"--x\r\nnot multipart", "multipart/form-data; boundary=y", 400, "malformed multipart body"),
        (TEXT_ONLY_FORM, "multipart/form-data; boundary=y", 400, "multipart body holds no files"),
        (b"garbage", "multipart/form-data", 400, "malformed multipart body"),
    ],
)
def test_malformed_bodies_are_4xx_with_a_message(api, body, ctype, status, start):
    r = api.post("/v1/predict", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert r.json()["error"].startswith(start)


def test_unknown_model_and_route_are_json_404(api):
    r = api.post("/v1/models/nope/predict", content=png(1))
    assert r.status_code == 404 and r.json()["error"].startswith("no such model")
    assert api.get("/v2/models/nope").status_code == 404
    r = api.get("/nowhere")
    assert r.status_code == 404 and "error" in r.json()


# --- v2 -----------------------------------------------------------------------------------------------


def test_v2_metadata_and_health(api):
    assert api.get("/v2").json()["name"] == "imgclf"
    assert api.get("/v2/health/live").json() == {"live": True}
    assert api.get("/v2/health/ready").json() == {"ready": True}
    meta = api.get("/v2/models/cells").json()
    assert meta["name"] == "cells" and meta["outputs"][0] == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [-1, 2],
    }
    assert meta["inputs"][1]["shape"] == [-1, 3, 16, 16]
    assert api.get("/v2/models/cells/ready").json() == {"name": "cells", "ready": True}


def test_v2_bytes_and_fp32_inputs_equal_the_library(api, model_files):
    from imgclf.images.preprocess import preprocess

    clf = load(model_files["cells"])
    images = [png(8), png(9)]
    body = {
        "id": "req-1",
        "inputs": [
            {
                "name": "images",
                "datatype": "BYTES",
                "shape": [2],
                "data": [base64.b64encode(b).decode() for b in images],
            }
        ],
    }
    r = api.post("/v2/models/cells/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-1" and out["model_name"] == "cells"
    want = clf.predict_proba(images)
    assert out["outputs"][0]["shape"] == [2, 2]
    assert out["outputs"][0]["data"] == [float(v) for v in want.ravel()]
    x = preprocess(images, clf.preprocess).numpy()
    fp32 = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }
    r = api.post("/v2/models/cells/infer", json=fp32)
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 2)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "status", "start"),
    [
        (
            [{"datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0] * 192}],
            400,
            "FP32 input has the wrong shape",
        ),
        ([{"datatype": "FP32", "shape": [1, 3, 16, 16], "data": [0.0] * 5}], 400, "FP32 data does not fill"),
        ([{"datatype": "INT8", "shape": [1], "data": [1]}], 400, "unsupported input datatype"),
        ([{"datatype": "BYTES", "shape": [2], "data": ["AA=="]}], 400, "BYTES input shape does not match"),
        (
            [{"datatype": "BYTES", "shape": [1], "data": ["bm9wZQ=="]}],
            422,
            "input image 0: not a supported image",
        ),
        ([], 400, "v2 request needs exactly one input"),
    ],
)
def test_v2_errors(api, inputs, status, start):
    r = api.post("/v2/models/cells/infer", json={"inputs": inputs})
    assert r.status_code == status, r.text
    assert r.json()["error"].startswith(start)


# --- models, metrics, page, auth, draining -------------------------------------------------------------


def test_models_list_is_the_manifest_summary(api, store):
    models = api.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["cells", "xss"]
    assert models[1]["class_names"] == ["ok", XSS]
    assert models[0]["digest"] == store.get("cells").digest
    assert models[0]["architecture"]["name"] == "small_cnn"


def test_model_card_groups_metrics_by_the_split_they_were_measured_on(tiny_model, tmp_path):
    from imgclf.serving.models import metrics_by_split

    flat = {"accuracy": 0.9, "loss": 0.3, "lr": 0.05, "val_accuracy": 0.8, "val_loss": 0.5,
            "testing_accuracy": 0.75, "testing_macro_f1": 0.7}  # fmt: skip
    assert metrics_by_split(flat, 7) == {
        "training": {"accuracy": 0.9, "loss": 0.3, "lr": 0.05, "epoch": 7},
        "validation": {"accuracy": 0.8, "loss": 0.5},
        "testing": {"accuracy": 0.75, "macro_f1": 0.7},
    }
    assert metrics_by_split(None) == {} and metrics_by_split({"testing_accuracy": 1.0}) == {
        "testing": {"accuracy": 1.0}
    }
    trained = ModelStore.open({"cells": str(tiny_model.model_path)})
    with client(trained) as c:
        card = c.get("/v1/models").json()["models"][0]
    assert card["metrics_by_split"] == metrics_by_split(card["metrics"], card["epoch"])
    assert set(card["metrics_by_split"]) == {"training", "validation", "testing"}


def test_favicon_is_served_not_a_404(store):
    with client(store, api_key=b"s3cret") as c:  # the browser asks before any key is given
        for url in ("/favicon.ico", "/static/favicon.svg"):
            r = c.get(url)
            assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml", url
            assert r.content.startswith(b"<svg")
        assert '<link rel="icon" href="/static/favicon.svg"' in c.get("/").text


def test_metrics_count_requests_and_label_the_digest(api, store):
    api.post("/v1/predict", content=png(1))
    text = api.get("/metrics").text
    assert 'imgclf_requests_total{route="/v1/predict",status="200"}' in text
    assert f'digest="{store.get("cells").digest}"' in text
    for name in (
        "imgclf_request_seconds_bucket",
        "imgclf_images_total",
        "imgclf_in_flight_requests",
        "imgclf_queue_depth_images",
        "imgclf_batch_size_images_bucket",
    ):
        assert name in text


def test_page_is_static_with_a_strict_csp_and_no_inline_script(api):
    r = api.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    html = r.text
    assert '<script src="/static/app.js" defer></script>' in html
    assert html.count("<script") == 1 and " on" not in html.replace("one", "")
    js = api.get("/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in js.text and "insertAdjacentHTML" not in js.text
    assert api.get("/static/app.css").status_code == 200
    assert api.get("/static/other.js").status_code == 404


def test_api_key_guards_everything_but_health_and_page(store):
    with client(store, api_key=b"s3cret") as c:
        for method, url in (
            ("GET", "/v1/models"),
            ("GET", "/metrics"),
            ("GET", "/v2"),
            ("POST", "/v1/predict"),
        ):
            r = c.request(method, url, content=png(1) if method == "POST" else None)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", url
            assert r.json()["error"].startswith("missing or wrong API key")
        wrong = c.get("/v1/models", headers={"authorization": "Bearer s3cre"})
        assert wrong.status_code == 401
        ok = c.post("/v1/predict", content=png(1), headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        for url in ("/v2/health/live", "/v2/health/ready", "/", "/static/app.js"):
            assert c.get(url).status_code == 200, url


def test_draining_server_is_not_ready_and_refuses_work(store):
    app = create_app(store, ServeSettings())
    with TestClient(app) as c:
        app.state.draining = True
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/models/cells/ready").status_code == 503
        r = c.post("/v1/predict", content=png(1))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert c.get("/v2/health/live").status_code == 200


def test_request_id_is_echoed_or_made(api):
    assert api.get("/v2/health/live", headers={"x-request-id": "abc-1"}).headers["x-request-id"] == "abc-1"
    made = api.get("/v2/health/live", headers={"x-request-id": "bad id\n"}).headers["x-request-id"]
    assert made != "bad id\n" and len(made) == 16


# --- reload -------------------------------------------------------------------------------------------


def test_reload_swaps_a_good_file_and_keeps_the_old_model_on_a_bad_one(tmp_path):
    path = write_model(tmp_path / "m.imgclf", seed=0)
    app = create_app(ModelStore.open({"m": str(path)}))
    image = png(11)
    with TestClient(app) as c:
        before = c.post("/v1/predict", content=image).json()
        write_model(path, seed=1)  # same architecture and classes, other weights
        r = c.post("/v2/repository/models/m/load")
        assert r.status_code == 200 and r.json()["digest"] != before["digest"]
        after = c.post("/v1/predict", content=image).json()
        assert after["digest"] == r.json()["digest"]
        assert after["predictions"] != before["predictions"]
        good = path.read_bytes()
        path.write_bytes(good[: len(good) // 2])  # truncated
        r = c.post("/v2/repository/models/m/load")
        assert r.status_code == 422 and "m.imgclf" in r.json()["error"]
        assert c.post("/v1/predict", content=image).json() == after  # old model still serving
        write_model(path, ("a", "b", "c"), seed=2)  # a different model
        r = c.post("/v2/repository/models/m/load")
        assert r.status_code == 422 and r.json()["error"].startswith("reload refused")
        assert c.post("/v1/predict", content=image).json() == after
        assert c.post("/v2/repository/models/zzz/load").status_code == 404


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_refuses_a_bad_model_file_with_exit_3(tmp_path):
    bad = tmp_path / "bad.imgclf"
    bad.write_bytes(b"not a model")
    code, out, err = run_cli("serve", bad, "--host", "0.0.0.0")
    assert code == 3 and out == ""
    lines = err.strip().splitlines()
    assert "without --api-key-file" in lines[0]
    assert lines[-1].startswith("imgclf: error: ") and len(lines) == 2


def test_cli_refuses_duplicate_names_and_bad_key_files(tmp_path, model_files):
    code, _, err = run_cli("serve", model_files["cells"], f"cells={model_files['xss']}")
    assert code == 2 and "two models with one name" in err
    empty = tmp_path / "key"
    empty.write_text("\n")
    code, _, err = run_cli("serve", model_files["cells"], "--api-key-file", empty)
    assert code == 2 and "unusable --api-key-file" in err
    code, _, err = run_cli("serve", model_files["cells"], "--api-key-file", tmp_path / "missing")
    assert code == 2 and "cannot read --api-key-file" in err
    code, _, err = run_cli("serve", "bad name!=x.imgclf")
    assert code == 2 and "model name is not URL-safe" in err


def test_cli_help_documents_every_flag():
    code, out, _ = run_cli("serve", "--help")
    assert code == 0
    for flag in (
        "--host",
        "--port",
        "--max-body-mb",
        "--max-images-per-request",
        "--timeout-s",
        "--max-queue",
        "--batch-delay-ms",
        "--api-key-file",
        "--header-timeout-s",
        "--body-timeout-s",
        "--keep-alive-s",
        "--max-connections",
        "NAME=PATH",
    ):
        assert flag in out, flag


def test_read_api_key_takes_the_first_line(tmp_path):
    from imgclf.cli.serve import read_api_key

    f = tmp_path / "key"
    f.write_text("  abc123  \nignored\n")
    assert read_api_key(str(f)) == b"abc123"


LAYERING_CHECK = """
import sys
import imgclf
imgclf.load(sys.argv[1]).predict(sys.argv[2])
web_stack = ("fastapi", "uvicorn", "starlette", "prometheus_client")
web = sorted(m for m in sys.modules if m.split(".")[0] in web_stack or m.startswith("imgclf.serving"))
assert not web, web
import imgclf.serving.app, imgclf.serving.server, imgclf.serving.v2
wrong = sorted(m for m in sys.modules if m.startswith(("imgclf.training", "imgclf.cli")))
assert not wrong, wrong
print("ok")
"""


def test_predict_imports_no_server_and_the_server_no_training_or_cli(model_files, tmp_path):
    import subprocess
    import sys

    from servehelpers import cli_env

    image = tmp_path / "a.png"
    image.write_bytes(png(1))
    proc = subprocess.run(
        [sys.executable, "-c", LAYERING_CHECK, str(model_files["cells"]), str(image)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
