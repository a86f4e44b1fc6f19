"""Multi-label: metrics against scikit-learn, thresholds that maximise F1, training from a CSV, thresholds
through the file, and predict's label sets (with "none") in text, CSV and JSONL."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import imgclf
from helpers import edit_manifest, run_cli, save_image, tiny_train_config
from imgclf.errors import ModelFileError
from imgclf.evaluation import average_precision, choose_thresholds, evaluate_multilabel

metrics = pytest.importorskip("sklearn.metrics")


def _scores(seed: int = 0, n: int = 60, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.35).astype(np.int64)
    probs = np.clip(targets * 0.3 + rng.random((n, c)) * 0.7, 0, 1).round(2)  # ties on purpose
    return probs, targets


def test_metrics_equal_scikit_learns():
    probs, targets = _scores()
    thresholds = [0.5, 0.4, 0.6, 0.45]
    ev = evaluate_multilabel(probs, targets, [f"{i}" for i in range(60)], list("abcd"), thresholds)
    pred = (probs >= np.array(thresholds)).astype(np.int64)
    p, r, f, s = metrics.precision_recall_fscore_support(targets, pred, average=None, zero_division=0)
    for i, name in enumerate("abcd"):
        row = ev.report[name]
        assert (row["precision"], row["recall"], row["f1-score"], row["support"]) == pytest.approx(
            (p[i], r[i], f[i], s[i])
        )
    assert ev.micro_f1 == pytest.approx(metrics.f1_score(targets, pred, average="micro"))
    assert ev.macro_f1 == pytest.approx(metrics.f1_score(targets, pred, average="macro", zero_division=0))
    assert ev.accuracy == pytest.approx(metrics.accuracy_score(targets, pred))
    for i, name in enumerate("abcd"):
        assert ev.average_precision[name] == pytest.approx(
            metrics.average_precision_score(targets[:, i], probs[:, i])
        )
    assert ev.mean_average_precision == pytest.approx(
        metrics.average_precision_score(targets, probs, average="macro")
    )
    assert average_precision(np.zeros(3), np.array([0.1, 0.2, 0.3])) == 0.0
    assert ev.to_dict()["thresholds"] == dict(zip("abcd", thresholds, strict=True))


def test_thresholds_maximise_each_classs_f1():
    probs, targets = _scores(seed=1)
    chosen = choose_thresholds(probs, targets)
    for j in range(probs.shape[1]):
        best = max(
            metrics.f1_score(targets[:, j], probs[:, j] >= t, zero_division=0) for t in np.unique(probs[:, j])
        )
        assert metrics.f1_score(targets[:, j], probs[:, j] >= chosen[j], zero_division=0) == pytest.approx(
            best
        )
    no_positives = choose_thresholds(probs, np.zeros_like(targets))
    assert no_positives.tolist() == [0.5] * probs.shape[1]


def _multilabel_csv(root: Path, n: int = 48) -> Path:
    """Images with a bright red square ("red"), a blue bar ("blue"), both, or neither (empty label)."""
    rng = np.random.default_rng(5)
    (root / "img").mkdir(parents=True)
    rows = ["path,labels"]
    for i in range(n):
        img = rng.integers(0, 50, (32, 32, 3)).astype(np.uint8)
        labels = []
        if i % 2:
            y, x = rng.integers(2, 20, 2)
            img[y : y + 12, x : x + 12, 0] = 240
            labels.append("red")
        if i % 3 == 0:
            x = rng.integers(0, 26)
            img[:, x : x + 6, 2] = 240
            labels.append("blue")
        save_image(img, root / "img" / f"{i:03d}.png", "RGB")
        rows.append(f"img/{i:03d}.png,{'|'.join(labels)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml")
    labels = _multilabel_csv(root / "data")
    notes: list[str] = []
    config = tiny_train_config(epochs=6, lr=0.05, val_split=0.25, test_split=0.25)
    result = imgclf.train(labels, root / "m.imgclf", config, log=notes.append)
    return result, notes, labels


def test_a_csv_with_label_sets_trains_multi_label_and_beats_a_constant_predictor(trained):
    result, notes, _ = trained
    assert any("training multi-label" in n for n in notes)
    ev = result.evaluation
    assert ev.to_dict()["task"] == "multi_label"
    targets = ev.labels
    constant = max(  # the best label set answered for every image
        metrics.f1_score(targets, np.tile(np.array(s), (len(targets), 1)), average="micro", zero_division=0)
        for s in ([0, 0], [0, 1], [1, 0], [1, 1])
    )
    assert ev.micro_f1 > constant + 0.1
    report = (Path(result.run_dir) / "report.txt").read_text()
    assert "micro-F1" in report and "mAP" in report


def test_thresholds_round_trip_through_the_file_and_are_checked(trained, tmp_path):
    result, _, _ = trained
    clf = imgclf.load(result.model_path)
    task = clf.manifest["task"]
    assert task["type"] == "multi_label" and len(task["thresholds"]) == 2 and task["balance"] == "none"
    assert clf.thresholds.tolist() == result.classifier.manifest["task"]["thresholds"]
    assert imgclf.verify(result.model_path).ok
    blob = Path(result.model_path).read_bytes()
    bad = tmp_path / "bad.imgclf"
    bad.write_bytes(edit_manifest(blob, lambda m: m["task"].update(thresholds=[0.5])))
    with pytest.raises(ModelFileError, match=r"task.thresholds.*2 thresholds in \[0, 1\]"):
        imgclf.load(bad)


def test_predict_gives_label_sets_every_probability_and_none(trained, tmp_path):
    result, _, labels = trained
    model = tmp_path / "m.imgclf"
    blob = Path(result.model_path).read_bytes()
    # thresholds of 1.0: nothing passes, so every answer is "none"
    model.write_bytes(edit_manifest(blob, lambda m: m["task"].update(thresholds=[1.0, 1.0])))
    image = labels.parent / "img" / "001.png"
    code, out, err = run_cli("predict", "--model", model, "-i", image, "--json")
    assert code == 0, err
    row = json.loads(out)
    assert row["labels"] == [] and row["label"] == "none" and set(row["probabilities"]) == {"blue", "red"}
    code, out, err = run_cli(
        "predict", "--model", result.model_path, "-i", image, "--output", tmp_path / "p.csv"
    )
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    clf = imgclf.load(result.model_path)
    expected = clf.predict([str(image)])[0]
    assert rows[0]["label"] == ("|".join(expected.labels) or "none")
    assert float(rows[0]["blue"]) == pytest.approx(expected.probabilities["blue"])
    assert out.split("\t")[1] == rows[0]["label"]


def test_montage_tiles_show_label_sets(trained, tmp_path):
    from imgclf.classifier import Prediction
    from imgclf.cli.predict import tile_caption

    assert tile_caption(Prediction("a", "cat|dog", 0, 0.9, labels=["cat", "dog"])) == "cat|dog"
    assert tile_caption(Prediction("a", "none", 0, 0.3, labels=[])) == "none"
    assert tile_caption(Prediction("a", "cat", 0, 0.9)) == "cat 90%"
    result, _, labels = trained
    images = sorted(str(p) for p in (labels.parent / "img").glob("*.png"))[:4]
    code, _, err = run_cli(
        "predict", "--model", result.model_path, "-i", *images, "--montage", tmp_path / "m.png"
    )
    assert code == 0, err
    assert (tmp_path / "m.png").stat().st_size > 0


def test_evaluate_on_the_csv_repeats_the_training_split_and_report(trained):
    result, _, labels = trained
    code, out, err = run_cli("evaluate", "--model", result.model_path, "--dataset", labels, "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["task"] == "multi_label" and got["report"] == result.evaluation.report
    assert got["mAP"] == pytest.approx(result.evaluation.mean_average_precision)
