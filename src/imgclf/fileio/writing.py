"""Atomic file writing: a file is replaced only by a complete one, never left half-written.

Data goes to a temporary file in the destination folder (same filesystem, so no EXDEV), which is
flushed, fsynced and renamed over the destination; the folder is then fsynced so the rename itself is
durable. On any failure the temporary file is removed and the old destination is untouched.

A process killed with SIGKILL mid-write cannot remove its temporary file; such files are named
``.NAME.PID.HEX.imgclf-tmp`` and the next atomic write of ``NAME`` removes those whose process is gone.
:func:`check_writable` fails early, before any work, when a path cannot be written at all.

Usage::

    atomic_write_bytes("model.imgclf", payload)
    atomic_write_text("report.json", json.dumps(report))
    with atomic_open("preds.csv", "w") as fh:
        fh.write("path,label\\n")
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Iterator
from typing import IO

from imgclf.errors import StorageError
from imgclf.fileio.processes import pid_alive

TMP_SUFFIX = ".imgclf-tmp"


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


def storage_error(path: str, exc: OSError, action: str) -> StorageError:
    """The :class:`StorageError` for ``exc`` raised while trying to ``action`` ``path``: a fix per errno."""
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


def remove_stale_temps(target: str | os.PathLike) -> list[str]:
    """Remove temporary files left next to ``target`` by writers that were killed; return their paths.

    Only files named ``.NAME.PID.HEX.imgclf-tmp`` for this ``NAME`` whose ``PID`` no longer runs on this
    machine are removed, so a concurrent writer's file is never touched.
    """
    path = os.path.abspath(os.fspath(target))
    folder, name = os.path.split(path)
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)\.[0-9a-f]+" + re.escape(TMP_SUFFIX))
    removed: list[str] = []
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
        raise storage_error(target, exc, "write file") from None
    if stat.S_ISDIR(st.st_mode):
        raise storage_error(target, IsADirectoryError(errno.EISDIR, "is a folder"), "write file")
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
        raise storage_error(target, exc, "write file") from None
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        _remove_quietly(tmp)
        raise storage_error(target, exc, "write file") from None
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
