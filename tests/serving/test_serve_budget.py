"""The work one request may cause: a budget of decoded pixels checked from the images' headers, decoding in
a pool beside the inference thread, work abandoned when the request ends, memory given back."""

from __future__ import annotations

import base64
import io
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402
from servehelpers import ServerProcess, bomb_png, png, wait_until, write_model  # noqa: E402

from imgclf.serving import decoding  # noqa: E402
from imgclf.serving.app import ServeSettings, create_app  # noqa: E402
from imgclf.serving.models import ModelStore  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ModelStore.open({"cells": str(write_model(tmp_path_factory.mktemp("budget") / "cells.imgclf"))})


def as_json(images: list[bytes]) -> dict:
    return {"images": [base64.b64encode(b).decode() for b in images]}


@pytest.fixture
def decodes(monkeypatch):
    """Counts the images the decode pool decodes (optionally slowly)."""
    calls: list[float] = []
    original = decoding.preprocess_uint8
    state = {"delay": 0.0}

    def counted(*args, **kwargs):
        calls.append(time.monotonic())
        time.sleep(state["delay"])
        return original(*args, **kwargs)

    monkeypatch.setattr(decoding, "preprocess_uint8", counted)
    calls_state = type("Decodes", (), {"calls": calls, "state": state})
    return calls_state


def test_default_budget_is_sized_for_the_model():
    s = ServeSettings()
    assert s.request_pixels(224, 224) == 10 * 64 * 224 * 224  # ~32 Mpx: 64 images of ~0.5 Mpx
    assert s.request_pixels(16, 16) == 32_000_000  # floor: a few camera photos still fit
    assert s.request_pixels(300, 300) == 10 * 64 * 300 * 300
    assert s.request_pixels(1024, 1024) == 64_000_000  # ceiling: the library's per-image cap
    assert ServeSettings(max_images=4).request_pixels(224, 224) == 32_000_000
    assert ServeSettings(max_request_pixels=5).request_pixels(224, 224) == 5


def test_over_budget_is_413_from_the_headers_before_any_pixel_is_decoded(store, decodes):
    # Each declares 800x800 pixels but holds no valid pixel data: decoding one would fail with a 422.
    fake = bomb_png(800, 800)
    with TestClient(create_app(store, ServeSettings(max_request_pixels=1_000_000))) as api:
        r = api.post("/v1/predict", json=as_json([fake, fake]))
        assert r.status_code == 413, r.text
        assert r.json()["error"] == (
            "images hold too many pixels for one request; received 2 images declaring 1280000 pixels;"
            " expected at most 1000000 pixels per request (--max-request-megapixels). Fix: downscale the"
            " images towards the model's input size, or send fewer per request"
        )
        assert decodes.calls == []
        body = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], **as_json([fake, fake])}]}
        body["inputs"][0]["data"] = body["inputs"][0].pop("images")
        r = api.post("/v2/models/cells/infer", json=body)
        assert r.status_code == 413 and "too many pixels" in r.text
        assert decodes.calls == []
        r = api.post("/v1/predict", json=as_json([fake]))  # within the budget: decoded, and refused as bad
        assert r.status_code == 422 and "cannot decode image" in r.text
        assert len(decodes.calls) == 1
        # An image over the per-image cap is refused by the decode path without decoding: costs nothing.
        r = api.post("/v1/predict", json=as_json([bomb_png(), png(1)]))
        assert r.status_code == 200 and "image too large" in r.json()["predictions"][0]["error"]


def test_a_timed_out_request_stops_decoding_at_its_next_image(store, decodes):
    decodes.state["delay"] = 0.25
    with TestClient(create_app(store, ServeSettings(timeout_s=0.6))) as api:
        r = api.post("/v1/predict", json=as_json([png(i) for i in range(16)]))
        assert r.status_code == 504, r.text
        time.sleep(0.8)
        done = len(decodes.calls)
        time.sleep(0.8)
        assert len(decodes.calls) == done <= 5  # not the 16 images: abandoned after the deadline
        decodes.state["delay"] = 0.0
        assert api.post("/v1/predict", content=png(1)).status_code == 200  # the pool is free again


