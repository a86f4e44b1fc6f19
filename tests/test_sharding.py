"""imgclf.sharding: shares, part files and their checks, the merge. The oracle is one process's
``Classifier.iter_predict`` over the whole input list; the CLI over it is tested in
tests/cli/test_predict_shards.py."""

from __future__ import annotations

import os

import pytest

import imgclf
from helpers import make_classifier, make_dataset
from imgclf import sharding
from imgclf.data.listing import list_images
from imgclf.errors import ModelFileError, StorageError, UsageError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny untrained model and 7 images, one of which cannot be decoded."""
    base = tmp_path_factory.mktemp("sharding")
    images = make_dataset(base / "images", {"": 3})
    (images / "ring" / "broken.png").write_bytes(b"not an image")
    model = base / "m.imgclf"
    imgclf.save(make_classifier(seed=0), model)
    return str(model), list_images([str(images)])


def _fields(predictions):
    return [(p.source, p.label, p.index, p.probabilities, p.top_k, p.error) for p in predictions]


def test_three_shards_merge_to_one_process_predictions(setup, tmp_path):
    model, paths = setup
    want = list(imgclf.load(model).iter_predict(paths, top_k=2, errors="return"))
    job = sharding.ShardedPrediction(model, paths, tmp_path / "parts", 3, top_k=2)
    results = [job.predict(j) for j in range(3)]
    assert [r.images for r in results] == [2, 2, 3] and sum(r.failed for r in results) == 1
    assert not any(r.reused for r in results)
    assert all(s.finished for s in job.states(rows=True))
    assert _fields(job.merge()) == _fields(want)
    assert job.predict(1).reused  # a finished part of this run is not classified again
    job.remove_parts()
    assert not os.path.exists(tmp_path / "parts")


def test_merge_refuses_a_missing_part_before_returning_anything(setup, tmp_path):
    model, paths = setup
    job = sharding.ShardedPrediction(model, paths, tmp_path / "parts", 3)
    job.predict(0)
    job.predict(2)
    with pytest.raises(StorageError, match=r"a part is missing; received no part .*shard-1-of-3\.jsonl") as e:
        job.merge()
    assert "classify shard 1 of 3 first" in str(e.value)
    assert [s.status for s in job.states()] == ["finished", "missing", "finished"]


def test_a_part_that_changes_after_its_check_stops_the_merge_by_name(setup, tmp_path):
    model, paths = setup
    job = sharding.ShardedPrediction(model, paths, tmp_path / "parts", 2)
    for j in range(2):
        job.predict(j)
    merged = job.merge()
    first = next(merged)
    with open(job.part_path(1), "w") as fh:
        fh.write("{}\n")
    rest = []
    with pytest.raises(StorageError, match=r"shard-1-of-2\.jsonl is damaged: it does not start with a pred"):
        rest.extend(merged)
    want = imgclf.load(model).iter_predict(paths[:3], errors="return")
    assert _fields([first, *rest]) == _fields(want)  # shard 0's rows came out before shard 1 was read


@pytest.mark.parametrize(("shards", "count"), [(0, 7), (8, 7), (sharding.MAX_SHARDS + 1, 10**6), (True, 7)])
def test_the_shard_count_is_bounded_by_the_images_and_max_shards(setup, tmp_path, shards, count):
    model, _ = setup
    paths = [f"{i}.png" for i in range(count)]
    with pytest.raises(UsageError, match=r"shards for .* image\(s\); expected 1 … "):
        sharding.ShardedPrediction(model, paths, tmp_path / "parts", shards)


def test_no_images_and_no_such_shard_are_usage_errors(setup, tmp_path):
    model, paths = setup
    with pytest.raises(UsageError, match="no images to classify"):
        sharding.ShardedPrediction(model, [], tmp_path / "parts", 1)
    job = sharding.ShardedPrediction(model, paths, tmp_path / "parts", 2)
    with pytest.raises(UsageError, match=r"no such shard; received 2; expected 0 … 1"):
        job.predict(2)


def test_an_unreadable_model_is_a_model_file_error(setup, tmp_path):
    _, paths = setup
    job = sharding.ShardedPrediction(tmp_path / "missing.imgclf", paths, tmp_path / "parts", 1)
    with pytest.raises(ModelFileError, match="cannot read the model file"):
        job.model_digest  # noqa: B018


def test_shares_are_contiguous_and_cover_the_list_once():
    paths = [f"{i}.png" for i in range(23)]
    for count in (1, 2, 3, 7, 23):
        shares = [sharding.share(paths, j, count) for j in range(count)]
        assert [p for s in shares for p in s] == paths
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        bounds = [sharding.share_bounds(len(paths), j, count) for j in range(count)]
        assert all(bounds[j][1] == bounds[j + 1][0] for j in range(count - 1))


def test_the_public_api_runs_each_shard_in_its_own_object_and_merges_in_a_third(setup, tmp_path):
    model, paths = setup
    want = imgclf.load(model).predict(paths, errors="return")
    parts = tmp_path / "parts"
    for shard in range(2):  # as two processes would: each builds the run from the same arguments
        done = imgclf.ShardedPrediction(model, paths, parts, shards=2).predict(shard)
        assert (done.index, done.reused) == (shard, False)
        assert done.path == str(parts / f"shard-{shard}-of-2.jsonl")
    job = imgclf.ShardedPrediction(model, paths, parts, shards=2)
    assert [s.status for s in job.states()] == ["finished", "finished"]
    assert _fields(job.merge()) == _fields(want)
    other = imgclf.ShardedPrediction(model, paths[::-1], parts, shards=2)  # another input list
    with pytest.raises(imgclf.StorageError, match=r"shard-0-of-2\.jsonl was made for another input list"):
        other.merge()
    job.remove_parts()
    assert not parts.exists()


def _all_fields(predictions):
    return [
        (*f, p.unlike_training_data, p.labels) for f, p in zip(_fields(predictions), predictions, strict=True)
    ]


@pytest.fixture(scope="module")
def trust_models(tmp_path_factory):
    """An untrained model with an out-of-distribution threshold fitted on grey noise, and a multi-label one;
    inputs: noise like the fit's, flat black and white images (foreign), the ring/square shapes."""
    import numpy as np

    from helpers import save_image
    from imgclf.ood import fit_ood

    base = tmp_path_factory.mktemp("sharding-trust")
    rng = np.random.default_rng(3)
    like = rng.integers(96, 160, (40, 16, 16, 3), dtype=np.uint8)
    clf = make_classifier(seed=2)
    block = fit_ood(clf, like[:20], np.arange(20) % 2, like[20:])
    assert block is not None
    clf.manifest.update(ood=block, calibration={"temperature": 1.7, "split": "validation", "images": 20})
    ood = base / "ood.imgclf"
    imgclf.save(clf, ood)
    images = make_dataset(base / "images", {"": 2})
    for i, img in enumerate([*rng.integers(96, 160, (4, 16, 16, 3), dtype=np.uint8)]):
        save_image(img, images / f"noise{i}.png", "RGB")
    save_image(np.zeros((16, 16, 3), np.uint8), images / "black.png", "RGB")
    save_image(np.full((16, 16, 3), 255, np.uint8), images / "white.png", "RGB")
    (images / "broken.png").write_bytes(b"not an image")
    paths = list_images([str(images)])
    multi = make_classifier(("a", "b", "c"), seed=4)
    multi.manifest["task"] = {"type": "multi_label", "thresholds": [0.5] * 3, "balance": "none"}
    probs = np.array(
        [list(p.probabilities.values()) for p in multi.predict(paths, errors="return") if not p.error]
    )
    # Each class's median as its threshold: the label sets differ from image to image.
    multi.manifest["task"]["thresholds"] = [float(v) for v in np.median(probs, axis=0)]
    multi_path = base / "multi.imgclf"
    imgclf.save(multi, multi_path)
    return str(ood), str(multi_path), paths


