"""Tests of imgclf.evaluation and reports.format_report: numbers and text equal scikit-learn's exactly."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from imgclf.errors import UsageError
from imgclf.evaluation import classification_report, confusion_matrix, evaluate_probabilities
from imgclf.reports import format_report

sk_metrics = pytest.importorskip("sklearn.metrics")


def _sk_report(y_true, y_pred, names, **kwargs):
    labels = list(range(len(names)))
    return sk_metrics.classification_report(
        y_true, y_pred, labels=labels, target_names=names, zero_division=0, **kwargs
    )


def _random_cases(count: int, seed: int = 0):
    """(y_true, y_pred, C): random class subsets, so some classes are never predicted or have no support."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        c = int(rng.integers(2, 8))
        n = int(rng.integers(1, 80))
        true_classes = rng.choice(c, size=int(rng.integers(1, c + 1)), replace=False)
        pred_classes = rng.choice(c, size=int(rng.integers(1, c + 1)), replace=False)
        y_true = rng.choice(true_classes, n)
        y_pred = rng.choice(pred_classes, n)
        keep = rng.random(n) < rng.uniform(0, 0.9)  # a share of correct predictions, varying per case
        y_pred = np.where(keep, y_true, y_pred)
        yield y_true, y_pred, c


# Hand-picked corners: a class never predicted, a class with zero support, a class with neither, perfect,
# all wrong, a single sample, a long class name (wider first column).
CORNERS = [
    ([0, 0, 1, 1], [0, 0, 0, 0], ["a", "b"]),
    ([0, 0, 0, 0], [0, 1, 0, 1], ["a", "b"]),
    ([0, 1, 0, 1], [0, 1, 0, 0], ["a", "b", "never_seen"]),
    ([2, 1, 0, 2], [2, 1, 0, 2], ["x", "y", "z"]),
    ([0], [0], ["only", "other"]),
    ([0, 1, 2, 2, 1], [1, 2, 2, 0, 1], ["Parasitized_with_a_very_long_name", "Uninfected", "u"]),
    ([1, 1, 1], [0, 0, 2], ["a", "b", "c"]),
]


@pytest.mark.parametrize("y_true, y_pred, names", CORNERS)
def test_report_equals_sklearn_on_corner_cases(y_true, y_pred, names):
    ours = classification_report(y_true, y_pred, names)
    assert ours == _sk_report(y_true, y_pred, names, output_dict=True)
    assert list(ours) == [*names, "accuracy", "macro avg", "weighted avg"]


def test_report_equals_sklearn_on_many_random_cases():
    zero_support = never_predicted = 0
    for y_true, y_pred, c in _random_cases(200):
        names = [f"class_{i}" for i in range(c)]
        ours = classification_report(y_true, y_pred, names)
        assert ours == _sk_report(y_true, y_pred, names, output_dict=True), (y_true.tolist(), y_pred.tolist())
        zero_support += any(ours[n]["support"] == 0 for n in names)
        never_predicted += any(i not in set(y_pred.tolist()) for i in range(c))
    # the random cases really exercised the zero-division corners
    assert zero_support > 25 and never_predicted > 25


def test_report_supports_are_ints_and_json_round_trips():
    report = classification_report([0, 1, 1, 2], [0, 1, 0, 2], ["a", "b", "c"])
    assert all(isinstance(report[k]["support"], int) for k in ("a", "b", "c", "macro avg", "weighted avg"))
    text = json.dumps(report)
    assert '"support": 2' in text and "2.0" not in text
    assert json.loads(text) == report


def _sk_text(y_true, y_pred, names) -> str:
    return _sk_report(y_true, y_pred, names, digits=4)


def _ints(text: str) -> str:
    """scikit-learn's text with float supports ("2.0", printed when nothing is right) as ints, same width."""
    return "".join(
        re.sub(r"(\s+)(\d+)\.0$", lambda m: " " * (len(m[1]) + 2) + m[2], line)
        for line in text.splitlines(keepends=True)
    )


@pytest.mark.parametrize("y_true, y_pred, names", CORNERS)
def test_format_report_equals_sklearn_text_on_corner_cases(y_true, y_pred, names):
    expected = _sk_text(y_true, y_pred, names)
    if not any(t == p for t, p in zip(y_true, y_pred, strict=True)):
        expected = _ints(expected)  # scikit-learn prints float supports then (see the test below)
    assert format_report(classification_report(y_true, y_pred, names)) == expected


def test_format_report_equals_sklearn_text_on_many_random_cases():
    rng = np.random.default_rng(1)
    checked = 0
    for y_true, y_pred, c in _random_cases(150, seed=2):
        if not (y_true == y_pred).any():
            continue  # scikit-learn quirk, covered below
        width = int(rng.integers(1, 20))
        names = [f"{'n' * width}{i}" for i in range(c)]  # names shorter and longer than "weighted avg"
        ours = format_report(classification_report(y_true, y_pred, names))
        assert ours == _sk_text(y_true, y_pred, names)
        checked += 1
    assert checked > 120


def test_format_report_without_true_positives_prints_integer_supports():
    """scikit-learn prints "2.0" as support when nothing is right (its tp_sum turns float); we print "2"."""
    names = ["a", "b"]
    ours = format_report(classification_report([1, 1], [0, 0], names))
    theirs = _sk_text([1, 1], [0, 0], names)
    assert ours != theirs and ours == _ints(theirs)
    assert ours.splitlines()[3].split() == ["b", "0.0000", "0.0000", "0.0000", "2"]


