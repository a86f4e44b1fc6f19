"""Hardening of the command line: exit codes and one-line messages for machine limits, paths through a
file, leftovers after a refusal; CSV injection, closed or full output streams, control characters."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import make_dataset, run_cli, tiny_train_config
from imgclf.errors import StorageError
from imgclf.fileio import check_writable

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
        (MemoryError(), 8, "imgclf: error: out of memory; received MemoryError"),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried"
            ),
            8,
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
    from imgclf.training import pipeline

    data = make_dataset(tmp_path / "d", {"training": 3, "validation": 1, "testing": 1})
    monkeypatch.setattr(pipeline, "available_bytes", lambda device: 10_000)
    monkeypatch.setattr(pipeline, "load_split", lambda *a, **k: pytest.fail("decoding started"))
    with pytest.raises(
        OutOfMemory, match=r"^not enough memory for the decoded images; received 10 images of 32x32"
    ):
        pipeline.train(data, tmp_path / "m.imgclf", tiny_train_config(), use_cache=False)
    assert OutOfMemory.exit_code == 8
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
    from imgclf.training import pipeline

    def refuse(*_a):
        raise StorageError("not enough free disk space")

    monkeypatch.setattr(pipeline, "check_free_space", refuse)
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
