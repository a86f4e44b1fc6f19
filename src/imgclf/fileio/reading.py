"""Bounded, non-blocking reading of imgclf's own files (configs, run records, locks, checkpoints, indexes).

A file is opened non-blocking and checked through its descriptor (a FIFO or a device is refused before
any byte is read), and never read past a size cap; JSON is refused when it nests deeper than a limit.

Usage::

    data = read_bounded("run/record.json", 1 << 20, "run record")
    config = read_json("recipe.json", 1 << 20, "--config")
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any

from imgclf.errors import StorageError
from imgclf.fileio.writing import storage_error

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
            raise storage_error(name, exc, f"read the {what}") from None
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
