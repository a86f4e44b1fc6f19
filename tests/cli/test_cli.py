"""Tests of the imgclf command line: outputs, exit codes, one-line errors, stdout/stderr discipline.

Commands run in-process through ``cli.main.main`` (fast); a real subprocess is used where the exit status
of a fresh process is the point.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgclf
from helpers import flip, make_dataset, run_cli

TINY = [
    "--arch",
    "small_cnn",
    "--arch-arg",
    "widths=[8,16]",
    "--size",
    "32",
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--precision",
    "fp32",
    "--device",
    "cpu",
]
CLASSES = ["ring", "square"]
WEIRD = "bad\x1b[31mname"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("imgclf: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``imgclf train`` on a tiny dataset, once for this module: (dataset, model, code, stdout, stderr)."""
    base = tmp_path_factory.mktemp("cli")
    dataset = make_dataset(base / "data", {"training": 12, "validation": 4, "testing": 6})
    model = base / "tiny.imgclf"
    code, out, err = run_cli("train", "--dataset", dataset, "--model", model, *TINY)
    return dataset, model, code, out, err


@pytest.fixture(scope="module")
def testing_images(trained) -> list[str]:
    return sorted(str(p) for p in (trained[0] / "testing").rglob("*") if p.is_file())


# --- train -------------------------------------------------------------------------------------------------


