"""One self-contained HTML page about a model: what a careful user reads before trusting it.

From the model file alone: architecture, parameters, preprocessing, classes, provenance, training curves
and the metrics recorded at training time, each labelled with the split it was measured on. With an
evaluation on a dataset: the classification report, the confusion matrix (counts and row-normalised),
per-class precision and recall, the most confidently wrong images (thumbnails inline) and a reliability
diagram with the expected calibration error.

Everything is inline (CSS, SVG, ``data:`` images) and a Content-Security-Policy forbids any fetch or
script, so the page opens offline and a hostile class or file name can neither load nor run anything;
every name is escaped as well.

Usage::

    page = render_report(classifier, "malaria.imgclf", evaluation, split="testing")
    write_report(page, "report.html")
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.calibration import expected_calibration_error, reliability
from imgclf.errors import ImageError
from imgclf.fileio.writing import atomic_write_text

if TYPE_CHECKING:
    from imgclf.classifier import Classifier
    from imgclf.evaluation import Evaluation

TOP_LOSSES = 16
THUMBNAIL = 96
# No fetch of any kind, no script: the page is data only.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.name,th.name{text-align:left;max-width:28em;overflow-wrap:anywhere}
.split{display:inline-block;background:#eef;border-radius:3px;padding:0 .4em;font-size:.85em}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.tile{width:150px;font-size:12px;overflow-wrap:anywhere}
.tile img{width:96px;height:96px;image-rendering:pixelated;border:2px solid #c33}
.note{color:#666;font-size:.9em}code{background:#f4f4f4;padding:0 .2em}
"""


