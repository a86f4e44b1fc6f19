"""Class order survives saving, and each probe's label (index and name) is recorded and verified.

A writer that stored the class names in another order (say sorted) would give every prediction of the
loaded model a wrong label while the probabilities stay identical — so probes compare labels too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import imgclf
from helpers import edit_manifest, make_classifier, manifest_of
from imgclf.errors import ModelFileError

UNSORTED = ("zebra", "apple", "mango")  # every name sits at another index once sorted


def _images(n: int = 24, size: int = 20) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(n)]


def _rows(report) -> dict[str, tuple[bool, str]]:
    return {name: (ok, detail) for name, ok, detail in report.checks}


@pytest.fixture(scope="module")
def unsorted_file(tmp_path_factory):
    clf = make_classifier(UNSORTED, seed=3, size=16)
    path = tmp_path_factory.mktemp("labels") / "unsorted.imgclf"
    imgclf.save(clf, path)
    return clf, path


def test_unsorted_class_names_and_every_label_survive_a_round_trip(unsorted_file):
    clf, path = unsorted_file
    loaded = imgclf.load(path)
    assert list(loaded.class_names) == list(UNSORTED)
    images = _images()
    before = [(p.index, p.label) for p in clf.predict(images)]
    after = [(p.index, p.label) for p in loaded.predict(images)]
    assert after == before
    np.testing.assert_array_equal(loaded.predict_proba(images), clf.predict_proba(images))


def test_each_probe_records_the_index_and_name_it_got_at_save_time(unsorted_file):
    clf, path = unsorted_file
    probes = manifest_of(path.read_bytes())["probes"]
    for record in probes:
        index = int(np.argmax(record["probabilities"]))
        assert record["label"] == {"index": index, "name": UNSORTED[index]}


def test_a_fresh_file_passes_the_label_checks(unsorted_file):
    _, path = unsorted_file
    rows = _rows(imgclf.verify(path))
    labels = {k: v for k, v in rows.items() if k.endswith(" label")}
    tops = [int(np.argmax(r["probabilities"])) for r in manifest_of(path.read_bytes())["probes"]]
    assert list(labels.values()) == [(True, f"class {t} {UNSORTED[t]!r} as at save time") for t in tops]


def test_label_checks_pass_at_zero_tolerance_when_nothing_changed(unsorted_file):
    """The saved class is compared with today's top-1 by ">=": equal values are no drift."""
    _, path = unsorted_file
    assert imgclf.verify(path, tolerance=0.0).ok


def test_verify_notices_a_relabelled_file(unsorted_file, tmp_path):
    """Class names re-sorted (manifest re-signed, probabilities untouched): the label checks fail."""
    _, path = unsorted_file
    relabelled = tmp_path / "relabelled.imgclf"
    relabelled.write_bytes(
        edit_manifest(path.read_bytes(), lambda m: m.update(class_names=sorted(m["class_names"])))
    )
    report = imgclf.verify(relabelled)
    assert not report.ok
    rows = _rows(report)
    assert all(rows[f"probe {i} (synthetic) output"][0] for i in range(4))  # same probabilities
    for i in range(4):
        ok, detail = rows[f"probe {i} (synthetic) label"]
        assert not ok and "but the probe was labelled" in detail and "class names reordered" in detail
    # every probe's top-1 is 'apple' (index 1); sorted, index 1 is 'mango'
    assert rows["probe 0 (synthetic) label"] == (
        False,
        "class 1 is named 'mango' in this file but the probe was labelled 'apple' at save time "
        "(class names reordered or renamed?)",
    )


def test_verify_notices_a_probe_that_now_gets_another_class(unsorted_file, tmp_path):
    _, path = unsorted_file

    def edit(m):
        label = m["probes"][1]["label"]
        label["index"] = (label["index"] + 1) % 3
        label["name"] = UNSORTED[label["index"]]

    edited = tmp_path / "other_class.imgclf"
    edited.write_bytes(edit_manifest(path.read_bytes(), edit))
    top = int(np.argmax(manifest_of(path.read_bytes())["probes"][1]["probabilities"]))
    saved = (top + 1) % 3
    assert _rows(imgclf.verify(edited))["probe 1 (synthetic) label"] == (
        False,
        f"the top-1 class is now {top} {UNSORTED[top]!r}, at save time class {saved} {UNSORTED[saved]!r}",
    )


