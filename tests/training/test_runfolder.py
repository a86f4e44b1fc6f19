"""Tests of imgclf.training.runfolder through the pipeline: the lock, the fail-early checks, the run record.

Everything here must fail *before* the first image is decoded: ``load_split`` is replaced by a function
that fails the test, so a check that comes too late shows up as that failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections import namedtuple

import pytest

from helpers import SEED_PARAMS_2, run_cli, tiny_train_config
from imgclf.errors import StorageError, UsageError
from imgclf.training import job, runfolder, steps
from imgclf.training.pipeline import train
from imgclf.training.preflight import estimate_bytes
from imgclf.training.runfolder import RunLock, read_record


@pytest.fixture
def no_decoding(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("decoding started before the start-up checks failed")

    monkeypatch.setattr(steps, "load_split", fail)


def test_a_second_training_into_a_locked_run_folder_is_refused_naming_the_pid(
    tiny_dataset, tmp_path, no_decoding
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with RunLock(run_dir, log=pytest.fail):
        holder = json.loads((run_dir / "lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
        with pytest.raises(StorageError, match=f"locked by PID {os.getpid()}") as info:
            train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(), run_dir=run_dir)
        assert info.value.exit_code == 5 and "another --run-dir" in str(info.value)
    assert not (run_dir / "lock").exists()  # released


HOLD = """
import sys, time
from imgclf.training.runfolder import RunLock
with RunLock(sys.argv[1], log=print):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_lock_held_by_another_live_process_is_refused(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StorageError, match=f"PID {proc.pid}"), RunLock(tmp_path, log=pytest.fail):
            pass
    finally:
        proc.kill()
        proc.wait()
    # The holder was killed (SIGKILL: no clean-up); its lock file is left behind, and recognised as stale.
    assert json.loads((tmp_path / "lock").read_text())["pid"] == proc.pid
    notes: list[str] = []
    with RunLock(tmp_path, log=notes.append):
        assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    assert any("stale lock" in n and f"PID {proc.pid}" in n for n in notes), notes


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    """Where flock is unavailable (some network filesystems), a live PID refuses and a dead one is stale."""
    monkeypatch.setattr(runfolder, "fcntl", None)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    for pid, refused in ((os.getppid(), True), (int(dead.stdout), False)):
        host = socket.gethostname()
        (tmp_path / "lock").write_text(json.dumps({"pid": pid, "host": host, "started": "then"}))
        if refused:
            with pytest.raises(StorageError, match=f"PID {pid}.*delete"), RunLock(tmp_path, log=pytest.fail):
                pass
        else:
            notes: list[str] = []
            with RunLock(tmp_path, log=notes.append):
                pass
            assert any("stale lock" in n for n in notes)


def test_the_lock_is_released_when_training_fails(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(job, "fit_with_checkpoints", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config())
    assert not (tmp_path / "m-run" / "lock").exists()
    with RunLock(tmp_path / "m-run", log=pytest.fail):
        pass


def test_temporary_files_of_killed_writes_are_removed_at_the_next_start(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / ".epoch-0003.safetensors.1234.abcd.imgclf-tmp"
    stale.write_bytes(b"half a checkpoint")
    with RunLock(tmp_path, log=pytest.fail):
        assert not stale.exists()


def _disk(free: int):
    usage = namedtuple("usage", "total used free")
    return lambda path: usage(10**12, 10**12 - free, free)


def test_too_little_free_disk_is_reported_before_decoding_with_the_numbers(
    tiny_dataset, tmp_path, monkeypatch, no_decoding
):
    monkeypatch.setattr(shutil, "disk_usage", _disk(1_000_000))
    with pytest.raises(StorageError, match="not enough free disk space") as info:
        train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(arch="seed_resnet", arch_args={}))
    message = str(info.value)
    assert "1.0 MB free" in message and "checkpoints" in message and "model file" in message
    assert info.value.exit_code == 5


def test_the_estimate_counts_weights_momentum_and_best_weights_per_checkpoint():
    config = tiny_train_config(arch="seed_resnet", arch_args={}, keep="last")
    model_last, run_last = estimate_bytes(config, 2, 1000)
    model_best, run_best = estimate_bytes(config.replace(keep="best"), 2, 1000)
    params = SEED_PARAMS_2  # parameters; BN buffers come on top
    assert 4 * params < model_last < 4 * params + 2_000_000  # weights + probes and manifest
    assert run_last > 4 * (2 * 4 * params) and run_best > run_last + 4 * 4 * params


def test_enough_free_disk_passes_the_check_and_decoding_starts(tiny_dataset, tmp_path, monkeypatch):
    asked: list[str] = []
    free = _disk(10**9)

    def disk_usage(path):
        asked.append(str(path))
        return free(path)

    class Started(Exception):
        pass

    def started(*args, **kwargs):
        raise Started

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(steps, "load_split", started)  # past the start-up checks: stop here
    with pytest.raises(Started):
        train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(epochs=1))
    assert asked  # the free space was really looked up