def test_good_rows_map_input_images_to_decoded_rows():
    d = decoding.Decoded(np.zeros((3, 1, 1, 3), np.uint8), [None, "bad", None, None], ["a", "b", "c", "d"])
    assert decoding.good_rows(d, 0, 2) == slice(0, 1)
    assert decoding.good_rows(d, 2, 4) == slice(1, 3)


def _big_png(side: int) -> bytes:
    yy, xx = np.mgrid[0:side, 0:side]
    arr = np.stack([xx % 256, yy % 256, (xx * yy) % 256], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


@pytest.mark.slow
def test_others_are_answered_while_a_large_request_decodes_and_its_memory_is_given_back(tmp_path):
    """Before: one worker decoded and inferred, so a large request held up every other one, and the
    allocator tuning kept its decoded pixels in the process for good."""
    httpx = pytest.importorskip("httpx")
    big = _big_png(4000)  # 16 Mpx: ~48 MB of RGB per decode
    model = write_model(tmp_path / "m.imgclf")
    with ServerProcess([model, "--max-request-megapixels", "200"]) as server:
        assert httpx.post(server.url + "/v1/predict", content=png(0), timeout=30).status_code == 200
        baseline = server.rss_bytes()
        results: list[int] = []

        def heavy():
            files = [("f", (f"{i}.png", big)) for i in range(12)]  # seconds of decoding, whatever the load
            results.append(httpx.post(server.url + "/v1/predict", files=files, timeout=120).status_code)

        t = threading.Thread(target=heavy)
        t.start()
        time.sleep(0.5)  # its body is in; its images are decoding
        for i in range(5):
            start = time.monotonic()
            r = httpx.post(server.url + "/v1/predict", content=png(i), timeout=60)
            assert r.status_code == 200 and time.monotonic() - start < 1.5
        assert t.is_alive()  # the small ones were answered while the large one was still decoding
        t.join(120)
        assert results == [200]
        wait_until(lambda: server.rss_bytes() - baseline < 40 * 2**20, timeout=10)
        print(f"large request: RSS {baseline / 2**20:.1f} -> {server.rss_bytes() / 2**20:.1f} MiB after it")
        code, log = server.stop()
    assert code == 0 and "Traceback" not in log


@pytest.mark.parametrize(
    ("size", "options"),
    [((37, 21), {"lossless": True}), ((640, 3), {"quality": 80}), ((5, 999), {"exif": b"Exif\0\0MM"})],
)
def test_webp_size_is_read_from_the_header_like_pillow(size, options):
    buf = io.BytesIO()
    Image.new("RGB" if "exif" not in options else "RGBA", size, (1, 2, 3)).save(buf, "WEBP", **options)
    data = buf.getvalue()
    assert data[12:16] == {"lossless": b"VP8L", "quality": b"VP8 ", "exif": b"VP8X"}[next(iter(options))]
    assert decoding.webp_size(data) == decoding.declared_size(data) == size
    assert Image.open(io.BytesIO(data)).size == size
    assert decoding.webp_size(png(1)) is None and decoding.webp_size(data[:20]) is None


def test_an_image_over_the_per_image_cap_gets_the_librarys_error_without_a_decoder(store, decodes):
    from imgclf.modelfile import load

    clf = load(store.get("cells").path)
    big = bomb_png(9000, 8000)  # over the 64 Mpx cap, under Pillow's own bomb limit: Pillow would open it
    want = clf.predict([big], errors="return")[0].error
    assert want.startswith("image too large")
    decoded = decoding.decode_request(store.get("cells").classifier, [big], 10**9, threading.Event())
    assert decoded.failures == [want] and decodes.calls == []
