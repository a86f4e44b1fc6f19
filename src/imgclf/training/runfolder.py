"""The run folder: its lock, its record (``run.json``), creating and removing it.

``RUN/`` holds ``lock`` (PID, host and start time of the training that owns the folder), ``run.json``
(what is being trained from what: dataset and model paths, recipe, class names, the data fingerprint and
every file's digest — what ``imgclf train --resume RUN`` needs), ``checkpoints/`` and the reports.

The lock is an ``flock`` on the folder itself, which the kernel drops when its process dies (even by
SIGKILL), so a ``lock`` file left behind is recognised as stale and taken over with a warning; where
``flock`` is unavailable the PID is checked instead.

Usage::

    with RunLock(run_dir, log=print):
        write_record(run_dir, record)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgclf.errors import ResumeError, StorageError, UsageError
from imgclf.fileio.processes import pid_alive
from imgclf.fileio.reading import read_json
from imgclf.fileio.writing import TMP_SUFFIX, atomic_write_bytes, atomic_write_text, check_writable
from imgclf.progress import Log
from imgclf.training.checkpoint import CHECKPOINT_DIR, list_checkpoints

try:  # POSIX; elsewhere the lock falls back to checking the recorded PID
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

RUN_FILE = "run.json"
LOCK_FILE = "lock"
RUN_FORMAT = "imgclf-run"
MAX_LOCK_BYTES = 1 << 16  # PID, host and start time
MAX_RECORD_BYTES = 1 << 28  # the file table: about 100 bytes per dataset file


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunLock:
    """Exclusive ownership of a run folder for one training process (a context manager).

    Raises:
        StorageError: On entry, if another live process holds the folder (naming its PID).
    """

    def __init__(self, run_dir: str | os.PathLike, *, log: Log) -> None:
        self.run_dir = os.fspath(run_dir)
        self.path = os.path.join(self.run_dir, LOCK_FILE)
        self.log = log
        self._fd: int | None = None

    def _holder(self) -> dict[str, Any] | None:
        try:
            info = read_json(self.path, MAX_LOCK_BYTES, "lock file")
            return info if isinstance(info, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _busy(self, holder: dict[str, Any] | None, *, by_pid: bool = False) -> StorageError:
        who = f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "another process"
        since = f" since {holder['started']}" if holder and holder.get("started") else ""
        # Without flock the PID is all we know: it may be another machine's, or reused.
        unsure = f" (if no training runs there, delete {self.path})" if by_pid else ""
        return StorageError(
            "the run folder is in use by another training",
            received=f"{self.run_dir} (locked by {who}{since})",
            expected="a run folder no other imgclf process is writing to",
            fix=f"wait for that training to end (or stop it), or choose another --run-dir{unsure}",
        )

    def __enter__(self) -> RunLock:
        try:
            fd = os.open(self.run_dir, os.O_RDONLY)
        except OSError as exc:
            raise StorageError(
                "cannot open the run folder",
                received=f"{self.run_dir} ({exc.strerror or exc})",
                expected="an existing, readable folder",
                fix="check the --run-dir path",
            ) from None
        locked = False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                os.close(fd)
                raise self._busy(self._holder()) from None
            except OSError:  # e.g. a network filesystem without flock: fall back to the PID check
                pass
        holder = self._holder()
        if holder is not None:
            pid, host = holder.get("pid"), holder.get("host")
            alive = isinstance(pid, int) and (host != socket.gethostname() or pid_alive(pid))
            if not locked and alive:
                os.close(fd)
                raise self._busy(holder, by_pid=True)
            self.log(
                f"warning: taking over a stale lock in {self.run_dir} "
                f"(PID {pid} on {host} ended without releasing it)"
            )
        self._fd = fd
        try:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "argv": sys.argv}
            atomic_write_text(self.path, json.dumps(info) + "\n")
            _remove_temp_files(self.run_dir)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)  # also releases the flock
        self._fd = None


def _remove_temp_files(run_dir: str) -> None:
    """Delete temporary files of writes killed half-way (only their owner, now dead, knew them)."""
    for folder in (run_dir, os.path.join(run_dir, CHECKPOINT_DIR)):
        with contextlib.suppress(OSError):
            for name in os.listdir(folder):
                if name.endswith(TMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(folder, name))


def require_run_dir(run_dir: str | os.PathLike) -> None:
    """Refuse to resume from a run folder that does not exist.

    Raises:
        ResumeError: Naming the folder.
    """
    if not os.path.isdir(run_dir):
        raise ResumeError(
            "nothing to resume: the run folder does not exist",
            received=os.fspath(run_dir),
            expected="the run folder of an earlier training (default MODEL-run/)",
            fix="check the --resume path",
        )


def read_record(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``run.json`` as a dict.

    Raises:
        ResumeError: If the folder or its record is missing or unreadable (not a resumable run).
    """
    path = os.path.join(os.fspath(run_dir), RUN_FILE)
    require_run_dir(run_dir)
    try:
        record = read_json(path, MAX_RECORD_BYTES, "run record")
    except FileNotFoundError:
        raise ResumeError(
            "not a run folder: run.json is missing",
            received=os.fspath(run_dir),
            expected="the --run-dir of an earlier `imgclf train` (it holds run.json and checkpoints/)",
            fix="pass the run folder printed when training stopped (default MODEL-run/)",
        ) from None
    except (OSError, ValueError) as exc:
        raise ResumeError(
            "the run record is unreadable", received=f"{path} ({exc})", fix="start a new run"
        ) from None
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        raise ResumeError("the run record is not an imgclf run record", received=path, fix="start a new run")
    return record


