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
from imgclf.evaluation import average_precision, choose_thresholds, evaluate_multilabel, multilabel_scores

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


def test_every_row_of_the_report_and_its_json_equal_scikit_learns():
    """The averaged rows, the micro average and report.json's fields, with a fifth class that has no
    positive image and no prediction (scikit-learn's zero_division=0 cases)."""
    probs, targets = _scores(seed=3, n=50, c=4)
    probs = np.hstack([probs, np.full((50, 1), 0.9)])
    targets = np.hstack([targets, np.zeros((50, 1), np.int64)])
    thresholds = [0.5, 0.4, 0.6, 0.45, 1.0]
    names = list("abcde")
    paths = [f"img{i}.png" for i in range(50)]
    ev = evaluate_multilabel(probs, targets, paths, names, thresholds)
    pred = (probs >= np.array(thresholds)).astype(np.int64)
    expected = metrics.classification_report(
        targets, pred, target_names=names, output_dict=True, zero_division=0
    )
    for row in ("macro avg", "weighted avg"):
        assert ev.report[row] == pytest.approx(expected[row]), row
    assert ev.micro == pytest.approx(expected["micro avg"])
    assert ev.report["e"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    assert ev.balanced_accuracy == pytest.approx(multilabel_scores(targets, pred)["balanced_accuracy"])
    data = ev.to_dict()
    present = [metrics.average_precision_score(targets[:, i], probs[:, i]) for i in range(4)]
    assert data["mAP"] == pytest.approx(np.mean(present))  # class e has no positive image: left out
    assert (data["task"], data["class_names"], data["report"]) == ("multi_label", names, ev.report)
    assert (data["micro avg"], data["micro_f1"], data["macro_f1"]) == (ev.micro, ev.micro_f1, ev.macro_f1)
    assert data["average_precision"] == ev.average_precision
    wrong = [
        {"path": paths[i], "true": [names[j] for j in np.flatnonzero(targets[i])],
         "predicted": [names[j] for j in np.flatnonzero(pred[i])]}
        for i in range(50)
        if (targets[i] != pred[i]).any()
    ]  # fmt: skip
    assert data["misclassified"] == wrong and 0 < len(wrong) < 50
    json.dumps(data)  # JSON-able as report.json needs


def test_no_labels_no_predictions_and_no_images_score_0_like_scikit_learn():
    probs = np.full((6, 2), 0.2)
    targets = np.zeros((6, 2), np.int64)
    ev = evaluate_multilabel(probs, targets, [str(i) for i in range(6)], ["a", "b"], [0.5, 0.5])
    expected = metrics.classification_report(
        targets, probs >= 0.5, target_names=["a", "b"], output_dict=True, zero_division=0
    )
    assert (
        ev.micro == expected["micro avg"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    )
    assert ev.report["weighted avg"] == expected["weighted avg"]
    assert ev.accuracy == 1.0 and ev.mean_average_precision == 0.0  # every (empty) label set is right
    empty = evaluate_multilabel(np.zeros((0, 2)), np.zeros((0, 2)), [], ["a", "b"], [0.5, 0.5])
    assert (empty.accuracy, empty.micro_f1, empty.macro_f1) == (0.0, 0.0, 0.0)


def test_average_precision_with_ties_and_single_images_equals_scikit_learns():
    scores = np.array([0.9, 0.7, 0.7, 0.7, 0.2, 0.2])
    for targets in ([1, 0, 1, 0, 1, 0], [0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1]):
        expected = metrics.average_precision_score(targets, scores)
        assert average_precision(np.array(targets), scores) == pytest.approx(expected)
    assert average_precision(np.array([1]), np.array([0.3])) == pytest.approx(1.0)
    assert average_precision(np.zeros(0), np.zeros(0)) == 0.0


def test_multilabel_scores_equal_scikit_learns():
    """Macro-F1 and the per-class balanced accuracy (every class here has positives and negatives)."""
    probs, targets = _scores(seed=4, n=80, c=3)
    pred = probs >= 0.5
    scores = multilabel_scores(targets, pred, prefix="val_")
    assert set(scores) == {"val_balanced_accuracy", "val_macro_f1"}
    assert scores["val_macro_f1"] == pytest.approx(metrics.f1_score(targets, pred, average="macro"))
    per_class = [metrics.balanced_accuracy_score(targets[:, j], pred[:, j]) for j in range(3)]
    assert scores["val_balanced_accuracy"] == pytest.approx(np.mean(per_class))
    assert multilabel_scores(targets[:, :0], pred[:, :0]) == {"balanced_accuracy": 0.0, "macro_f1": 0.0}


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


def test_thresholds_lie_halfway_below_the_lowest_accepted_probability():
    """Exact values: a clean cut, a class without positives (kept at 0.5, the next class still chosen), a
    class whose every image is positive (halfway to 0), and a tie that a cut may not split."""
    probs = np.array([[0.9, 0.9, 0.2, 0.6], [0.8, 0.1, 0.6, 0.6], [0.3, 0.4, 0.4, 0.2], [0.1, 0.2, 0.7, 0.2]])
    targets = np.array([[1, 0, 1, 1], [1, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]])
    chosen = choose_thresholds(probs, targets)
    assert chosen.tolist() == pytest.approx([0.55, 0.5, 0.1, 0.4], abs=1e-12)
    assert chosen.dtype == np.float64
    assert choose_thresholds(np.zeros(0), np.zeros((0, 3))).tolist() == [0.5, 0.5, 0.5]  # no images


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
