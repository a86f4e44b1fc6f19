"""Tests of imgclf.classifier: every input kind gives the same answer; batches, errors, top-k, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgclf
from imgclf.classifier import Classifier, Prediction
from imgclf.errors import ImageError, UsageError


@pytest.fixture(scope="module")
def clf(tiny_model) -> Classifier:
    return imgclf.load(tiny_model.model_path)


@pytest.fixture(scope="module")
def testing_paths(tiny_model) -> list[str]:
    return sorted(str(p) for p in (tiny_model.dataset / "testing").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def rgb_png(tiny_model) -> str:
    path = tiny_model.dataset / "testing" / "square" / "square_000.png"
    with Image.open(path) as img:
        assert img.mode == "RGB"
    return str(path)


def test_same_image_as_path_bytes_pil_array_and_bgr_array_gives_the_same_probabilities(clf, rgb_png):
    data = Path(rgb_png).read_bytes()
    with Image.open(rgb_png) as img:
        pil = img.copy()
    rgb = np.asarray(pil)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    reference = clf.predict_proba(rgb_png)
    assert reference.shape == (1, 2) and reference.dtype == np.float32
    assert np.array_equal(clf.predict_proba(data), reference)
    assert np.array_equal(clf.predict_proba(bytearray(data)), reference)
    assert np.array_equal(clf.predict_proba(pil), reference)
    assert np.array_equal(clf.predict_proba(rgb), reference)
    assert np.array_equal(clf.predict_proba(bgr, channel_order="bgr"), reference)
    assert np.array_equal(clf.predict_proba(Path(rgb_png)), reference)
    # reading a BGR array as RGB is a different image: the channel order is really applied
    assert not np.array_equal(clf.predict_proba(bgr), reference)
    labels = {clf.predict(src)[0].label for src in (rgb_png, data, pil, rgb)}
    assert labels == {clf.predict(bgr, channel_order="bgr")[0].label}


def test_predict_results_describe_each_input(clf, rgb_png):
    preds = clf.predict([rgb_png, Path(rgb_png).read_bytes()])
    assert [type(p) for p in preds] == [Prediction, Prediction]
    assert preds[0].source == rgb_png and preds[1].source.endswith("bytes>")
    p = preds[0]
    assert p.error is None and p.label in clf.class_names and p.index == clf.class_names.index(p.label)
    assert list(p.probabilities) == clf.class_names
    assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert p.confidence == max(p.probabilities.values()) == p.probabilities[p.label]


@pytest.mark.parametrize("k, expected", [(1, 1), (2, 2), (5, 2)])
def test_top_k_is_sorted_and_capped_at_the_number_of_classes(clf, testing_paths, k, expected):
    for p in clf.predict(testing_paths, top_k=k):
        assert len(p.top_k) == expected
        probs = [v for _, v in p.top_k]
        assert probs == sorted(probs, reverse=True)
        assert p.top_k[0] == (p.label, p.confidence)
        assert all(p.probabilities[name] == v for name, v in p.top_k)
        assert len({name for name, _ in p.top_k}) == expected


def test_errors_return_marks_the_bad_image_and_classifies_the_others_alike(clf, testing_paths, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    good = testing_paths[:3]
    mixed = [good[0], str(corrupt), good[1], b"garbage bytes", good[2]]
    preds = clf.predict(mixed, errors="return", top_k=2)
    assert len(preds) == 5
    for i in (1, 3):
        assert preds[i].error and preds[i].label is None and preds[i].index == -1
        assert preds[i].probabilities == {} and preds[i].top_k == []
    assert str(corrupt) in preds[1].error
    ok = [preds[0], preds[2], preds[4]]
    assert all(p.error is None for p in ok)
    alone = clf.predict(good, top_k=2)  # the same good images without the bad ones: identical results
    assert ok == alone
    for p, path in zip(ok, good, strict=True):
        single = clf.predict(path, top_k=2)[0]
        assert single.label == p.label
        assert max(abs(single.probabilities[c] - p.probabilities[c]) for c in clf.class_names) <= 1e-6


def test_errors_raise_stops_with_an_image_error_naming_the_file(clf, testing_paths, tmp_path):
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ImageError, match="broken.jpg"):
        clf.predict([testing_paths[0], str(corrupt)])
    with pytest.raises(ImageError):
        clf.predict_proba([testing_paths[0], str(corrupt)])
    with pytest.raises(ImageError):
        clf.predict(str(tmp_path / "does-not-exist.png"), errors="raise")


def test_batch_and_one_by_one_agree(clf, testing_paths):
    batch = clf.predict_proba(testing_paths)
    small_batches = clf.predict_proba(testing_paths, batch_size=5)
    singles = np.concatenate([clf.predict_proba(p) for p in testing_paths])
    assert batch.shape == singles.shape == (len(testing_paths), 2)
    for other in (small_batches, singles):
        assert float(np.max(np.abs(batch - other))) <= 1e-6
        assert np.array_equal(batch.argmax(1), other.argmax(1))
    labels = [p.label for p in clf.predict(testing_paths)]
    assert labels == [clf.predict(p)[0].label for p in testing_paths]


def test_same_image_twenty_times_gives_identical_outputs(clf, rgb_png):
    batch = clf.predict_proba([rgb_png] * 20)
    assert all(np.array_equal(row, batch[0]) for row in batch)
    calls = [clf.predict_proba(rgb_png) for _ in range(20)]
    assert all(np.array_equal(c, calls[0]) for c in calls)
    preds = [clf.predict(rgb_png, top_k=2)[0] for _ in range(20)]
    assert all(p == preds[0] for p in preds)


def test_probabilities_are_a_distribution(clf, testing_paths):
    probs = clf.predict_proba(testing_paths)
    assert probs.dtype == np.float32
    assert np.all(probs >= 0) and np.allclose(probs.sum(1), 1.0, atol=1e-6)


def test_empty_input_gives_empty_results(clf):
    assert clf.predict([]) == []
    assert clf.predict_proba([]).shape == (0, 2)


@pytest.mark.parametrize("top_k", [0, -1, 1.5, True, "2", None])
def test_bad_top_k_is_a_usage_error(clf, rgb_png, top_k):
    with pytest.raises(UsageError, match="top_k"):
        clf.predict(rgb_png, top_k=top_k)


@pytest.mark.parametrize("errors", ["ignore", "RETURN", None, ""])
def test_bad_errors_mode_is_a_usage_error(clf, rgb_png, errors):
    with pytest.raises(UsageError, match="errors"):
        clf.predict(rgb_png, errors=errors)


def test_bad_channel_order_is_a_usage_error_even_with_errors_return(clf, rgb_png):
    arr = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(UsageError):
        clf.predict(arr, channel_order="rgba")
    with pytest.raises(UsageError):
        clf.predict([rgb_png], channel_order="bgr", errors="return")  # bgr only applies to arrays


def test_repr_names_architecture_classes_and_input(clf):
    text = repr(clf)
    assert "small_cnn" in text and "'ring'" in text and "32x32" in text


def test_iter_predict_decodes_one_batch_at_a_time_and_matches_predict(clf, testing_paths, monkeypatch):
    stacked: list[int] = []
    original = Classifier._stack

    def spy(self, images, channel_order, errors):
        stacked.append(len(images))
        return original(self, images, channel_order, errors)

    monkeypatch.setattr(Classifier, "_stack", spy)
    stream = clf.iter_predict(testing_paths, batch_size=5)
    assert stacked == []  # lazy: nothing decoded before the first result is asked for
    first = next(stream)
    assert stacked == [5]
    results = [first, *stream]
    n = len(testing_paths)
    assert stacked == [5] * (n // 5) + ([n % 5] if n % 5 else [])
    whole = clf.predict(testing_paths, batch_size=len(testing_paths))
    assert [r.source for r in results] == [w.source for w in whole]
    assert [r.label for r in results] == [w.label for w in whole]
    assert max(abs(r.confidence - w.confidence) for r, w in zip(results, whole, strict=True)) <= 1e-6


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True])
def test_bad_batch_size_is_a_usage_error(clf, rgb_png, batch_size):
    for method in (clf.predict, clf.predict_proba):
        with pytest.raises(UsageError, match="^batch_size must be a positive integer"):
            method(rgb_png, batch_size=batch_size)


def test_forward_passes_hold_a_bounded_number_of_pixels_whatever_the_input_size():
    import torch

    from imgclf.classifier import MAX_BATCH_PIXELS, predict_logits
    from imgclf.config import PreprocessSpec

    seen: list[tuple[int, ...]] = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x.mean(dim=(2, 3))[:, :2]

    for side, batch in [(64, 256), (512, 256), (2048, 256), (64, 7)]:
        seen.clear()
        spec = PreprocessSpec(height=side, width=side)
        images = np.zeros((9, side, side, 3), dtype=np.uint8)
        logits = predict_logits(Recorder(), images, spec, batch_size=batch)
        assert logits.shape == (9, 2) and sum(s[0] for s in seen) == 9
        assert max(s[0] for s in seen) == max(1, min(batch, 9, MAX_BATCH_PIXELS // (side * side)))
        assert all(s[0] * side * side <= max(MAX_BATCH_PIXELS, side * side) for s in seen)


def test_predict_logits_runs_in_eval_mode_and_restores_the_mode_it_found():
    import torch
    from torch import nn

    from imgclf.classifier import predict_logits
    from imgclf.config import PreprocessSpec

    torch.manual_seed(0)
    spec = PreprocessSpec(height=8, width=8)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(192, 3), nn.BatchNorm1d(3))
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    model.eval()
    expected = predict_logits(model, images, spec)
    assert not any(m.training for m in model.modules())

    model.train()  # a training loop's model: evaluated in eval mode, handed back in train mode
    assert torch.equal(predict_logits(model, images, spec), expected)
    assert all(m.training for m in model.modules())

    model.eval()
    model[1].train()  # one stray submodule in train mode (its dropout would be random) still gets eval
    assert torch.equal(predict_logits(model, images, spec), expected)
