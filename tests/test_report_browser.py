"""The HTML report in a real browser: Debian's Chromium driven by Playwright, with the network watched.

A report whose class and file names are HTML shows them as text, runs no script, and the page makes no
request beyond its own file (every image is inline).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from helpers import make_classifier, save_image
from imgclf.evaluation import evaluate_probabilities
from imgclf.report_html import render_report, write_report

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is in the dev extra")

pytestmark = pytest.mark.slow

XSS = "<img src=x onerror=alert(1)>"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium: install the Debian package `chromium` (make test does so when run as root)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def test_report_opens_offline_fetches_nothing_and_shows_hostile_names_as_text(browser, tmp_path):
    names = ["ok", XSS]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        path = tmp_path / (f"{XSS}.png" if i == 0 else f"cell_{i}.png")
        save_image(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), path, "RGB")
        paths.append(str(path))
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    ev = evaluate_probabilities(probs, np.array([0, 0, 1, 1]), paths, names)
    out = tmp_path / "report.html"
    write_report(render_report(make_classifier(tuple(names)), f"{XSS}.imgclf", ev), out)

    context = browser.new_context(offline=True)
    page = context.new_page()
    requests, dialogs, errors = [], [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    fetched = [u for u in requests if not u.startswith("data:") and u != out.as_uri()]
    assert fetched == [] and dialogs == [] and errors == []
    assert page.locator("h1").text_content() == f"{XSS}.imgclf"
    assert XSS in page.locator("table.per-class").text_content()
    assert page.locator(".tile .file").first.text_content() == f"{XSS}.png"  # most confidently wrong first
    # the thumbnails decoded: inline images with real pixels
    widths = page.eval_on_selector_all(".tile img", "els => els.map(e => e.naturalWidth)")
    assert len(widths) == 4 and all(w > 0 for w in widths)
    assert page.locator("img[src='x']").count() == 0
    context.close()