def test_shards_carry_the_ood_flag_and_multi_label_sets_as_one_process_sets_them(trust_models, tmp_path):
    ood, multi, paths = trust_models
    for model, name in ((ood, "ood"), (multi, "multi")):
        want = imgclf.load(model).predict(paths, top_k=2, errors="return")
        job = sharding.ShardedPrediction(model, paths, tmp_path / name, 3, top_k=2)
        for j in range(3):
            job.predict(j)
        got = list(job.merge())
        assert _all_fields(got) == _all_fields(want)
        ok = [p for p in got if p.error is None]
        if model == ood:
            assert {p.unlike_training_data for p in ok} == {True, False}  # the foreign ones flagged
            assert all(p.labels is None for p in ok)
        else:
            assert all(p.unlike_training_data is None for p in ok)
            assert len({tuple(p.labels) for p in ok}) > 1 and all(
                p.label == "|".join(p.labels) or p.label == "none" for p in ok
            )


def test_a_row_whose_label_is_not_its_label_set_is_refused(trust_models, tmp_path):
    _, multi, paths = trust_models
    job = sharding.ShardedPrediction(multi, paths, tmp_path / "parts", 1)
    job.predict(0)
    path = tmp_path / "parts" / "shard-0-of-1.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    import json

    row = json.loads(lines[1])
    row["labels"] = ["c", "a"] if row["labels"] != ["c", "a"] else ["a"]  # not in class order / not joined
    path.write_text(lines[0] + json.dumps(row) + "\n" + "".join(lines[2:]))
    with pytest.raises(StorageError, match=r"shard-0-of-1\.jsonl is damaged: row 1 is not a prediction"):
        job.merge()


def test_a_bf16_choice_is_part_of_the_run(setup, tmp_path, monkeypatch):
    from imgclf import precision

    model, paths = setup
    monkeypatch.setattr(precision, "native_bf16", lambda: "AMX")
    bf16 = sharding.ShardedPrediction(model, paths, tmp_path / "parts", 2, precision="bf16")
    assert bf16.classifier.autocast_dtype is not None and bf16.options["precision"] == "bf16"
    bf16.predict(0)
    fp32 = sharding.ShardedPrediction(model, paths, tmp_path / "parts", 2, precision="fp32")
    assert fp32.classifier.autocast_dtype is None and "precision" not in fp32.options
    state = fp32.check(0)
    assert state.status == "bad" and "was made with other options" in state.reason
    with pytest.raises(UsageError, match="unknown precision"):
        sharding.ShardedPrediction(model, paths, tmp_path / "parts", 2, precision="fp16")
