"""Hardening of the command line: exit codes and one-line messages for machine limits, paths through a
file, leftovers after a refusal; CSV injection, closed or full output streams, control characters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_dataset, run_cli, tiny_train_config
from imgclf.errors import StorageError
from imgclf.fileio.writing import check_writable

# --- item 9: a parent path that is a file -----------------------------------------------------------


def test_check_writable_says_a_parent_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target in (afile / "m.imgclf", afile / "sub" / "deeper" / "m.imgclf"):
        with pytest.raises(StorageError) as info:
            check_writable(target, "model file")
        text = str(info.value)
        assert text.startswith(
            f"a parent of the model file path is a file, not a folder; received {afile} (in"
        )
        assert "mkdir" not in text


def test_predict_output_under_a_file_is_exit_5_without_mkdir_advice(tiny_model, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    images = tiny_model.dataset / "testing"
    code, out, err = run_cli(
        "predict", "--model", tiny_model.model_path, "--images", images, "--output", afile / "p.csv"
    )
    assert code == 5 and out == ""
    assert "is a file, not a folder" in err and "mkdir" not in err and err.count("\n") == 1


# --- item 10: machine limits are not internal errors ------------------------------------------------


@pytest.mark.parametrize(
    "exc, code, start",
    [
        (MemoryError(), 9, "imgclf: error: out of memory; received MemoryError"),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried"
            ),
            9,
            "imgclf: error: out of memory; received RuntimeError",
        ),
        (RecursionError("maximum recursion depth exceeded"), 2, "imgclf: error: input nested too deeply"),
    ],
    ids=["MemoryError", "DefaultCPUAllocator", "RecursionError"],
)
def test_limits_map_to_documented_exit_codes(tiny_model, monkeypatch, exc, code, start) -> None:
    def fail(*_a, **_k):
        raise exc

    monkeypatch.setattr("imgclf.modelfile.inspect", fail)
    got, out, err = run_cli("inspect", tiny_model.model_path)
    assert (got, out) == (code, "")
    assert err.startswith(start) and err.count("\n") == 1 and "please report" not in err, err


def test_deep_json_in_an_arch_arg_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run_cli(
        "train", "--dataset", tmp_path, "--model", tmp_path / "m", "--arch-arg", "w=" + "[" * 100_000
    )
    assert code == 2 and "nested too deeply" in err and err.count("\n") == 1, err


def test_memory_for_decoding_is_estimated_before_training(tmp_path: Path, monkeypatch) -> None:
    from imgclf.errors import OutOfMemory
    from imgclf.training import job, pipeline

    data = make_dataset(tmp_path / "d", {"training": 3, "validation": 1, "testing": 1})
    monkeypatch.setattr(job, "available_bytes", lambda device: 10_000)
    monkeypatch.setattr(job, "decode_splits", lambda *a, **k: pytest.fail("decoding started"))
    with pytest.raises(
        OutOfMemory, match=r"^not enough memory for the decoded images; received 10 images of 32x32"
    ):
        pipeline.train(data, tmp_path / "m.imgclf", tiny_train_config(), use_cache=False)
    assert OutOfMemory.exit_code == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# --- item 12: no empty MODEL-run/ after a refusal ---------------------------------------------------


def test_a_refused_dataset_leaves_no_run_folder(tmp_path: Path) -> None:
    from imgclf.errors import DatasetError
    from imgclf.training.pipeline import train

    data = make_dataset(tmp_path / "d", {"training": 3, "validation": 1, "testing": 1})
    (data / "training" / "ring" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="not readable images"):
        train(data, tmp_path / "m.imgclf", tiny_train_config())
    assert list(tmp_path.iterdir()) == [tmp_path / "d"]


def test_a_disk_space_refusal_leaves_no_run_folder_but_keeps_an_existing_one(
    tmp_path: Path, monkeypatch
) -> None:
    from imgclf.training import job, pipeline

    def refuse(*_a):
        raise StorageError("not enough free disk space")

    monkeypatch.setattr(job, "check_free_space", refuse)
    data = make_dataset(tmp_path / "d", {"training": 2, "validation": 1, "testing": 1})
    with pytest.raises(StorageError):
        pipeline.train(data, tmp_path / "m.imgclf", tiny_train_config())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(StorageError):
        pipeline.train(data, tmp_path / "m.imgclf", tiny_train_config(), run_dir=mine)
    assert mine.is_dir()  # a folder the user made is theirs
    shutil.rmtree(mine)


# --- item 4: CSV formula injection ------------------------------------------------------------------

FORMULA_CLASSES = ('=HYPERLINK("http://x","y")', "+cmd", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "plain")


def test_csv_output_neutralises_formulas_and_jsonl_stays_raw(tiny_model, tmp_path: Path) -> None:
    import csv
    import json

    from helpers import make_classifier
    from imgclf.modelfile import save

    model = tmp_path / "f.imgclf"
    save(make_classifier(FORMULA_CLASSES), model)
    folder = tmp_path / "imgs"
    folder.mkdir()
    source = next((tiny_model.dataset / "testing" / "ring").glob("*.png"))
    for name in ("=1+1.png", "+a.png", "-b.png", "@c.png", "ok.png"):
        shutil.copy(source, folder / name)
    (folder / "=broken.png").write_bytes(b"not an image")
    code, _, _ = run_cli("predict", "--model", model, "--images", folder, "--output", tmp_path / "p.csv")
    assert code == 4
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    cells = [c for row in rows for c in row]
    dangerous = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert dangerous == [], dangerous
    assert "'" + FORMULA_CLASSES[0] in rows[0] and "plain" in rows[0]
    names = {os.path.basename(r[0].lstrip("'")) for r in rows[1:]}
    assert names == {"=1+1.png", "+a.png", "-b.png", "@c.png", "ok.png", "=broken.png"}
    assert all(
        r[1] in ("", *("'" + c if c[0] in "=+-@\t\r" else c for c in FORMULA_CLASSES)) for r in rows[1:]
    )
    code, _, _ = run_cli("predict", "--model", model, "--images", folder, "--output", tmp_path / "p.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {os.path.basename(r["path"]) for r in lines} == names
    assert {r["label"] for r in lines if "label" in r} <= set(FORMULA_CLASSES)


# --- item 8: control characters in report tables ----------------------------------------------------


def test_a_newline_in_a_class_name_stays_on_one_table_row() -> None:
    from imgclf.cli.output import report_text
    from imgclf.reports import format_report

    row = {"precision": 1.0, "recall": 0.5, "f1-score": 0.6667, "support": 2}
    report = {"ri\nng": row, "sq\x1b[31muare": row, "accuracy": 0.5, "macro avg": row, "weighted avg": row}
    for text in (format_report(report), report_text(report) + "\n"):
        lines = text.rstrip("\n").split("\n")
        assert len(lines) == 8, text
        assert lines[2].strip().startswith("ri\\nng") and lines[3].strip().startswith("sq\\x1b[31muare")
        assert len({len(line) for line in lines if line}) == 1  # columns still aligned


# --- item 5: closed, broken and full output streams -------------------------------------------------


def cli(args: list, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    return subprocess.run([sys.executable, "-m", "imgclf", *map(str, args)], env=env, timeout=120, **kwargs)


def test_a_closed_stdout_pipe_keeps_the_output_file(tiny_model, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    args = ["predict", "--model", tiny_model.model_path, "--images", tiny_model.dataset / "testing"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgclf", *map(str, args), "--output", out, "--batch-size", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # `| head -0`: the reader is gone before the first result
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""
    assert len(out.read_text().splitlines()) == 1 + 12  # header + every testing image


def test_stdout_on_a_full_disk_is_exit_5_with_one_line(tiny_model) -> None:
    with open("/dev/full", "w") as full:
        res = cli(["inspect", tiny_model.model_path], stdout=full, stderr=subprocess.PIPE, text=True)
    assert res.returncode == 5, res.stderr
    assert res.stderr.startswith(
        "imgclf: error: cannot write results to stdout; received <stdout> (No space left"
    )
    assert res.stderr.count("\n") == 1


@pytest.mark.parametrize("model_ok", [True, False], ids=["valid-model", "invalid-model"])
def test_a_closed_stderr_never_sends_errors_to_stdout(tiny_model, tmp_path: Path, model_ok: bool) -> None:
    model = tiny_model.model_path if model_ok else tmp_path / "missing.imgclf"
    res = cli(
        ["inspect", model],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        pass_fds=(),
        close_fds=True,
        preexec_fn=lambda: os.close(2),
        text=True,
    )
    assert res.returncode == (0 if model_ok else 3)
    assert ("imgclf:" in res.stdout) is False
    assert (res.stdout != "") is model_ok


def test_a_closed_stdout_is_no_traceback(tiny_model) -> None:
    res = cli(
        ["inspect", tiny_model.model_path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
        text=True,
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr


# --- item 1: --max-pixels ----------------------------------------------------------------------------


def test_max_pixels_flag_lowers_the_cap_for_predict_and_evaluate(tiny_model) -> None:
    images = tiny_model.dataset / "testing"
    code, out, err = run_cli(
        "predict", "--model", tiny_model.model_path, "--images", images, "--max-pixels", 100
    )
    assert code == 4 and out == "" and "image too large" in err
    code, _, err = run_cli(
        "evaluate",
        "--model",
        tiny_model.model_path,
        "--dataset",
        tiny_model.dataset,
        "--no-cache",
        "--max-pixels",
        100,
    )
    assert code == 7 and "image too large" in err
    code, _, err = run_cli("predict", "--model", tiny_model.model_path, "--images", images, "--max-pixels", 0)
    assert code == 2 and "max_pixels is out of range" in err


def test_max_pixels_flag_reaches_training(tmp_path: Path, monkeypatch) -> None:
    from imgclf.training import pipeline

    seen = {}

    def fake_train(dataset, model, config, options, **k):
        seen["options"] = options
        raise StorageError("stop here")

    monkeypatch.setattr(pipeline, "train", fake_train)
    code, _, _ = run_cli(
        "train", "--dataset", tmp_path, "--model", tmp_path / "m.imgclf", "--max-pixels", 5000
    )
    assert code == 5 and seen["options"].max_pixels == 5000
