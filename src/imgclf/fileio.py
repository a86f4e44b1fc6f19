"""Atomic file writing: a file is replaced only by a complete one, never left half-written.

Data goes to a temporary file in the destination folder (same filesystem, so no EXDEV), which is
flushed, fsynced and renamed over the destination; the folder is then fsynced so the rename itself is
durable. On any failure the temporary file is removed and the old destination is untouched.

A process killed with SIGKILL mid-write cannot remove its temporary file; such files are named
``.NAME.PID.HEX.imgclf-tmp`` and the next atomic write of ``NAME`` removes those whose process is gone.

Usage::

    atomic_write_bytes("model.imgclf", payload)
    atomic_write_text("report.json", json.dumps(report))
    with atomic_open("preds.csv", "w") as fh:
        fh.write("path,label\\n")
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from typing import IO, Any

from imgclf.errors import StorageError

TMP_SUFFIX = ".imgclf-tmp"
MAX_JSON_DEPTH = 64  # our own files nest 5 levels at most; json.loads recurses once per level
_READ_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
)


def open_for_reading(path: str) -> tuple[int, os.stat_result]:
    """Open ``path`` read-only and ``fstat`` the descriptor; the caller checks the mode and closes it.

    Non-blocking, so a FIFO never waits for a writer; checking the descriptor rather than the path
    means what is checked is what gets read.

    Raises:
        OSError: From ``open`` or ``fstat`` (the descriptor is closed then).
    """
    fd = os.open(path, _READ_FLAGS)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike, cap: int, what: str) -> bytes:
    """Read a whole regular file of at most ``cap`` bytes; never blocks, never reads past the cap.

    The one reader for imgclf's own files (configs, run records, locks, checkpoints, cache index): a FIFO,
    a device such as ``/dev/zero`` or a symlink to one is refused before any byte is read.

    Args:
        path: The file.
        cap: Largest accepted size in bytes.
        what: What the file is, for messages ("--config", "run record").

    Raises:
        OSError: From opening it (``FileNotFoundError``, ``PermissionError``...), unchanged.
        StorageError: If it is not a regular file, is larger than ``cap``, grows while being read, or
            a read fails (``StorageError`` is an ``OSError`` too).
    """
    name = os.fspath(path)
    fd, st = open_for_reading(name)
    if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
        os.close(fd)
        if st.st_size > cap and stat.S_ISREG(st.st_mode):
            raise _too_big(name, what, f"{st.st_size} bytes", cap)
        raise StorageError(
            f"{what} is not a regular file",
            received=f"{name} ({_kind(st.st_mode)})",
            expected="a regular file",
            fix=f"pass a regular file as the {what}",
        )
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(st.st_size)
            grew = fh.read(1)
        except OSError as exc:
            raise _storage_error(name, exc, f"read the {what}") from None
    if grew:
        raise _too_big(name, what, "it grew while being read", cap)
    return data


def os_reason(exc: OSError) -> str:
    """The short reason of an ``OSError`` (a :class:`StorageError`'s problem, else ``strerror``)."""
    return getattr(exc, "problem", None) or exc.strerror or str(exc)


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def _too_big(name: str, what: str, size: str, cap: int) -> StorageError:
    return StorageError(
        f"{what} is too large",
        received=f"{name} ({size})",
        expected=f"at most {cap} bytes",
        fix=f"check that {name} is the right file",
    )


def json_depth(text: str | bytes) -> int:
    """How deeply ``[``/``{`` nest in JSON ``text`` (brackets inside strings are not counted)."""
    import numpy as np

    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    bare = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", raw)  # drop strings, escapes included
    codes = np.frombuffer(bare, dtype=np.uint8)
    steps = np.isin(codes, (0x5B, 0x7B)).astype(np.int32) - np.isin(codes, (0x5D, 0x7D)).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def read_json(path: str | os.PathLike, cap: int, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Read a JSON file through :func:`read_bounded`, refusing nesting deeper than ``max_depth``.

    Raises:
        OSError: As :func:`read_bounded` (including :class:`StorageError`).
        ValueError: If the file is not UTF-8 JSON or nests too deeply (one line, naming the file).
    """
    data = read_bounded(path, cap, what)
    if json_depth(data) > max_depth:
        raise ValueError(f"{what} {os.fspath(path)} nests JSON deeper than {max_depth} levels")
    try:
        return json.loads(data)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise ValueError(f"{what} {os.fspath(path)} nests JSON too deeply") from None
    except ValueError as exc:
        raise ValueError(f"{what} {os.fspath(path)} is not valid JSON ({str(exc)[:120]})") from None


def fsync_dir(folder: str) -> None:
    """fsync a folder so a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _storage_error(path: str, exc: OSError, action: str) -> StorageError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        fix = "free disk space or write somewhere else"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a folder you can write to"
    elif exc.errno == errno.ENOENT:
        fix = "create the folder first"
    elif exc.errno == errno.EISDIR:
        fix = "give a file name, not a folder"
    elif exc.errno == errno.EFBIG:
        fix = "the file exceeds a size limit (ulimit -f or the filesystem's); write somewhere else"
    else:
        fix = "check the path and the disk"
    return StorageError(
        f"cannot {action}", received=f"{path} ({reason})", expected="a writable file path", fix=fix
    )


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running on this machine: ``False`` only when it certainly is not.

    Used before taking over what a process left behind (a temporary file, a run folder's lock): "cannot
    tell" counts as alive, so a live writer's file or lock is never taken. Our own PID, a PID that exists
    under another user, and every PID on Windows (where ``os.kill(pid, 0)`` would send CTRL_C_EVENT)
    count as alive.
    """
    if os.name == "nt" or pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # exists but belongs to someone else, or we cannot tell
    return True


def remove_stale_temps(target: str | os.PathLike) -> list[str]:
    """Remove temporary files left next to ``target`` by writers that were killed; return their paths.

    Only files named ``.NAME.PID.HEX.imgclf-tmp`` for this ``NAME`` whose ``PID`` no longer runs on this
    machine are removed, so a concurrent writer's file is never touched.
    """
    path = os.path.abspath(os.fspath(target))
    folder, name = os.path.split(path)
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)\.[0-9a-f]+" + re.escape(TMP_SUFFIX))
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and not pid_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(entry.path)
    return removed


def _destination(path: str | os.PathLike) -> str:
    """The file to replace: a symlink's target (so the link keeps working); never a folder or device."""
    target = os.fspath(path)
    if os.path.islink(target):
        target = os.path.realpath(target)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise _storage_error(target, exc, "write file") from None
    if stat.S_ISDIR(st.st_mode):
        raise _storage_error(target, IsADirectoryError(errno.EISDIR, "is a folder"), "write file")
    if not stat.S_ISREG(st.st_mode):
        raise StorageError(
            "cannot write file",
            received=f"{target} (an existing device, FIFO or socket)",
            expected="a regular file path",
            fix="write to a regular file; results on stdout can be redirected instead",
        )
    return target


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on clean exit, fsync it and rename it over ``path``.

    Order, for durability: write, flush, fsync(file), rename, fsync(folder).

    Raises:
        StorageError: If the folder is missing or unwritable, the disk is full, or ``path`` is a folder
            or a device.
    """
    target = _destination(path)
    folder = os.path.dirname(os.path.abspath(target))
    remove_stale_temps(target)
    tmp = os.path.join(
        folder, f".{os.path.basename(target)}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    )
    binary = "b" in mode
    try:
        fh = open(tmp, mode, encoding=None if binary else encoding, newline=None if binary else "")
    except OSError as exc:
        raise _storage_error(target, exc, "write file") from None
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        _remove_quietly(tmp)
        raise _storage_error(target, exc, "write file") from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(folder)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def _file_in_the_way(folder: str) -> str | None:
    """The nearest existing ancestor of ``folder`` (itself included) if it is not a folder, else None."""
    current = folder
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
    return None if os.path.isdir(current) else current


def check_writable(path: str | os.PathLike, what: str = "output file") -> None:
    """Fail early if ``path`` cannot be created: missing parent, unwritable folder, or a folder itself.

    Raises:
        StorageError: Naming the path and what is wrong with it.
    """
    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        raise StorageError(
            f"{what} path is a folder",
            received=target,
            expected="a file name",
            fix="add a file name, e.g. model.imgclf",
        )
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        raise StorageError(
            f"a parent of the {what} path is a file, not a folder",
            received=f"{blocker} (in {target})",
            expected="a path whose parents are folders",
            fix=f"choose another path; {blocker} is an existing file and cannot hold the {what}",
        )
    if not os.path.isdir(folder):
        raise StorageError(
            f"folder for the {what} does not exist",
            received=folder,
            expected="an existing folder",
            fix=f"create it first: mkdir -p {folder}",
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(
            f"folder for the {what} is not writable",
            received=folder,
            expected="a folder you can write to",
            fix="choose another location",
        )
