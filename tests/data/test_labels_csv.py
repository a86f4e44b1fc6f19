"""Labels from a CSV: columns, splits (given or drawn), errors with line numbers, path escapes, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli, save_image, shape_image, tiny_train_config
from imgclf.data.labels_csv import LABEL_DELIMITER, scan_labels_csv, scan_source, split_table
from imgclf.errors import DatasetError


def _images(root: Path, n: int, kind: str = "ring", sub: str = "img") -> list[str]:
    rng = np.random.default_rng(len(kind) + n)
    (root / sub).mkdir(parents=True, exist_ok=True)
    return [
        save_image(shape_image(kind, rng), root / sub / f"{kind}_{i:03d}.png", "RGB")
        .relative_to(root)
        .as_posix()
        for i in range(n)
    ]


def _write(root: Path, lines: list[str], name: str = "labels.csv") -> Path:
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def data(tmp_path) -> Path:
    rings, squares = _images(tmp_path, 10, "ring"), _images(tmp_path, 10, "square")
    return _write(tmp_path, ["path,label"] + [f"{p},ring" for p in rings] + [f"{p},square" for p in squares])


def test_a_csv_without_split_column_is_split_stratified_and_reproducibly(data):
    ds = scan_labels_csv(data, val_split=0.2, test_split=0.2, seed=3)
    assert ds.class_names == ["ring", "square"] and ds.layout == "csv" and not ds.multi_label
    assert ds.counts() == {
        "training": {"ring": 6, "square": 6},
        "validation": {"ring": 2, "square": 2},
        "testing": {"ring": 2, "square": 2},
    }
    again = scan_labels_csv(data, val_split=0.2, test_split=0.2, seed=3)
    assert split_table(again) == split_table(ds)
    other = scan_labels_csv(data, val_split=0.2, test_split=0.2, seed=4)
    assert split_table(other) != split_table(ds)
    assert split_table(ds).splitlines()[0] == "path,label,split"


def test_a_split_column_is_used_and_columns_may_be_in_any_order(tmp_path):
    rings, squares = _images(tmp_path, 3, "ring"), _images(tmp_path, 3, "square")
    rows = [f"train,{squares[0]},square", f"val,{squares[1]},square", f"TEST,{squares[2]},square"]
    rows += [f"training,{rings[0]},ring", f"validation,{rings[1]},ring", f"testing,{rings[2]},ring"]
    ds = scan_labels_csv(_write(tmp_path, ["Split,Image,Class", *rows]))
    assert {s: sum(c.values()) for s, c in ds.counts().items()} == {
        "training": 2,
        "validation": 2,
        "testing": 2,
    }


def test_every_problem_is_reported_with_its_line_number(tmp_path):
    rings = _images(tmp_path, 3, "ring")
    path = _write(
        tmp_path,
        [
            "path,label,split",
            f"{rings[0]},ring,train",
            f"{rings[1]},,train",  # line 3: empty label
            ",square,train",  # line 4: empty path
            "img/missing.png,square,train",  # line 5
            f"{rings[2]},ring,holdout",  # line 6: unknown split
            f"{rings[0]},square,train",  # line 7: relabelled duplicate
            "too,few",  # line 8
        ],
    )
    with pytest.raises(DatasetError) as info:
        scan_labels_csv(path)
    text = str(info.value)
    assert "has 6 problem(s)" in text
    for expected in (
        "line 3: empty label for 'img/ring_001.png'",
        "line 4: empty path",
        "line 5: file 'img/missing.png' does not exist",
        "line 6: unknown split 'holdout' (train, val or test)",
        "line 7: 'img/ring_000.png' is also on line 2 with another label or split",
        "line 8: 2 column(s), the header names 3",
    ):
        assert expected in text


@pytest.mark.parametrize("escape", ["../outside.png", "img/../../outside.png", "/etc/passwd"])
def test_paths_leaving_the_csv_folder_are_refused(escape, tmp_path):
    data = tmp_path / "data"
    rings, squares = _images(data, 2, "ring"), _images(data, 2, "square")
    _images(tmp_path, 1, "outside", sub=".")  # a real file just outside
    lines = ["path,label", *(f"{p},ring" for p in rings), *(f"{p},square" for p in squares), f"{escape},ring"]
    with pytest.raises(DatasetError, match=rf"line 6: path '{escape}' leaves the CSV's folder"):
        scan_labels_csv(_write(data, lines))


def test_an_absolute_path_inside_the_folder_is_accepted(tmp_path):
    rings, squares = _images(tmp_path, 2, "ring"), _images(tmp_path, 2, "square")
    lines = [
        "path,label",
        f"{tmp_path / rings[0]},ring",
        f"{rings[1]},ring",
        *(f"{p},square" for p in squares),
    ]
    assert (
        sum(scan_labels_csv(_write(tmp_path, lines), val_split=0, test_split=0).counts()["training"].values())
        == 4
    )


def test_repeated_rows_are_skipped_with_a_count_and_a_bad_header_is_line_1(tmp_path, data):
    lines = data.read_text().splitlines()
    ds = scan_labels_csv(_write(tmp_path, [*lines, lines[1], lines[2]]))
    assert "skipped 2 row(s) listing an image again with the same label" in ds.warnings
    with pytest.raises(DatasetError, match="line 1 of the labels file lacks a path or a label column"):
        scan_labels_csv(_write(tmp_path, ["name,kind", *lines[1:]], "bad.csv"))
    with pytest.raises(DatasetError, match="not valid CSV"):
        scan_labels_csv(_write(tmp_path, ["path,label", '"unclosed,ring'], "quote.csv"))


def test_multi_label_is_detected_from_the_delimiter(tmp_path):
    rings, squares = _images(tmp_path, 4, "ring"), _images(tmp_path, 4, "square")
    rows = [f"{p},ring" for p in rings] + [f"{p},square{LABEL_DELIMITER}ring" for p in squares]
    ds = scan_labels_csv(_write(tmp_path, ["path,labels", *rows]), val_split=0, test_split=0)
    assert ds.multi_label and ds.counts()["training"] == {"ring": 8, "square": 4}
    assert {s.labels for s in ds.splits["training"]} == {(0,), (0, 1)}


def test_reading_reports_progress_in_bytes(data):
    seen: list[int] = []
    scan_source(data, progress=lambda what, total: seen.append(total) or seen.append)
    assert seen[0] == data.stat().st_size and sum(seen[1:]) == data.stat().st_size


def test_training_from_a_csv_records_the_csv_the_split_and_a_fingerprint(data, tmp_path):
    import imgclf
    from imgclf.training.pipeline import resume_run, train

    model = tmp_path / "m.imgclf"
    result = train(data, model, tiny_train_config(epochs=1))
    run = Path(result.run_dir)
    record = (run / "run.json").read_text()
    assert str(data) in record
    assert (run / "split.csv").read_text() == split_table(scan_labels_csv(data, seed=1))
    fingerprint = imgclf.load(model).manifest["provenance"]["data"]["fingerprint"]
    resume_run(run, epochs=2)  # the run record names the CSV: resuming reads it again
    assert imgclf.load(model).manifest["provenance"]["data"]["fingerprint"] == fingerprint
    code, out, err = run_cli(
        "train",
        "--labels",
        data,
        "--model",
        tmp_path / "c.imgclf",
        "--epochs",
        "1",
        "--arch",
        "small_cnn",
        "--size",
        "32",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert "class counts, training:" in err
