"""Saving survives crashes and full disks: the destination is always the old file or the new one.

Catalog D1-D6 for the model file: SIGKILL at random points while a file is being overwritten, disk
full (simulated ENOSPC, and a real RLIMIT_FSIZE), unusable destinations, the fsync/rename order, and the
clean-up of temporary files a killed writer leaves behind.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import imgclf
from helpers import make_classifier
from imgclf import modelfile
from imgclf.errors import StorageError
from imgclf.fileio import writing

POSIX = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and fork")
TESTS = Path(__file__).parents[1]  # tests/: where helpers.py lives


@pytest.fixture(scope="module")
def payloads() -> tuple[bytes, bytes]:
    """Two different complete model files (different weights)."""
    return modelfile.serialize(make_classifier(seed=1)), modelfile.serialize(make_classifier(seed=2))


def _temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(writing.TMP_SUFFIX))


def _writer_child(dest: Path, payloads: tuple[bytes, bytes]) -> None:
    """Forked child: overwrite ``dest`` with the two payloads in turn until killed (I/O only, no torch)."""
    try:
        k = 0
        while True:
            writing.atomic_write_bytes(dest, payloads[k % 2])
            k += 1
    finally:
        os._exit(0)


def _kill_loop(dest: Path, payloads: tuple[bytes, bytes], iterations: int, seed: int) -> int:
    rng = random.Random(seed)
    mid_write = 0
    for _ in range(iterations):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            _writer_child(dest, payloads)
        time.sleep(rng.uniform(0.0, 0.02))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert dest.read_bytes() in payloads  # the old file or the new one, complete
        mid_write += bool(_temps(dest.parent))
        imgclf.load(dest)  # and it passes every check
    return mid_write


@POSIX
def test_kill_9_while_overwriting_leaves_the_old_or_the_new_file(payloads, tmp_path):
    dest = tmp_path / "model.imgclf"
    dest.write_bytes(payloads[0])
    mid_write = _kill_loop(dest, payloads, iterations=60, seed=5)
    assert mid_write > 0  # some kills did land inside a write (a temp file was left)
    # The next save removes the temp files of the killed writers (their PIDs are gone).
    imgclf.save(make_classifier(seed=3), dest)
    assert _temps(tmp_path) == []
    assert imgclf.verify(dest).ok


@POSIX
@pytest.mark.slow
def test_kill_9_while_overwriting_many_times(payloads, tmp_path):
    dest = tmp_path / "model.imgclf"
    dest.write_bytes(payloads[1])
    _kill_loop(dest, payloads, iterations=400, seed=6)


@POSIX
@pytest.mark.slow
def test_kill_9_during_a_real_save_in_a_fresh_process(payloads, tmp_path):
    """The full path, serialize + write, in a real interpreter, killed at random times."""
    dest = tmp_path / "model.imgclf"
    dest.write_bytes(payloads[0])
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import imgclf
        from helpers import make_classifier
        models = [make_classifier(seed=s) for s in (1, 2)]
        print("ready", flush=True)
        k = 0
        while True:
            imgclf.save(models[k % 2], {str(dest)!r})
            k += 1
        """
    )
    rng = random.Random(8)
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        assert imgclf.verify(dest).ok  # old or new, but complete and intact
    imgclf.save(make_classifier(seed=1), dest)
    assert _temps(tmp_path) == []


# --- temp files of killed writers -----------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@POSIX
def test_stale_temps_of_dead_writers_are_removed_and_nothing_else(payloads, tmp_path):
    dest = tmp_path / "model.imgclf"
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".model.imgclf.{dead}.0badc0de{writing.TMP_SUFFIX}"
    live = tmp_path / f".model.imgclf.{alive}.0badc0de{writing.TMP_SUFFIX}"
    other = tmp_path / f".other.imgclf.{dead}.0badc0de{writing.TMP_SUFFIX}"
    unrelated = tmp_path / f".model.imgclf.{dead}.notes"
    for p in (stale, live, other, unrelated):
        p.write_bytes(b"partial")
    writing.atomic_write_bytes(dest, payloads[0])
    assert not stale.exists()
    assert live.exists() and other.exists() and unrelated.exists()
    assert writing.remove_stale_temps(tmp_path / "other.imgclf") == [str(other)]


# --- disk full ------------------------------------------------------------------------------------------