def test_both_label_problems_are_reported_together(unsorted_file, tmp_path):
    _, path = unsorted_file

    def edit(m):
        m["probes"][0]["label"] = {"index": 2, "name": "kiwi"}

    edited = tmp_path / "both.imgclf"
    edited.write_bytes(edit_manifest(path.read_bytes(), edit))
    top = int(np.argmax(manifest_of(path.read_bytes())["probes"][0]["probabilities"]))
    assert _rows(imgclf.verify(edited))["probe 0 (synthetic) label"] == (
        False,
        f"the top-1 class is now {top} {UNSORTED[top]!r}, at save time class 2 'kiwi'; "
        "class 2 is named 'mango' in this file but the probe was labelled 'kiwi' at save time "
        "(class names reordered or renamed?)",
    )


def test_files_without_labels_still_load_and_verify_by_index(unsorted_file, tmp_path):
    """Files written before labels were recorded (e.g. tests/fixtures/golden_v1.imgclf) carry none."""
    _, path = unsorted_file

    def drop(m):
        for record in m["probes"]:
            del record["label"]

    old = tmp_path / "no_labels.imgclf"
    old.write_bytes(edit_manifest(path.read_bytes(), drop))
    report = imgclf.verify(old)
    assert report.ok
    top = int(np.argmax(manifest_of(path.read_bytes())["probes"][0]["probabilities"]))
    assert _rows(report)["probe 0 (synthetic) label"] == (
        True,
        f"class {top} {UNSORTED[top]!r} as at save time (the file records no label name: index only)",
    )


def test_a_file_without_labels_still_fails_when_the_top1_index_moves(unsorted_file, tmp_path):
    _, path = unsorted_file

    def edit(m):
        for record in m["probes"]:
            del record["label"]
        p = m["probes"][0]["probabilities"]
        top = int(np.argmax(p))
        p[top], p[(top + 1) % 3] = p[(top + 1) % 3], p[top]

    edited = tmp_path / "moved.imgclf"
    edited.write_bytes(edit_manifest(path.read_bytes(), edit))
    ok, detail = _rows(imgclf.verify(edited))["probe 0 (synthetic) label"]
    assert not ok and "the top-1 class is now" in detail


@pytest.mark.parametrize(
    "label",
    [
        {"index": 3, "name": "zebra"},
        {"index": -1, "name": "zebra"},
        {"index": True, "name": "zebra"},
        {"index": 0, "name": ""},
        {"index": 0, "name": 7},
        {"index": 0},
        {"index": 0, "name": "zebra", "extra": 1},
        [0, "zebra"],
    ],
)
def test_a_malformed_label_is_refused_at_load(unsorted_file, tmp_path, label):
    _, path = unsorted_file
    bad = tmp_path / "bad_label.imgclf"
    bad.write_bytes(edit_manifest(path.read_bytes(), lambda m: m["probes"][2].update(label=label)))
    with pytest.raises(ModelFileError, match=r"manifest field probes\[2\]\.label is malformed"):
        imgclf.load(bad)


def test_an_unknown_probe_field_is_still_refused(unsorted_file, tmp_path):
    _, path = unsorted_file
    bad = tmp_path / "unknown_field.imgclf"
    bad.write_bytes(edit_manifest(path.read_bytes(), lambda m: m["probes"][0].update(labels=1)))
    with pytest.raises(ModelFileError, match=r"manifest field probes\[0\] is malformed"):
        imgclf.load(bad)


def test_the_golden_v1_file_has_no_labels_and_its_label_checks_pass_by_index():
    golden = Path(__file__).resolve().parents[1] / "fixtures" / "golden_v1.imgclf"
    assert all("label" not in record for record in manifest_of(golden.read_bytes())["probes"])
    labels = [(ok, detail) for name, ok, detail in imgclf.verify(golden).checks if name.endswith(" label")]
    assert len(labels) == 4 and all(ok and "index only" in detail for ok, detail in labels)


def test_the_output_check_names_a_top1_change_only_when_there_is_one(unsorted_file, tmp_path):
    """Every probe's top-1 here is class 1, so a check that compared with class 0 would say it changed."""
    _, path = unsorted_file
    rows = _rows(imgclf.verify(path))
    for i in range(4):
        assert rows[f"probe {i} (synthetic) output"] == (
            True,
            "model output on the stored input: max |Δp| = 0 (tolerance 0.0001)",
        )

    def swap(m):
        p = m["probes"][2]["probabilities"]
        p[1], p[2] = p[2], p[1]

    edited = tmp_path / "swapped.imgclf"
    edited.write_bytes(edit_manifest(path.read_bytes(), swap))
    ok, detail = _rows(imgclf.verify(edited))["probe 2 (synthetic) output"]
    assert not ok and detail.endswith(" (tolerance 0.0001); the top-1 class changed")
