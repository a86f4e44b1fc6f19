"""Atomic file writing: a file is replaced only by a complete one, never left half-written.

Data goes to a temporary file in the destination folder (same filesystem, so no EXDEV), which is
flushed, fsynced and renamed over the destination; the folder is then fsynced so the rename itself is
durable. On any failure the temporary file is removed and the old destination is untouched.

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
import secrets
from collections.abc import Iterator
from typing import IO

from imgclf.errors import StorageError

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "check_writable",
    "TMP_SUFFIX",
]

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
    else:
        fix = "check the path and the disk"
    return StorageError(
        f"cannot {action}", received=f"{path} ({reason})", expected="a writable file path", fix=fix
    )


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on clean exit, fsync it and rename it over ``path``.

    Raises:
        StorageError: If the folder is missing or unwritable, the disk is full, or ``path`` is a folder.
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    if os.path.isdir(target):
        raise _storage_error(target, IsADirectoryError(errno.EISDIR, "is a folder"), "write file")
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