def esc(value: object) -> str:
    """``value`` as HTML text: every name in the page goes through here (class and file names are
    untrusted)."""
    return html.escape(str(value), quote=True)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; ``head`` and cells are already-escaped HTML fragments."""
    h = "".join(f"<th{' class=name' if i == 0 else ''}>{c}</th>" for i, c in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=name' if i == 0 else ''}>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table class='{cls}'><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _split_of(metric: str) -> str:
    """The split a training-time metric was measured on, from its name (``val_loss``, ``testing_f1``)."""
    for prefix, split in (("val_", "validation"), ("validation_", "validation"), ("testing_", "testing")):
        if metric.startswith(prefix):
            return split
    return "training" if metric in ("loss", "accuracy") else "—"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4f}"
    return esc(v)


def _line_chart(series: dict[str, list[tuple[float, float]]], title: str) -> str:
    """A small inline SVG line chart (one polyline per series); empty string when there is nothing to draw."""
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not points:
        return ""
    w, h, pad = 420, 220, 36
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def xy(x: float, y: float) -> str:
        px = pad + (x - x0) / (x1 - x0) * (w - 2 * pad)
        py = h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad)
        return f"{px:.1f},{py:.1f}"

    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    lines, legend = [], []
    for i, (name, pts) in enumerate(series.items()):
        good = [p for p in pts if math.isfinite(p[1])]
        if not good:
            continue
        c = colors[i % len(colors)]
        lines.append(
            f"<polyline fill='none' stroke='{c}' stroke-width='2' points='{' '.join(xy(*p) for p in good)}'/>"
        )
        legend.append(
            f"<text x='{w - pad - 110}' y='{pad + 14 * i}' fill='{c}' font-size='11'>{esc(name)}</text>"
        )
    axes = (
        f"<line x1='{pad}' y1='{h - pad}' x2='{w - pad}' y2='{h - pad}' stroke='#888'/>"
        f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{h - pad}' stroke='#888'/>"
        f"<text x='{pad}' y='{h - 8}' font-size='11'>epoch {x0:g}</text>"
        f"<text x='{w - pad - 40}' y='{h - 8}' font-size='11'>epoch {x1:g}</text>"
        f"<text x='2' y='{pad}' font-size='11'>{y1:.3g}</text>"
        f"<text x='2' y='{h - pad}' font-size='11'>{y0:.3g}</text>"
    )
    return (
        f"<figure><svg width='{w}' height='{h}' role='img' aria-label='{esc(title)}'>{axes}{''.join(lines)}"
        f"{''.join(legend)}</svg><figcaption>{esc(title)}</figcaption></figure>"
    )


def _card(classifier: Classifier, name: str) -> str:
    prov = classifier.manifest.get("provenance", {}) if isinstance(classifier.manifest, dict) else {}
    params = sum(int(p.numel()) for p in classifier.model.parameters())
    spec = classifier.preprocess.to_dict()
    rows = [
        ["file", esc(name)],
        ["architecture", f"<code>{esc(classifier.arch)}</code> {esc(classifier.arch_args)}"],
        ["parameters", f"{params:,}"],
        ["input", f"{spec['height']}×{spec['width']} RGB, {esc(spec['interpolation'])} resize"],
        ["preprocessing", esc(", ".join(f"{k}={v}" for k, v in spec.items()))],
        ["classes", esc(", ".join(classifier.class_names)) + f" ({classifier.num_classes})"],
    ]
    for key in ("created", "device", "seed", "epochs_run", "epoch", "stopped_early"):
        if key in prov:
            rows.append([esc(key), esc(prov[key])])
    data = prov.get("data", {})
    if isinstance(data, dict):
        if "fingerprint" in data:
            rows.append(["data fingerprint", f"<code>{esc(data['fingerprint'])}</code>"])
        if "counts" in data:
            rows.append(["images per split", esc(data["counts"])])
    versions = prov.get("versions", {})
    if versions:
        rows.append(["made with", esc(", ".join(f"{k} {v}" for k, v in versions.items()))])
    from imgclf.modelfile.trust import describe_trust

    cal = classifier.manifest.get("calibration")
    trust = describe_trust(classifier.manifest)
    if isinstance(cal, dict) and "ece_before" in cal and "ece_after" in cal:
        trust[0] += f"; expected calibration error {cal['ece_before']:.4f} -> {cal['ece_after']:.4f} there"
    ood = classifier.manifest.get("ood")
    if isinstance(ood, dict) and "flagged_share" in ood:
        trust[1] += f"; {ood['flagged_share']:.1%} of those images beyond it"
    rows += [["calibration", esc(trust[0])], ["out-of-distribution check", esc(trust[1])]]
    card = "<h2>Model</h2>" + _table(["field", "value"], [[f"<b>{r[0]}</b>", r[1]] for r in rows])
    metrics = prov.get("metrics", {})
    if metrics:
        mrows = [
            [esc(k), _fmt(v), f"<span class=split>{esc(_split_of(k))}</span>"] for k, v in metrics.items()
        ]
        card += "<h2>Metrics recorded at training time</h2>" + _table(["metric", "value", "split"], mrows)
        card += "<p class=note>Measured on the saved epoch, on the split named beside each value.</p>"
    history = prov.get("history", [])
    if history:

        def series(key: str) -> list[tuple[float, float]]:
            return [
                (float(r["epoch"]), float(r[key])) for r in history if r.get(key) is not None and "epoch" in r
            ]

        card += "<h2>Training curves</h2>"
        card += _line_chart(
            {"loss (training)": series("loss"), "val_loss (validation)": series("val_loss")}, "loss"
        )
        card += _line_chart(
            {"accuracy (training)": series("accuracy"), "val_accuracy (validation)": series("val_accuracy")},
            "accuracy",
        )
    return card


def _confusion(cm: np.ndarray, names: list[str]) -> str:
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals > 0)
    head = ["true \\ predicted", *(esc(n) for n in names)]
    counts = [[esc(names[i]), *(str(int(v)) for v in cm[i])] for i in range(len(names))]

    def cell(v: float) -> str:
        return f"<span style='display:block;background:rgba(31,119,180,{v:.3f})'>{v:.3f}</span>"

    normed = [[esc(names[i]), *(cell(float(v)) for v in norm[i])] for i in range(len(names))]
    return (
        "<h3>Counts</h3>"
        + _table(head, counts, "confusion-counts")
        + "<h3>Normalised by true class (rows sum to 1)</h3>"
        + _table(head, normed, "confusion-normalised")
    )


def _thumbnail(path: str) -> str | None:
    """A ``data:`` PNG thumbnail of the image at ``path``, or ``None`` if it cannot be read now."""
    from PIL import Image

    from imgclf.images.preprocess import decode_image

    try:
        img = decode_image(path, draft=THUMBNAIL)
    except (ImageError, OSError):
        return None
    img.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def top_losses(evaluation: Evaluation, k: int = TOP_LOSSES) -> list[dict[str, Any]]:
    """The ``k`` images with the highest loss (``-log p(true class)``), most confidently wrong first."""
    p, y = evaluation.probabilities, evaluation.labels
    if not len(p):
        return []
    true_p = p[np.arange(len(y)), y]
    loss = -np.log(np.clip(true_p, 1e-12, 1.0))
    order = np.argsort(-loss, kind="stable")[:k]
    names = evaluation.class_names
    return [
        {
            "path": evaluation.paths[i],
            "true": names[int(y[i])],
            "predicted": names[int(p[i].argmax())],
            "probability": float(p[i].max()),
            "true_probability": float(true_p[i]),
            "loss": float(loss[i]),
        }
        for i in order.tolist()
    ]


def _gallery(evaluation: Evaluation, k: int) -> str:
    tiles = []
    for row in top_losses(evaluation, k):
        src = _thumbnail(row["path"])
        img = f"<img alt='' src='{src}'>" if src else "<div class=note>(image unreadable now)</div>"
        tiles.append(
            f"<div class=tile>{img}<div class=file>{esc(os.path.basename(row['path']))}</div>"
            f"<div>true: <b class=true>{esc(row['true'])}</b></div>"
            f"<div>predicted: <b class=pred>{esc(row['predicted'])}</b> ({row['probability']:.3f})</div>"
            f"<div class=note>p(true) {row['true_probability']:.3f}, loss {row['loss']:.3f}</div></div>"
        )
    if not tiles:
        return ""
    return (
        "<h2>Top losses</h2><p class=note>The images the model got most wrong: highest loss "
        "(-log probability of the true class) first.</p><div class=gallery>" + "".join(tiles) + "</div>"
    )


def _reliability_svg(probs: np.ndarray, labels: np.ndarray) -> str:
    bins = reliability(probs, labels)
    w = h = 260
    pad = 30
    size = w - 2 * pad
    bars = []
    for b in bins:
        if not b.count:
            continue
        x = pad + b.low * size
        bw = (b.high - b.low) * size
        bars.append(
            f"<rect x='{x:.1f}' y='{h - pad - b.accuracy * size:.1f}' width='{bw - 1:.1f}' "
            f"height='{b.accuracy * size:.1f}' fill='#1f77b4'><title>confidence {b.confidence:.3f}, "
            f"accuracy {b.accuracy:.3f}, {b.count} images</title></rect>"
        )
    diag = f"<line x1='{pad}' y1='{h - pad}' x2='{w - pad}' y2='{pad}' stroke='#c33' stroke-dasharray='4'/>"
    axes = (
        f"<line x1='{pad}' y1='{h - pad}' x2='{w - pad}' y2='{h - pad}' stroke='#888'/>"
        f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{h - pad}' stroke='#888'/>"
        f"<text x='{w / 2 - 30}' y='{h - 8}' font-size='11'>confidence</text>"
        f"<text x='2' y='{pad - 8}' font-size='11'>accuracy</text>"
    )
    svg = f"<svg width='{w}' height='{h}' role='img' aria-label='reliability diagram'>"
    return f"{svg}{axes}{''.join(bars)}{diag}</svg>"


def _evaluation(evaluation: Evaluation, split: str, k: int) -> str:
    names = evaluation.class_names
    rep = evaluation.report
    rows = [
        [esc(n), *(f"{rep[n][m]:.4f}" for m in ("precision", "recall", "f1-score")), str(rep[n]["support"])]
        for n in names
    ]
    for avg in ("macro avg", "weighted avg"):
        rows.append(
            [
                f"<i>{avg}</i>",
                *(f"{rep[avg][m]:.4f}" for m in ("precision", "recall", "f1-score")),
                str(rep[avg]["support"]),
            ]
        )
    ece = expected_calibration_error(evaluation.probabilities, evaluation.labels)
    out = [
        f"<h2>Evaluation <span class=split>{esc(split)}</span></h2>",
        f"<p>accuracy <b id=accuracy>{evaluation.accuracy:.4f}</b> on {len(evaluation.labels)} "
        f"{esc(split)} images</p>",
        "<h3>Per-class precision and recall</h3>",
        _table(["class", "precision", "recall", "f1-score", "support"], rows, "per-class"),
        "<h2>Confusion matrix</h2>",
        _confusion(evaluation.confusion, names),
        _gallery(evaluation, k),
        "<h2>Reliability</h2>",
        f"<p>expected calibration error (ECE, 15 bins) <b id=ece>{ece:.4f}</b>: bars are the accuracy "
        "per confidence bin; a calibrated model follows the dashed diagonal.</p>",
        _reliability_svg(evaluation.probabilities, evaluation.labels),
    ]
    return "".join(out)


def render_report(
    classifier: Classifier,
    name: str,
    evaluation: Evaluation | None = None,
    *,
    split: str = "testing",
    top_k: int = TOP_LOSSES,
) -> str:
    """The HTML page for ``classifier`` (and, if given, its ``evaluation`` on ``split``).

    Args:
        classifier: The loaded model.
        name: How to call the model file in the page.
        evaluation: The model evaluated on a dataset split (``imgclf.evaluate_dataset``), or ``None`` for
            the model card alone.
        split: The split ``evaluation`` scored, for the labels.
        top_k: How many images the top-losses gallery shows.
    """
    body = _card(classifier, name)
    if evaluation is not None:
        body += _evaluation(evaluation, split, top_k)
    else:
        body += "<p class=note>No dataset given: pass <code>--dataset</code> for the test report.</p>"
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        f"<title>{esc(name)} — imgclf report</title><style>{_CSS}</style></head>"
        f"<body><h1>{esc(name)}</h1>{body}</body></html>\n"
    )


def write_report(page: str, path: str | os.PathLike) -> None:
    """Write the page atomically (UTF-8)."""
    atomic_write_text(path, page)