def test_train_writes_the_model_and_the_run_folder(trained):
    _, model, code, _, err = trained
    assert code == 0, err
    run_dir = model.with_name("tiny-run")
    for name in ("plot.png", "history.json", "history.csv", "report.txt", "report.json"):
        assert (run_dir / name).is_file(), name
    assert imgclf.inspect(model)["class_names"] == CLASSES
    with Image.open(run_dir / "plot.png") as plot:
        assert plot.format == "PNG" and plot.size[0] >= 400
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(row)
        assert all(np.isfinite(row[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy"))
    with open(run_dir / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row, record in zip(rows, history, strict=True):
        for key in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(row[key]) == pytest.approx(record[key])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["class_names"] == CLASSES
    assert report["report"]["macro avg"]["support"] == 12


def test_train_prints_only_the_classification_report_on_stdout(trained):
    _, model, code, out, err = trained
    assert code == 0
    report_txt = model.with_name("tiny-run").joinpath("report.txt").read_text()
    assert out == report_txt
    assert out.splitlines()[0].split() == ["precision", "recall", "f1-score", "support"]
    assert "epoch" not in out and "wrote" not in out
    assert "epoch" in err and "wrote model" in err  # progress and notes go to stderr


def test_train_records_the_recipe_flags_in_the_model(trained):
    info = imgclf.inspect(trained[1])
    assert info["architecture"] == {"name": "small_cnn", "args": {"widths": [8, 16], "reg": 0.0001}}
    assert (info["preprocess"]["height"], info["preprocess"]["width"]) == (32, 32)
    assert info["training"]["epochs"] == 2 and info["training"]["batch_size"] == 8


# --- predict -----------------------------------------------------------------------------------------------

LINE = re.compile(r"^(?P<path>[^\t]+)\t(?P<label>[^\t]+)\t(?P<conf>\d\.\d{4})$")


def test_predict_stdout_is_one_tab_separated_line_per_image(trained, testing_images):
    _, model, *_ = trained
    folder = trained[0] / "testing"
    code, out, err = run_cli("predict", "--model", model, "--images", folder, "--top-k", "1")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == len(testing_images)
    expected = imgclf.load(model).predict(testing_images)
    for line, pred in zip(lines, expected, strict=True):
        m = LINE.match(line)
        assert m, repr(line)
        assert (m["path"], m["label"], m["conf"]) == (pred.source, pred.label, f"{pred.confidence:.4f}")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["path", "label", "confidence", *CLASSES, "error"]
        return list(reader)


def test_predict_writes_csv_rows_with_probabilities(trained, testing_images, tmp_path):
    _, model, *_ = trained
    out_csv = tmp_path / "preds.csv"
    code, _, _ = run_cli("predict", "--model", model, "--images", *testing_images, "--output", out_csv)
    assert code == 0
    rows = _read_csv(out_csv)
    assert [r["path"] for r in rows] == testing_images
    clf = imgclf.load(model)
    for row, probs in zip(rows, clf.predict_proba(testing_images), strict=True):
        p = np.array([float(row[c]) for c in CLASSES])
        assert abs(p.sum() - 1) <= 1e-6
        assert row["label"] == CLASSES[int(p.argmax())]
        assert float(row["confidence"]) == p.max()
        assert row["error"] == ""
        assert p.tolist() == probs.tolist()  # exact: the file keeps every digit


def test_predict_writes_jsonl_rows(trained, testing_images, tmp_path):
    _, model, *_ = trained
    out_jsonl = tmp_path / "preds.jsonl"
    folder = trained[0] / "testing"
    code, _, _ = run_cli("predict", "--model", model, "--images", folder, "--output", out_jsonl)
    assert code == 0
    rows = [json.loads(line) for line in out_jsonl.read_text(encoding="utf-8").splitlines()]
    assert [r["path"] for r in rows] == testing_images
    for r in rows:
        assert set(r) == {"path", "label", "confidence", "probabilities"}
        assert list(r["probabilities"]) == CLASSES
        assert abs(sum(r["probabilities"].values()) - 1) <= 1e-6
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
        assert r["confidence"] == r["probabilities"][r["label"]]


def test_predict_top_k_2_lists_the_runner_up(trained, tmp_path):
    _, model, *_ = trained
    out_jsonl = tmp_path / "preds.jsonl"
    folder = trained[0] / "testing"
    code, out, _ = run_cli(
        "predict", "--model", model, "--images", folder, "--top-k", "2", "--output", out_jsonl
    )
    assert code == 0
    for line in out.splitlines():
        path, label, conf, runner_up = line.split("\t")
        other, p = runner_up.split(":")
        assert {label, other} == set(CLASSES)
        assert float(conf) >= float(p) and abs(float(conf) + float(p) - 1) <= 2e-4
    for r in map(json.loads, out_jsonl.read_text().splitlines()):
        top = r["top_k"]
        assert [t["label"] for t in top] == [r["label"], next(c for c in CLASSES if c != r["label"])]
        assert top[0]["probability"] >= top[1]["probability"]
        assert top[0]["probability"] == r["confidence"]


def _predicted_paths(model, images, *extra) -> list[str]:
    code, out, _ = run_cli("predict", "--model", model, "--images", *images, *extra)
    assert code == 0
    return [line.split("\t")[0] for line in out.splitlines()]


def test_predict_sample_is_seeded(trained, testing_images):
    _, model, *_ = trained
    folder = [trained[0] / "testing"]
    first = _predicted_paths(model, folder, "--sample", "3", "--seed", "1")
    assert len(first) == len(set(first)) == 3 and set(first) <= set(testing_images)
    assert _predicted_paths(model, folder, "--sample", "3", "--seed", "1") == first
    others = [_predicted_paths(model, folder, "--sample", "3", "--seed", str(s)) for s in range(2, 6)]
    assert any(o != first for o in others)  # the seed is really used
    assert len(_predicted_paths(model, folder, "--sample", "100")) == len(testing_images)


def test_predict_montage_of_16_samples_is_512_square(trained, tmp_path):
    dataset, model, *_ = trained
    montage = tmp_path / "montage.png"
    code, out, err = run_cli(
        "predict",
        "--model",
        model,
        "--images",
        dataset / "testing",
        dataset / "validation",
        "--sample",
        "16",
        "--montage",
        montage,
    )
    assert code == 0 and len(out.splitlines()) == 16
    with Image.open(montage) as img:
        assert img.format == "PNG" and img.size == (512, 512)
    assert "16 tiles" in err


def test_predict_montage_shows_at_most_16_images_and_says_so(trained, testing_images, tmp_path):
    _, model, *_ = trained
    many = [*testing_images, *testing_images][:20]
    assert len(many) == 20
    montage = tmp_path / "montage.png"
    code, out, err = run_cli("predict", "--model", model, "--images", *many, "--montage", montage)
    assert code == 0 and len(out.splitlines()) == 20  # every image is still classified
    with Image.open(montage) as img:
        assert img.size == (512, 512)
    assert "(16 tiles; the first 16 of 20 images, use --sample to pick)" in err


def test_interrupted_predict_leaves_the_previous_output_file_and_no_temporary(
    trained, testing_images, tmp_path, monkeypatch
):
    _, model, *_ = trained
    out_csv = tmp_path / "preds.csv"
    out_csv.write_text("previous results\n")
    original = imgclf.Classifier.iter_predict

    def interrupted(self, *args, **kwargs):
        for i, p in enumerate(original(self, *args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield p

    monkeypatch.setattr(imgclf.Classifier, "iter_predict", interrupted)
    code, out, _ = run_cli("predict", "--model", model, "--images", *testing_images, "--output", out_csv)
    assert code == 130 and len(out.splitlines()) == 2  # what was classified was printed
    assert out_csv.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv"]


def test_a_live_progress_bar_leaves_stdout_alone():
    import io

    from rich.console import Console

    from imgclf.progress import bar

    before = sys.stdout
    progress = bar(Console(file=io.StringIO(), force_terminal=True), "classifying", 10)
    try:
        assert sys.stdout is before  # results printed meanwhile still go to stdout, not to the bar
    finally:
        progress.stop()


@pytest.fixture
def images_with_a_corrupt_one(trained, tmp_path) -> tuple[Path, Path, list[str]]:
    folder = tmp_path / "images"
    shutil.copytree(trained[0] / "testing", folder)
    bad = folder / "ring" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    good = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p != bad)
    return folder, bad, good


def test_predict_with_a_corrupt_image_classifies_the_others_and_exits_4(
    trained, images_with_a_corrupt_one, tmp_path
):
    _, model, *_ = trained
    folder, bad, good = images_with_a_corrupt_one
    out_csv = tmp_path / "preds.csv"
    code, out, err = run_cli("predict", "--model", model, "--images", folder, "--output", out_csv)
    assert code == 4
    assert "Traceback" not in err
    assert all(line.startswith("imgclf: ") for line in err.splitlines())
    naming = [line for line in err.splitlines() if str(bad) in line]
    assert len(naming) == 1 and naming[0].startswith("imgclf: error: ")
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == good
    rows = _read_csv(out_csv)
    assert len(rows) == len(good) + 1
    bad_rows = [r for r in rows if r["path"] == str(bad)]
    assert len(bad_rows) == 1 and bad_rows[0]["label"] == "" and bad_rows[0]["error"]
    assert sorted(r["path"] for r in rows if not r["error"]) == good


def test_predict_partial_failure_exit_status_in_a_fresh_process(trained, images_with_a_corrupt_one):
    _, model, *_ = trained
    folder, bad, good = images_with_a_corrupt_one
    argv = [sys.executable, "-m", "imgclf", "predict", "--model", str(model), "--images", str(folder)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 4, proc.stderr
    assert len(proc.stdout.splitlines()) == len(good) and str(bad) not in proc.stdout
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr


def test_a_reader_that_goes_away_ends_predict_quietly_in_a_fresh_process(trained, testing_images):
    _, model, *_ = trained
    argv = [sys.executable, "-m", "imgclf", "predict", "--model", str(model), "--images", *testing_images]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # like `imgclf predict ... | head -0`
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "error" not in err


def test_the_console_script_entry_flushes_results_and_keeps_the_exit_code(trained, testing_images, tmp_path):
    _, model, *_ = trained
    code = "import sys; from imgclf.cli.main import run; sys.argv[0] = 'imgclf'; run()"
    ok = subprocess.run(
        [sys.executable, "-c", code, "predict", "--model", str(model), "--images", *testing_images],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == len(testing_images)
    missing = subprocess.run(
        [sys.executable, "-c", code, "inspect", str(tmp_path / "nope.imgclf")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 3 and missing.stderr.startswith("imgclf: error: ")


# --- dataset errors through train ---------------------------------------------------------------------------


def _missing(tmp: Path) -> tuple[Path, str]:
    return tmp / "nope", "does not exist"


def _a_file(tmp: Path) -> tuple[Path, str]:
    (tmp / "file.txt").write_text("x")
    return tmp / "file.txt", "not a folder"


def _empty(tmp: Path) -> tuple[Path, str]:
    (tmp / "empty").mkdir()
    return tmp / "empty", "empty"


def _one_class(tmp: Path) -> tuple[Path, str]:
    return make_dataset(tmp / "d", {"training": 2}, classes=("ring",)), "need at least 2"


def _empty_class(tmp: Path) -> tuple[Path, str]:
    root = make_dataset(tmp / "d", {"": 3})
    (root / "triangle").mkdir()
    return root, "triangle' is empty"


def _classes_differ(tmp: Path) -> tuple[Path, str]:
    root = make_dataset(tmp / "d", {"training": 2, "testing": 1})
    make_dataset(root, {"testing": 1}, classes=("zebra",))
    return root, "zebra"


@pytest.mark.parametrize("build", [_missing, _a_file, _empty, _one_class, _empty_class, _classes_differ])
def test_dataset_errors_exit_7_with_one_line(build, tmp_path):
    dataset, mention = build(tmp_path)
    model = tmp_path / "m.imgclf"
    code, out, err = run_cli("train", "--dataset", dataset, "--model", model, *TINY)
    assert code == 7
    line = _one_error_line(err)
    assert mention in line
    assert out == "" and not model.exists()


@pytest.fixture
def dataset_with_a_corrupt_image(trained, tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    shutil.copytree(trained[0], root)
    bad = root / "training" / "square" / "square_999.png"
    bad.write_bytes(b"GIF89a but not really")
    return root, bad


def test_a_corrupt_training_image_is_listed_before_training(dataset_with_a_corrupt_image, tmp_path):
    root, bad = dataset_with_a_corrupt_image
    code, out, err = run_cli("train", "--dataset", root, "--model", tmp_path / "m.imgclf", *TINY)
    assert code == 7 and out == ""
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("imgclf: error: ") and str(bad) in errors[0]
    assert "--skip-bad" in errors[0] and "Traceback" not in err
    assert "epoch" not in err  # refused before the first epoch
    assert not (tmp_path / "m.imgclf").exists()


def test_skip_bad_trains_without_the_corrupt_image_and_says_so(dataset_with_a_corrupt_image, tmp_path):
    root, bad = dataset_with_a_corrupt_image
    model = tmp_path / "m.imgclf"
    code, out, err = run_cli("train", "--dataset", root, "--model", model, *TINY, "--skip-bad")
    assert code == 0, err
    assert any("skipped" in line and str(bad) in line for line in err.splitlines())
    assert str(bad) not in out
    info = imgclf.inspect(model)
    assert info["data"]["skipped"] == 1 and info["data"]["counts"]["training"] == {"ring": 12, "square": 12}


# --- usage, model-file and I/O errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "--bogus"],
        ["predict", "--images", "x.png"],  # missing --model
        ["train", "--dataset", "d", "--model", "m.imgclf", "--size", "abc"],
        ["train", "--dataset", "d", "--model", "m.imgclf", "--size", "1x2x3"],
        ["frobnicate"],
        [],
    ],
)
def test_argparse_usage_errors_exit_2_with_one_line_on_stderr(args):
    code, out, err = run_cli(*args)
    assert code == 2
    assert out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("imgclf") and ": error: " in err
    assert err.rstrip().endswith("--help")


@pytest.mark.parametrize(
    "args,suggestion",
    [
        (["train", "--datset", "cells"], "(did you mean --dataset?)"),
        (["train", "--dataset", "d", "--model", "m", "--epoch", "3"], "(did you mean --epochs?)"),
        (["predict", "--model", "m", "--images", "x", "--top", "2"], "(did you mean --top-k?)"),
    ],
)
def test_mistyped_and_abbreviated_flags_get_a_suggestion_not_a_guess(args, suggestion):
    code, out, err = run_cli(*args)
    assert code == 2 and out == ""
    assert (
        err == f"imgclf {args[0]}: error: unrecognized arguments: {args[-2]} {args[-1]} {suggestion}; "
        f"see imgclf {args[0]} --help\n"
    )


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_mistyped_required_flag_gets_a_suggestion_too(command):
    other = ["--images", "x"] if command == "predict" else ["--dataset", "d"]
    code, out, err = run_cli(command, "--mdoel", "m.imgclf", *other)
    assert code == 2 and out == ""
    assert err == (
        f"imgclf {command}: error: the following arguments are required: --model/-m (unrecognized --mdoel: "
        f"did you mean --model?); see imgclf {command} --help\n"
    )


@pytest.mark.parametrize("extra", [["--size", "0"], ["--epochs", "0"], ["--arch-arg", "widths=oops"]])
def test_bad_setting_values_exit_2_with_one_line(extra, trained, tmp_path):
    model = tmp_path / "m.imgclf"
    code, out, err = run_cli("train", "--dataset", trained[0], "--model", model, *TINY, *extra)
    assert code == 2
    _one_error_line(err)
    assert out == "" and not model.exists()


@pytest.mark.parametrize("args", [["--top-k", "0"], ["--sample", "0"], ["--output", "preds.txt"]])
def test_bad_predict_values_exit_2(args, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("predict", "--model", trained[1], "--images", trained[0] / "testing", *args)
    assert code == 2
    _one_error_line(err)
    assert out == ""  # refused before classifying anything
    assert not (tmp_path / "preds.txt").exists()


def test_a_missing_images_path_is_a_usage_error_with_one_line(trained, tmp_path):
    good = trained[0] / "testing"
    code, out, err = run_cli("predict", "-m", trained[1], "--images", good, tmp_path / "nope.png")
    assert code == 2 and out == ""
    assert "--images names 1 path(s) that do not exist" in _one_error_line(err) and "nope.png" in err


def test_train_into_a_missing_folder_exits_5_before_training(trained, tmp_path):
    model = tmp_path / "no" / "m.imgclf"
    code, _, err = run_cli("train", "--dataset", trained[0], "--model", model, *TINY)
    assert code == 5
    assert "does not exist" in _one_error_line(err)


def _model_args(command: str, model: Path, dataset: Path) -> list:
    return {
        "predict": ["predict", "--model", model, "--images", dataset / "testing"],
        "evaluate": ["evaluate", "--model", model, "--dataset", dataset],
        "inspect": ["inspect", model],
        "verify": ["verify", model],
    }[command]


@pytest.mark.parametrize("command", ["predict", "evaluate", "inspect", "verify"])
@pytest.mark.parametrize("kind", ["missing", "text", "folder", "truncated"])
def test_bad_model_path_exits_3_with_one_line(command, kind, trained, tmp_path):
    model = tmp_path / "model.imgclf"
    if kind == "text":
        model.write_text("not a model at all\n")
    elif kind == "folder":
        model.mkdir()
    elif kind == "truncated":
        model.write_bytes(trained[1].read_bytes()[:-100])
    code, out, err = run_cli(*_model_args(command, model, trained[0]))
    assert code == 3
    assert str(model) in _one_error_line(err)
    assert out == ""


def test_a_tampered_model_fails_verification_with_exit_3(trained, tmp_path):
    model = tmp_path / "tampered.imgclf"
    model.write_bytes(flip(trained[1].read_bytes(), -5))  # one bit of weight data
    code, _, err = run_cli("verify", model)
    assert code == 3
    assert "integrity" in _one_error_line(err)


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, tmp_path):
    args = ["inspect", tmp_path / "missing.imgclf"]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    code, _, err = run_cli(*args)
    assert code == 3
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("imgclf: error: ")


def test_without_debug_there_is_no_traceback(tmp_path):
    code, _, err = run_cli("inspect", tmp_path / "missing.imgclf")
    assert code == 3
    _one_error_line(err)


def test_main_leaves_warnings_showwarning_as_it_was(trained):
    before = warnings.showwarning
    run_cli("inspect", trained[1])
    run_cli("inspect", "missing.imgclf")
    assert warnings.showwarning is before


# --- evaluate, inspect, verify -----------------------------------------------------------------------------


def test_evaluate_reproduces_the_training_report(trained):
    dataset, model, *_ = trained
    run_dir = model.with_name("tiny-run")
    code, out, err = run_cli("evaluate", "--model", model, "--dataset", dataset)
    assert code == 0, err
    assert out == (run_dir / "report.txt").read_text()
    accuracy_line = next(line for line in out.splitlines() if line.strip().startswith("accuracy"))
    accuracy = float(accuracy_line.split()[1])
    training_report = json.loads((run_dir / "report.json").read_text())
    assert accuracy == round(training_report["report"]["accuracy"], 4)


def test_evaluate_json_parses_and_equals_the_training_report_json(trained, tmp_path):
    dataset, model, *_ = trained
    out_json = tmp_path / "eval.json"
    code, out, _ = run_cli("evaluate", "--model", model, "--dataset", dataset, "--json", "--output", out_json)
    assert code == 0
    result = json.loads(out)
    training = json.loads(model.with_name("tiny-run").joinpath("report.json").read_text())
    assert result == training
    assert result["report"]["accuracy"] == training["report"]["accuracy"]
    assert json.loads(out_json.read_text()) == result


def test_evaluate_with_a_class_the_model_does_not_know_exits_7(trained, tmp_path):
    dataset = make_dataset(tmp_path / "other", {"": 2}, classes=("ring", "triangle"))
    code, out, err = run_cli("evaluate", "--model", trained[1], "--dataset", dataset)
    assert code == 7 and out == ""
    assert "triangle" in _one_error_line(err)


def test_evaluate_confusion_plot(trained, tmp_path):
    plot = tmp_path / "cm.png"
    code, _, _ = run_cli("evaluate", "--model", trained[1], "--dataset", trained[0], "--confusion-plot", plot)
    assert code == 0
    with Image.open(plot) as img:
        assert img.format == "PNG"


def test_evaluate_checks_its_outputs_before_evaluating(trained, tmp_path, monkeypatch):
    dataset, model, *_ = trained
    for flag in ("--output", "--confusion-plot"):
        code, out, err = run_cli(
            "evaluate", "--model", model, "--dataset", dataset, flag, tmp_path / "missing" / "x"
        )
        assert code == 5 and out == ""
        _one_error_line(err)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the optional plotting dependency is absent
    code, out, err = run_cli(
        "evaluate", "--model", model, "--dataset", dataset, "--confusion-plot", tmp_path / "cm.png"
    )
    assert code == 2 and out == ""
    assert "matplotlib" in _one_error_line(err)


def test_train_without_matplotlib_still_succeeds(trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    model = tmp_path / "m.imgclf"
    code, out, err = run_cli("train", "--dataset", trained[0], "--model", model, *TINY)
    assert code == 0, err
    assert "matplotlib" in err and out.startswith(" " * 14 + "precision")
    assert model.is_file() and not (tmp_path / "m-run" / "plot.png").exists()


def test_inspect_text_and_json(trained):
    _, model, *_ = trained
    code, out, _ = run_cli("inspect", model)
    assert code == 0
    assert "classes         2: ring, square" in out and "small_cnn" in out and "32x32" in out
    code, out, _ = run_cli("inspect", model, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["class_names"] == CLASSES
    assert info["architecture"]["name"] == "small_cnn"
    assert info["preprocess"]["height"] == info["preprocess"]["width"] == 32
    assert info["format_version"] == 2 and info["format"] == "imgclf"


def test_inspect_on_a_training_checkpoint_says_what_it_is_and_how_to_get_a_model(trained):
    run_dir = trained[1].with_name("tiny-run")
    checkpoint = sorted((run_dir / "checkpoints").glob("*.safetensors"))[-1]
    code, out, err = run_cli("inspect", checkpoint)
    assert code == 3 and out == ""
    line = _one_error_line(err)
    assert "it is an imgclf training checkpoint" in line and "not written by imgclf" not in line
    assert f"imgclf train --resume {run_dir}" in line


def test_verify_passes_on_a_fresh_model(trained):
    code, out, err = run_cli("verify", trained[1])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1].startswith("verified")
    assert all(line.startswith("ok") for line in lines[:-1]) and len(lines) > 3


def test_one_convention_model_and_output_flags_with_the_old_spellings_kept(trained, tmp_path):
    model = trained[1]
    for command in ("inspect", "verify"):
        by_flag, by_position = run_cli(command, "--model", model), run_cli(command, model)
        assert by_flag[0] == 0 and by_flag == by_position
        assert run_cli(command, "-m", model) == by_flag
        code, out, err = run_cli(command)
        assert code == 2 and out == "" and f"imgclf {command} needs one model file" in _one_error_line(err)
    code, out, _ = run_cli("demo-data", "--output", tmp_path / "a", "--scale", "0.01")
    assert code == 0 and (tmp_path / "a" / "training").is_dir()
    assert run_cli("demo-data", tmp_path / "b", "--scale", "0.01")[0] == 0  # positional kept
    from imgclf.cli.main import parse

    assert parse(["demo", "--out", "x"]).out == parse(["demo", "-o", "x"]).out == "x"
    assert "{training,validation,testing,all}" in run_cli("evaluate", "--help")[1]


def test_verify_and_predict_json_put_machine_readable_results_on_stdout(trained, testing_images):
    code, out, _ = run_cli("verify", "--model", trained[1], "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["path"] == str(trained[1])
    assert all(c["ok"] for c in report["checks"]) and {"check", "ok", "detail"} == set(report["checks"][0])
    code, out, _ = run_cli("predict", "--model", trained[1], "--images", *testing_images[:3], "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["path"] for r in rows] == testing_images[:3]
    assert all(r["label"] in CLASSES and set(r["probabilities"]) == set(CLASSES) for r in rows)


# --- control characters in class names -------------------------------------------------------------------


@pytest.fixture(scope="module")
def weird(tmp_path_factory):
    if sys.platform == "win32":
        pytest.skip("Windows folder names cannot hold control characters")
    """A model whose first class folder name holds an ANSI escape sequence."""
    base = tmp_path_factory.mktemp("weird")
    root = make_dataset(base / "data", {"training": 8, "validation": 2, "testing": 2})
    for split in ("training", "validation", "testing"):
        (root / split / "ring").rename(root / split / WEIRD)
    model = base / "weird.imgclf"
    code, out, err = run_cli("train", "--dataset", root, "--model", model, *TINY)
    assert code == 0, err
    return root, model, out


def test_control_characters_in_class_names_are_escaped_on_the_terminal(weird):
    root, model, train_out = weird
    assert imgclf.inspect(model)["class_names"] == [WEIRD, "square"]
    outputs = {"train": train_out}
    for name, args in {
        "predict": ["predict", "--model", model, "--images", root / "testing", "--top-k", "2"],
        "evaluate": ["evaluate", "--model", model, "--dataset", root],
        "inspect": ["inspect", model],
    }.items():
        code, out, err = run_cli(*args)
        assert code == 0, err
        outputs[name] = out + err
    for name, text in outputs.items():
        assert "\x1b" not in text, name
    assert "bad\\x1b[31mname" in outputs["predict"] and "bad\\x1b[31mname" in outputs["inspect"]


def test_control_characters_in_class_names_keep_json_valid(weird, tmp_path):
    root, model, _ = weird
    jsonl = tmp_path / "preds.jsonl"
    code, _, _ = run_cli("predict", "--model", model, "--images", root / "testing", "--output", jsonl)
    assert code == 0
    assert "\x1b" not in jsonl.read_text(encoding="utf-8")
    for r in map(json.loads, jsonl.read_text(encoding="utf-8").splitlines()):
        assert list(r["probabilities"]) == [WEIRD, "square"] and r["label"] in (WEIRD, "square")
    for args in (["inspect", model, "--json"], ["evaluate", "--model", model, "--dataset", root, "--json"]):
        code, out, _ = run_cli(*args)
        assert code == 0 and "\x1b" not in out
        assert json.loads(out)["class_names"] == [WEIRD, "square"]