@pytest.mark.parametrize("what", ["run-dir-is-a-file", "plot-folder-missing", "model-is-a-folder"])
def test_unusable_output_paths_are_reported_before_decoding(what, tiny_dataset, tmp_path, no_decoding):
    kwargs = {}
    model = tmp_path / "m.imgclf"
    if what == "run-dir-is-a-file":
        (tmp_path / "taken").write_text("x")
        kwargs["run_dir"] = tmp_path / "taken"
    elif what == "plot-folder-missing":
        kwargs["plot_path"] = tmp_path / "no" / "plot.png"
    else:
        model.mkdir()
    with pytest.raises(StorageError) as info:
        train(tiny_dataset, model, tiny_train_config(), **kwargs)
    assert info.value.exit_code == 5


def test_a_read_only_run_folder_is_reported_before_decoding(tiny_dataset, tmp_path, monkeypatch, no_decoding):
    """Permission bits do not stop root, so the run folder gets a real write test (faked failing here)."""

    def refuse(path, data):
        raise StorageError("cannot write file", received=f"{path} (Read-only file system)")

    monkeypatch.setattr(runfolder, "atomic_write_bytes", refuse)
    with pytest.raises(StorageError, match="Read-only"):
        train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config())


def test_the_run_record_says_what_to_resume_from(tiny_model):
    record = read_record(tiny_model.model_path.with_name("tiny-run"))
    assert record["status"] == "finished"
    assert record["dataset"] == str(tiny_model.dataset) and record["model"] == str(tiny_model.model_path)
    assert record["config"] == tiny_train_config().to_dict() and record["class_names"] == ["ring", "square"]
    assert sorted(record["files"]) == ["testing", "training", "validation"]
    rel, label, digest = record["files"]["training"][0]
    assert rel.startswith("training/") and label in (0, 1) and len(digest) == 32


def test_a_new_run_into_a_folder_with_an_unfinished_run_is_refused_unless_forced(tiny_dataset, tmp_path):
    train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(epochs=1))
    record = read_record(tmp_path / "m-run")
    (tmp_path / "m-run" / "run.json").write_text(json.dumps({**record, "status": "training"}))
    (tmp_path / "m.imgclf").unlink()  # an unfinished run has written no model file yet
    with pytest.raises(UsageError, match="unfinished run") as info:
        train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(epochs=1))
    assert "--resume" in str(info.value) and "--force" in str(info.value)
    notes: list[str] = []
    train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(epochs=1), force=True, log=notes.append)
    assert any("removed 1 checkpoint" in n for n in notes)
    assert read_record(tmp_path / "m-run")["run_id"] != record["run_id"]


def test_a_new_run_after_a_finished_one_is_refused_naming_the_model_unless_forced(tiny_dataset, tmp_path):
    model = tmp_path / "m.imgclf"
    train(tiny_dataset, model, tiny_train_config(epochs=2))
    before = read_record(tmp_path / "m-run")
    stamp = model.stat().st_mtime_ns
    refused = r"model file already exists.*m\.imgclf: an imgclf model \(testing_accuracy "
    with pytest.raises(UsageError, match=refused):
        train(tiny_dataset, model, tiny_train_config(epochs=1))
    assert model.stat().st_mtime_ns == stamp and read_record(tmp_path / "m-run") == before
    code, out, err = run_cli("train", "-d", tiny_dataset, "-m", model, "--epochs", "1")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "--exist-ok" in err and str(model) in err
    train(tiny_dataset, model, tiny_train_config(epochs=1), force=True)
    assert sorted(os.listdir(tmp_path / "m-run" / "checkpoints")) == ["epoch-0001.safetensors"]
    assert read_record(tmp_path / "m-run")["run_id"] != before["run_id"]
