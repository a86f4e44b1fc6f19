"""The web page marks an image the model file's out-of-distribution check flags (Chromium + Playwright)."""

from __future__ import annotations

import os
import shutil

import pytest

from helpers import make_classifier

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is in the dev extra")

from servehelpers import ServerProcess, png  # noqa: E402

from imgclf.modelfile import save  # noqa: E402

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_page_shows_unlike_training_data(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium: install the Debian package `chromium`")
    clf = make_classifier(("ring", "square"))
    # every image lies beyond a threshold below any possible distance
    clf.manifest["ood"] = {
        "score": "feature_distance",
        "layer": "features.6",
        "means": [[0.0] * 8],
        "scale": [1.0] * 8,
        "threshold": -1.0,
        "split": "validation",
    }
    save(clf, tmp_path / "m.imgclf")
    image = tmp_path / "x.png"
    image.write_bytes(png(1))
    with ServerProcess([tmp_path / "m.imgclf"]) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("#status:has-text('Ready')", timeout=30_000)
            page.set_input_files("#files", [str(image)])
            sync_api.expect(page.locator(".result .unlike")).to_have_count(1, timeout=30_000)
            assert "Unlike the training data" in page.locator(".result .unlike").text_content()
        finally:
            browser.close()