class _FullDisk:
    """A file object whose writes fail with ENOSPC after ``budget`` bytes."""

    def __init__(self, real, budget: int) -> None:
        self.real, self.budget = real, budget

    def write(self, data) -> int:
        if len(data) > self.budget:
            self.real.write(bytes(data[: self.budget]))
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.real.close()


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_full_disk_keeps_the_original_and_removes_the_temp(where, payloads, tmp_path, monkeypatch):
    dest = tmp_path / "model.imgclf"
    dest.write_bytes(payloads[0])
    if where == "write":
        monkeypatch.setattr(writing, "open", lambda *a, **k: _FullDisk(open(*a, **k), 1000), raising=False)
    else:

        def no_space(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageError) as info:
        imgclf.save(make_classifier(seed=2), dest)
    assert info.value.exit_code == 5
    message = str(info.value)
    assert "No space left on device" in message and "free disk space" in message and str(dest) in message
    assert dest.read_bytes() == payloads[0]
    assert _temps(tmp_path) == []


@POSIX
def test_a_real_file_size_limit_during_save_is_a_storage_error(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse the write (EFBIG), as a full quota would."""
    pytest.importorskip("resource")
    dest = tmp_path / "model.imgclf"
    dest.write_bytes(b"old model")
    script = textwrap.dedent(
        f"""
        import json, resource, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        import imgclf
        from imgclf.errors import ImgclfError
        from helpers import make_classifier
        clf = make_classifier()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            imgclf.save(clf, {str(dest)!r})
        except ImgclfError as exc:
            print(json.dumps({{"code": exc.exit_code, "message": str(exc)}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 5 and "File too large" in result["message"] and "size limit" in result["message"]
    assert dest.read_bytes() == b"old model"
    assert _temps(tmp_path) == []


# --- unusable destinations ------------------------------------------------------------------------------


def test_a_missing_folder_is_a_clear_storage_error(tmp_path):
    with pytest.raises(StorageError, match="create the folder first"):
        imgclf.save(make_classifier(), tmp_path / "missing" / "model.imgclf")


def test_a_folder_as_destination_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "model.imgclf"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(StorageError, match="is a folder"):
        imgclf.save(make_classifier(), target)
    assert (target / "keep").read_text() == "x"


@POSIX
def test_a_device_or_fifo_destination_is_refused_and_not_replaced(tmp_path):
    fifo = tmp_path / "model.imgclf"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="device, FIFO or socket"):
        imgclf.save(make_classifier(), fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert _temps(tmp_path) == []


@POSIX
def test_a_read_only_folder_is_a_clear_storage_error(payloads, tmp_path, monkeypatch):
    dest = tmp_path / "model.imgclf"
    dest.write_bytes(payloads[0])
    if os.geteuid() != 0:
        tmp_path.chmod(0o555)
    else:  # root writes anywhere: simulate the EACCES a read-only folder gives
        monkeypatch.setattr(
            writing,
            "open",
            lambda *a, **k: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied")),
            raising=False,
        )
    try:
        with pytest.raises(StorageError, match="choose a folder you can write to"):
            imgclf.save(make_classifier(seed=2), dest)
    finally:
        tmp_path.chmod(0o755)
    assert dest.read_bytes() == payloads[0]


@POSIX
def test_a_symlinked_destination_keeps_the_link_and_updates_its_target(payloads, tmp_path):
    real = tmp_path / "real.imgclf"
    real.write_bytes(payloads[0])
    link = tmp_path / "link.imgclf"
    link.symlink_to(real)
    imgclf.save(make_classifier(seed=2), link)
    assert link.is_symlink() and imgclf.load(link).class_names == ["ring", "square"]
    assert real.read_bytes() != payloads[0]


# --- durability order -----------------------------------------------------------------------------------


def test_fsync_of_the_file_comes_before_the_rename_and_fsync_of_the_folder_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("rename", f"{Path(src).parent == Path(dst).parent}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    dest = tmp_path / "model.imgclf"
    imgclf.save(make_classifier(), dest)
    if sys.platform == "win32":
        assert events[:2] == [("fsync", "file"), ("rename", "True")]
    else:
        assert events == [("fsync", "file"), ("rename", "True"), ("fsync", "folder")]


def test_the_temp_file_is_created_in_the_destination_folder(tmp_path, monkeypatch):
    """D5: same folder, same filesystem, so the rename never crosses devices (no EXDEV)."""
    opened: list[str] = []
    real_open = open

    def recording_open(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(writing, "open", recording_open, raising=False)
    dest = tmp_path / "sub" / "model.imgclf"
    dest.parent.mkdir()
    imgclf.save(make_classifier(), dest)
    assert len(opened) == 1 and Path(opened[0]).parent == dest.parent
    assert Path(opened[0]).name.startswith(f".model.imgclf.{os.getpid()}.")
