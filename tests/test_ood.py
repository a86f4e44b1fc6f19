"""The out-of-distribution warning: set at the end of training, stored in the file, flagged by predict.

Targets (issue 26), on data made here: at least 90 % of clearly foreign images flagged (noise, flat
colours, gradients, checkerboards, drawn shapes, photo crops), at most 5 % of the test split.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from helpers import run_cli, save_image, tiny_train_config
from imgclf import modelfile
from imgclf.config import PreprocessSpec
from imgclf.data.synthetic import write_demo_dataset
from imgclf.data.synthetic_foreign import foreign_images
from imgclf.training.pipeline import train


@pytest.fixture(scope="module")
def ood_model(tmp_path_factory):
    base = tmp_path_factory.mktemp("ood")
    data = base / "data"
    per_split = {"training": 80, "validation": 30, "testing": 40}
    write_demo_dataset(
        data, counts={s: {"Parasitized": n, "Uninfected": n} for s, n in per_split.items()}, seed=5
    )
    lines: list[str] = []
    config = tiny_train_config(
        epochs=5, arch_args={"widths": [16, 32, 64]}, preprocess=PreprocessSpec(height=48, width=48)
    )
    train(data, base / "m.imgclf", config, log=lines.append)
    foreign = base / "foreign"
    foreign.mkdir()
    for name, arr in foreign_images(140, size=64, seed=3):
        save_image(arr, foreign / f"{name}.png", "RGB")
    return base / "m.imgclf", data, foreign, lines


def test_training_stores_a_threshold_and_says_so(ood_model):
    path, _, _, lines = ood_model
    block = modelfile.load(path).manifest["ood"]
    assert block["score"] == "feature_distance" and block["split"] == "validation" and block["images"] == 60
    assert any("out-of-distribution threshold set on 60 validation images" in line for line in lines), lines


def test_flag_rates_meet_the_targets(ood_model):
    path, data, foreign, _ = ood_model
    clf = modelfile.load(path)
    test = clf.predict(sorted(str(p) for p in (data / "testing").rglob("*") if p.is_file()))
    assert len(test) == 80
    far = clf.predict(sorted(map(str, foreign.glob("*.png"))))
    test_share = np.mean([p.unlike_training_data for p in test])
    far_share = np.mean([p.unlike_training_data for p in far])
    assert test_share <= 0.05, test_share
    assert far_share >= 0.90, far_share


def test_predict_has_the_column_the_count_and_the_marker(ood_model, tmp_path):
    path, data, foreign, _ = ood_model
    images = [str(next((data / "testing" / "Uninfected").glob("*.png"))), str(foreign / "noise_0000.png")]
    out = tmp_path / "p.csv"
    rc, stdout, err = run_cli("predict", "-m", str(path), "-i", *images, "-o", str(out))
    assert rc == 0, err
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["unlike_training_data"] for r in rows] == ["false", "true"]
    assert stdout.splitlines()[1].endswith("\tunlike_training_data")
    assert not stdout.splitlines()[0].endswith("unlike_training_data")
    assert "imgclf: 1 of 2 image(s) unlike the training data" in err
    rc, stdout, err = run_cli("predict", "-m", str(path), "-i", *images, "--json")
    assert [
        '"unlike_training_data": false' in stdout.splitlines()[0],
        '"unlike_training_data": true' in stdout.splitlines()[1],
    ] == [True, True]


def test_a_file_without_threshold_adds_no_column(tiny_model, tmp_path):
    image = str(next((tiny_model.dataset / "testing").rglob("*.png")))
    out = tmp_path / "p.csv"
    rc, _, err = run_cli("predict", "-m", str(tiny_model.model_path), "-i", image, "-o", str(out))
    assert rc == 0, err
    assert "unlike_training_data" not in out.read_text() and "unlike the training data" not in err
    assert modelfile.load(tiny_model.model_path).predict(image)[0].unlike_training_data is None


def test_serve_answers_carry_the_flag(ood_model):
    pytest.importorskip("fastapi")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from imgclf.serving.app import ServeSettings, create_app
    from imgclf.serving.models import ModelStore

    path, data, foreign, _ = ood_model
    cell = next((data / "testing" / "Uninfected").glob("*.png")).read_bytes()
    noise = (foreign / "noise_0000.png").read_bytes()
    with TestClient(create_app(ModelStore.open({"m": str(path)}), ServeSettings())) as api:
        rows = [
            api.post("/v1/predict", content=body, headers={"content-type": "image/png"}).json()[
                "predictions"
            ][0]
            for body in (cell, noise)
        ]
    assert [r["unlike_training_data"] for r in rows] == [False, True]
