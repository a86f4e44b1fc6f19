"""The HTML report: the model card alone, with an evaluation, escaping, and the CLI ways to write it."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

from helpers import make_classifier, run_cli, save_image
from imgclf.evaluation import evaluate_probabilities
from imgclf.report_html import CSP, render_report, top_losses

XSS = "<img src=x onerror=alert(1)>"


def _evaluation(tmp_path, names):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = tmp_path / f"{XSS}{i}.png" if i == 0 else tmp_path / f"cell_{i}.png"
        save_image(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), path, "RGB")
        paths.append(str(path))
    probs = np.array(
        [[0.05, 0.95], [0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3], [0.99, 0.01]], dtype=np.float32
    )
    labels = np.array([0, 0, 0, 1, 1, 0])
    return evaluate_probabilities(probs, labels, paths, names)


def test_card_alone_says_what_the_file_holds_and_that_it_has_no_calibration():
    clf = make_classifier(("ring", "square"))
    page = render_report(clf, "m.imgclf")
    assert "small_cnn" in page and "ring, square" in page
    assert "no calibration" in page and "no OOD threshold" in page
    assert f"{sum(p.numel() for p in clf.model.parameters()):,}" in page
    assert "--dataset" in page  # says how to get the test report


def test_names_are_escaped_everywhere_and_the_page_fetches_nothing(tmp_path):
    names = ("ok", XSS)
    clf = make_classifier(names)
    page = render_report(clf, f"{XSS}.imgclf", _evaluation(tmp_path, list(names)))
    assert XSS not in page
    assert html.escape(XSS) in page
    # no external reference: every src is a data: URI and the policy forbids any fetch
    assert re.findall(r"(?:src|href)=['\"](?!data:)", page) == []
    assert f'content="{CSP}"' in page and "default-src 'none'" in CSP
    assert "<script" not in page


def test_top_losses_are_the_most_confidently_wrong_first(tmp_path):
    ev = _evaluation(tmp_path, ["a", "b"])
    rows = top_losses(ev, 3)
    # row 0: true a, p(a)=0.05 (loss 3.0); row 4: true b, p(b)=0.3; row 2: true a, p(a)=0.4
    assert [r["path"] for r in rows] == [ev.paths[0], ev.paths[4], ev.paths[2]]
    assert rows[0]["predicted"] == "b" and rows[0]["probability"] == pytest.approx(0.95)
    page = render_report(make_classifier(("a", "b")), "m", ev, top_k=3)
    assert page.count("class=tile") == 3 and page.count("data:image/png;base64,") == 3
    assert "confusion-counts" in page and "confusion-normalised" in page and "id=ece" in page


def test_cli_report_and_evaluate_report_write_the_page(tiny_model, tmp_path):
    out = tmp_path / "card.html"
    rc, stdout, err = run_cli("report", str(tiny_model.model_path), "-o", str(out))
    assert rc == 0, err
    page = out.read_text(encoding="utf-8")
    assert "Training curves" in page and "<polyline" in page and "val_accuracy" in page
    assert "<span class=split>validation</span>" in page  # the recorded metrics name their split
    assert "Top losses" not in page
    full = tmp_path / "full.html"
    rc, _, err = run_cli(
        "report", "-m", str(tiny_model.model_path), "-d", str(tiny_model.dataset), "-o", str(full)
    )
    assert rc == 0, err
    page = full.read_text(encoding="utf-8")
    assert "Evaluation <span class=split>testing</span>" in page and "on 12 testing images" in page
    assert "Top losses" in page and "Reliability" in page
    ev = tmp_path / "ev.html"
    rc, _, err = run_cli(
        "evaluate", "-m", str(tiny_model.model_path), "-d", str(tiny_model.dataset), "--report", str(ev)
    )
    assert rc == 0, err
    assert (
        re.search(r"id=accuracy>([0-9.]+)<", ev.read_text())[1]
        == re.search(r"id=accuracy>([0-9.]+)<", page)[1]
    )


def test_cli_report_refuses_an_unwritable_output_before_loading(tiny_model, tmp_path):
    rc, stdout, err = run_cli("report", str(tiny_model.model_path), "-o", str(tmp_path / "no" / "r.html"))
    assert rc == 5 and stdout == "" and "folder for the output file does not exist" in err


def test_card_shows_the_calibration_and_the_ood_threshold_when_the_file_has_them():
    clf = make_classifier(("a", "b"))
    clf.manifest["calibration"] = {
        "temperature": 2.5,
        "split": "validation",
        "images": 80,
        "ece_before": 0.2,
        "ece_after": 0.03,
    }
    clf.manifest["ood"] = {
        "score": "feature_distance",
        "threshold": 12.5,
        "split": "validation",
        "images": 80,
        "flagged_share": 0.0125,
    }
    page = render_report(clf, "m")
    assert (
        "temperature 2.5 (fitted on 80 validation images); expected calibration error 0.2000 -&gt; 0.0300"
        in page
    )
    assert "feature_distance beyond 12.5" in page and "1.2% of those images beyond it" in page