def test_format_report_of_a_json_round_tripped_report_is_unchanged():
    names = ["Parasitized", "Uninfected"]
    report = classification_report([0, 1, 1, 0, 1], [0, 1, 0, 0, 1], names)
    assert format_report(json.loads(json.dumps(report))) == format_report(report)


def test_confusion_matrix_equals_sklearn():
    for y_true, y_pred, c in _random_cases(200, seed=3):
        ours = confusion_matrix(y_true, y_pred, c)
        assert ours.shape == (c, c) and ours.dtype == np.int64
        theirs = sk_metrics.confusion_matrix(y_true, y_pred, labels=list(range(c)))
        np.testing.assert_array_equal(ours, theirs)


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix([0, 0, 1], [1, 1, 1], 3)
    assert cm.tolist() == [[0, 2, 0], [0, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    "y_true, y_pred", [([-1, 0], [0, 1]), ([0, 2], [0, 1]), ([0, 1], [0, 5]), ([0, 1, 1], [1])]
)
def test_confusion_matrix_rejects_labels_out_of_range_or_mismatched_lengths(y_true, y_pred):
    # a negative label used to wrap around silently to the last class; unequal lengths used to broadcast
    with pytest.raises(UsageError):
        confusion_matrix(y_true, y_pred, 2)
    with pytest.raises(UsageError):
        classification_report(y_true, y_pred, ["a", "b"])


def test_evaluate_probabilities_lists_misclassified_files():
    names = ["cat", "dog", "eel"]
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # cat -> cat
            [0.6, 0.3, 0.1],  # dog -> cat (wrong)
            [0.1, 0.1, 0.8],  # eel -> eel
            [0.2, 0.5, 0.3],  # cat -> dog (wrong)
            [0.1, 0.2, 0.7],
        ],  # eel -> eel
        dtype=np.float32,
    )
    labels = np.array([0, 1, 2, 0, 2])
    paths = [f"img{i}.png" for i in range(5)]
    ev = evaluate_probabilities(probs, labels, paths, names)
    assert ev.misclassified == [
        {"path": "img1.png", "true": "dog", "predicted": "cat", "confidence": float(np.float32(0.6))},
        {"path": "img3.png", "true": "cat", "predicted": "dog", "confidence": float(np.float32(0.5))},
    ]
    assert ev.accuracy == pytest.approx(3 / 5)
    assert ev.confusion.tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 2]]
    assert ev.report == classification_report(labels, probs.argmax(1), names)
    assert ev.paths == paths and ev.class_names == names
    summary = json.loads(json.dumps(ev.to_dict()))
    assert summary["misclassified"] == ev.misclassified
    assert summary["confusion_matrix"] == ev.confusion.tolist()


def test_evaluate_probabilities_ties_pick_the_first_class_like_predict():
    ev = evaluate_probabilities(np.array([[0.5, 0.5]]), np.array([1]), ["a.png"], ["x", "y"])
    assert ev.misclassified == [{"path": "a.png", "true": "y", "predicted": "x", "confidence": 0.5}]


def test_evaluate_probabilities_all_correct_lists_nothing():
    probs = np.eye(3, dtype=np.float32)
    ev = evaluate_probabilities(probs, np.arange(3), ["a", "b", "c"], ["x", "y", "z"])
    assert ev.misclassified == [] and ev.accuracy == 1.0


def _evaluation(pred, labels):
    probs = np.eye(2)[np.asarray(pred)]
    paths = [f"{i}.png" for i in range(len(pred))]
    return evaluate_probabilities(probs, np.asarray(labels), paths, ["a", "b"])


def test_usefulness_warnings_name_one_class_models_and_chance_level():
    from imgclf.evaluation import usefulness_warnings

    one_class = usefulness_warnings(_evaluation([0] * 20, [0] * 10 + [1] * 10), "testing")
    assert one_class[0] == "the saved model predicts 'a' for 20 of 20 testing images"
    assert "accuracy 0.5000 is at chance level" in one_class[1]
    assert usefulness_warnings(_evaluation([0] * 10 + [1] * 10, [0] * 10 + [1] * 10), "testing") == []
    wrong = usefulness_warnings(_evaluation([1] * 10 + [0] * 10, [0] * 10 + [1] * 10), "validation")
    assert wrong == [
        "the saved model's validation accuracy 0.0000 is at chance level (always answering the most common "
        "class scores 0.5000)"
    ]


def test_usefulness_warnings_boundaries():
    """The documented edges: fewer than 2 images say nothing; 2 images already can; 95 % is "one class"."""
    from imgclf.evaluation import usefulness_warnings

    assert usefulness_warnings(_evaluation([0], [1]), "testing") == []
    two = usefulness_warnings(_evaluation([0, 0], [0, 1]), "testing")
    assert two[0] == "the saved model predicts 'a' for 2 of 2 testing images"
    nineteen = usefulness_warnings(_evaluation([0] * 19 + [1], [0] * 10 + [1] * 10), "testing")
    assert nineteen[0] == "the saved model predicts 'a' for 19 of 20 testing images"
    eighteen = usefulness_warnings(_evaluation([0] * 18 + [1] * 2, [0] * 10 + [1] * 10), "testing")
    assert not any("predicts" in w for w in eighteen)
