"""The web page in a real browser: Debian's Chromium driven by Playwright (``executable_path``).

Uploads three images through the file input and checks the labels equal the API's; a model whose class
name is ``<img src=x onerror=alert(1)>`` shows that text literally and runs no script; a screenshot is
saved (``IMGCLF_UPDATE_SCREENSHOT=1`` also writes ``docs/serve.png``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is in the dev extra")

from servehelpers import ServerProcess, write_model  # noqa: E402

pytestmark = pytest.mark.slow

XSS = "<img src=x onerror=alert(1)>"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "serve.png"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium: install the Debian package `chromium` (make test does so when run as root)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def test_page_classifies_uploads_like_the_api_and_shows_names_as_text(browser, tiny_model, tmp_path):
    cells = tmp_path / "cells.imgclf"  # a trained model, so the card shows metrics and data counts
    cells.write_bytes(tiny_model.model_path.read_bytes())
    xss = write_model(tmp_path / "xss.imgclf", ("ok", XSS), seed=3)
    testing = tiny_model.dataset / "testing"
    paths = [
        testing / "ring" / "ring_000.png",
        testing / "square" / "square_001.png",
        testing / "ring" / "ring_002.png",
    ]
    with ServerProcess([cells, xss]) as server:
        files = [("files", (p.name, p.read_bytes())) for p in paths]
        api = httpx.post(f"{server.url}/v1/models/cells/predict", files=files, timeout=60).json()[
            "predictions"
        ]
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        dialogs, errors, missing = [], [], []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("response", lambda r: missing.append(r.url) if r.status >= 400 else None)
        page.goto(server.url + "/")
        page.wait_for_selector("#status:has-text('Ready')", timeout=30_000)
        assert page.locator("#card-title").text_content().startswith("cells")
        card = dict(
            zip(
                page.locator("#card-fields dt").all_text_contents(),
                page.locator("#card-fields dd").all_text_contents(),
                strict=True,
            )
        )
        metric_rows = [name for name in card if "metrics" in name]  # every metric says its split
        assert [name.split(" (")[0] for name in metric_rows] == [
            "Testing metrics", "Validation metrics", "Training metrics"
        ]  # fmt: skip
        assert metric_rows[0].startswith("Testing metrics (held out, 12 images")
        assert card[metric_rows[0]].startswith("accuracy ") and "macro F1 " in card[metric_rows[0]]
        assert "{" not in " ".join(card.values()) and "counts:" not in card["Data"]  # no raw JSON dumps
        assert card["Data"].startswith("split folders; 24 training, 8 validation, 12 testing images")
        assert card["Software"].startswith("imgclf ") and "torch " in card["Software"]
        assert " UTC, weights of epoch " in card["Saved"]
        page.set_input_files("#files", [str(p) for p in paths])
        sync_api.expect(page.locator(".result .label")).to_have_count(3, timeout=30_000)
        shown = dict(
            zip(
                page.locator(".result .file").all_text_contents(),
                page.locator(".result .label").all_text_contents(),
                strict=True,
            )
        )
        assert shown == {p.name: row["label"] for p, row in zip(paths, api, strict=True)}
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        assert (tmp_path / "serve.png").stat().st_size > 10_000
        if os.environ.get("IMGCLF_UPDATE_SCREENSHOT"):
            page.screenshot(path=str(DOCS_SCREENSHOT), full_page=True)

        # one good image and one that is not an image: the status counts the failure apart
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"not an image")
        page.set_input_files("#files", [str(paths[0]), str(bad)])
        sync_api.expect(page.locator(".result")).to_have_count(5, timeout=30_000)
        sync_api.expect(page.locator("#status")).to_have_text(
            "Done: 1 of 2 image(s) classified with cells; 1 failed (their errors are shown below).",
            timeout=30_000,
        )
        assert page.locator(".result .error").count() == 1
        assert missing == []  # no 404: not even the favicon
        page.select_option("#model-picker", "xss")
        assert XSS in page.locator("#card-fields").text_content()
        page.set_input_files("#files", [str(paths[0])])
        sync_api.expect(page.locator(".result .label")).to_have_count(5, timeout=30_000)
        bar_names = page.locator(".result .bar span").all_text_contents()
        assert XSS in bar_names  # the class name, literally, as text
        assert page.locator('img[src="x"]').count() == 0  # never parsed as HTML
        page.wait_for_timeout(300)
        assert dialogs == [] and errors == []
        page.close()