def write_record(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Atomically write ``run.json``."""
    body = {"format": RUN_FORMAT, **{k: v for k, v in record.items() if k != "files"}}
    text = json.dumps(body, indent=1)
    if "files" in record:  # one compact line per split: the table can have 100 000 rows
        rows = ",\n".join(
            f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in record["files"].items()
        )
        text = text[:-2] + ',\n "files": {\n' + rows + "\n }\n}"
    atomic_write_text(os.path.join(os.fspath(run_dir), RUN_FILE), text + "\n")


def start_fresh(run_dir: str | os.PathLike, *, force: bool, log: Log) -> None:
    """Prepare a run folder for a new run: refuse to discard an unfinished run unless ``force``.

    Checkpoints of a finished run (or, with ``force``, of an unfinished one) are deleted, so one
    folder never mixes two runs.

    Raises:
        UsageError: If the folder holds checkpoints of an unfinished run and ``force`` is false.
    """
    paths = list_checkpoints(run_dir)
    if not paths:
        return
    try:
        status = read_record(run_dir).get("status")
    except ResumeError:
        status = None
    newest = os.path.basename(paths[0])
    if status != "finished" and not force:
        raise UsageError(
            "the run folder holds an unfinished run",
            received=f"{os.fspath(run_dir)} (newest checkpoint {newest})",
            expected="a new or finished run folder",
            fix=f"continue it with: imgclf train --resume {os.fspath(run_dir)}; or start over with --force "
            "(deletes its checkpoints); or choose another --run-dir",
        )
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    log(f"note: removed {len(paths)} checkpoint(s) of the previous run in {os.fspath(run_dir)}")


def default_run_dir(model_path: str | os.PathLike) -> str:
    """The run folder next to the model file: ``malaria.imgclf`` → ``malaria-run/``."""
    p = Path(model_path)
    return str(p.with_name(p.stem + "-run"))


@contextlib.contextmanager
def new_run_dir(run_dir: str) -> Iterator[None]:
    """:func:`make_run_dir`; if the block fails and the folder was created here, remove it again when it
    holds no file (a refused dataset, disk or memory check, or a signal before training left nothing)."""
    created = not os.path.lexists(run_dir)
    make_run_dir(run_dir)
    try:
        yield
    except BaseException:
        if created:
            remove_if_no_files(run_dir)
        raise


def remove_if_no_files(run_dir: str) -> None:
    """Delete ``run_dir`` if it holds no file (only empty folders, if any); otherwise leave it alone."""
    try:
        for _, _, files in os.walk(run_dir):
            if files:
                return
        shutil.rmtree(run_dir)
    except OSError:
        pass  # best effort: a leftover empty folder is harmless


def make_run_dir(run_dir: str) -> None:
    """Create ``run_dir`` if needed and prove it writable with a real write (read-only mounts, root)."""
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            "cannot create the run folder",
            received=f"{run_dir} ({exc.strerror or exc})",
            expected="a folder you can write to",
            fix="use --run-dir elsewhere",
        ) from None
    check_writable(os.path.join(run_dir, "probe"), "run folder")
    # A real write, not just permission bits: catches read-only mounts and root on them.
    probe = os.path.join(run_dir, f".write-test-{os.getpid()}")
    atomic_write_bytes(probe, b"")
    os.unlink(probe)
