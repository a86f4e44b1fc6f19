"""Every file imgclf reads of its own goes through one bounded, non-blocking, regular-file-only reader
(``fileio.reading.read_bounded`` / ``read_json``): FIFOs, devices, symlinks to devices, oversized and too
deeply nested files are refused quickly with one line, never read without bound and never waited on."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from helpers import run_cli
from imgclf.errors import ResumeError, StorageError
from imgclf.fileio.reading import read_bounded, read_json
from imgclf.training import checkpoint as ckpt
from imgclf.training.runfolder import RunLock, read_record


@contextlib.contextmanager
def deadline(seconds: int = 10):
    """Fail (instead of hanging the suite) if the block blocks longer than ``seconds``."""

    def expire(*_):
        raise TimeoutError(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - start < seconds


def hostile(tmp_path: Path, kind: str) -> Path:
    """A path of one hostile kind: FIFO, /dev/zero, a symlink to /dev/zero, a folder."""
    path = tmp_path / f"hostile-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        return Path("/dev/zero")
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    return path


KINDS = ["fifo", "dev-zero", "link-to-dev-zero", "folder"]


@pytest.mark.parametrize("kind", KINDS)
def test_read_bounded_refuses_anything_but_a_regular_file_at_once(tmp_path: Path, kind: str) -> None:
    with deadline(), pytest.raises(OSError) as info:
        read_bounded(hostile(tmp_path, kind), 1 << 20, "--config")
    if kind != "folder":
        assert isinstance(info.value, StorageError)
        assert str(info.value).startswith("--config is not a regular file")


def test_read_bounded_caps_the_size_and_reads_small_files(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b"x" * 100)
    assert read_bounded(path, 100, "lock") == b"x" * 100
    with pytest.raises(
        StorageError, match="^lock is too large; received .* \\(100 bytes\\); expected at most 99"
    ):
        read_bounded(path, 99, "lock")


def test_read_json_refuses_deep_nesting_but_not_brackets_in_strings(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nests JSON deeper than 64 levels"):
        read_json(path, 1 << 20, "run record")
    path.write_text(json.dumps({"a": ["[[[[" * 1000, {"b": '\\"[{'}]}))
    assert read_json(path, 1 << 20, "run record")["a"][1] == {"b": '\\"[{'}


@pytest.mark.parametrize("kind", [*KINDS, "deep"])
def test_config_flag_refuses_hostile_files_with_one_line_exit_2(tmp_path: Path, kind: str) -> None:
    if kind == "deep":
        path = tmp_path / "deep.json"
        path.write_text("[" * 100_000)
    else:
        path = hostile(tmp_path, kind)
    with deadline():
        code, out, err = run_cli(
            "train", "--dataset", tmp_path, "--model", tmp_path / "m.imgclf", "--config", path
        )
    assert code == 2, err
    assert err.startswith("imgclf: error: cannot read --config") and err.count("\n") == 1, err
    assert out == ""


@pytest.mark.parametrize("kind", [*KINDS, "deep"])
def test_run_record_refuses_hostile_files(tmp_path: Path, kind: str) -> None:
    (tmp_path / "run").mkdir()
    target = tmp_path / "run" / "run.json"
    if kind == "deep":
        target.write_text('{"a":' * 100_000)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    else:
        target.symlink_to("/dev/zero")
    with deadline(), pytest.raises(ResumeError, match="^the run record is unreadable"):
        read_record(tmp_path / "run")


@pytest.mark.parametrize("kind", ["fifo", "link-to-dev-zero"])
def test_a_hostile_lock_file_is_refused_without_hanging(tmp_path: Path, kind: str) -> None:
    lock = tmp_path / "lock"
    if kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.symlink_to("/dev/zero")
    with (
        deadline(),
        pytest.raises(StorageError, match="^cannot write file; received .* \\(an existing device"),
    ):
        with RunLock(tmp_path, log=lambda _: None):
            pass


@pytest.mark.parametrize("kind", ["fifo", "link-to-dev-zero"])
def test_a_hostile_checkpoint_is_damaged_not_read(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "epoch-0001.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with deadline(), pytest.raises(ckpt.CheckpointDamaged, match="not a regular file"):
        ckpt.read_checkpoint(path)
