"""``imgclf calibrate`` on a deliberately over-confident model lowers its calibration error."""

from __future__ import annotations

import re

import torch

from helpers import run_cli
from imgclf import modelfile


def test_calibrate_lowers_ece_of_an_overconfident_model_and_stores_the_temperature(tiny_model, tmp_path):
    clf = modelfile.load(tiny_model.model_path)
    with torch.no_grad():
        last = [m for m in clf.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(20.0)  # same ranking, far too sure
        last.bias.mul_(20.0)
    sure = tmp_path / "sure.imgclf"
    modelfile.save(clf, sure)
    out = tmp_path / "calibrated.imgclf"
    rc, stdout, err = run_cli(
        "calibrate", str(sure), "-d", str(tiny_model.dataset), "--split", "all", "-o", str(out)
    )
    assert rc == 0, err
    m = re.search(
        r"temperature ([0-9.]+); expected calibration error on 44 all images ([0-9.]+) -> ([0-9.]+)", stdout
    )
    assert m, stdout
    t, before, after = map(float, m.groups())
    assert t > 2 and after < before
    back = modelfile.load(out)
    assert back.temperature == t or abs(back.temperature - t) < 1e-4
    assert back.manifest["calibration"]["split"] == "all"
    assert modelfile.verify(out).ok
    # the same predicted classes, softer probabilities
    x = [str(p) for p in sorted((tiny_model.dataset / "testing").rglob("*.png"))]
    a, b = modelfile.load(sure).predict_proba(x), back.predict_proba(x)
    assert (a.argmax(1) == b.argmax(1)).all() and b.max(1).mean() < a.max(1).mean()
