"""Listing the files under a folder: hidden and system entries skipped, odd entries reported, not lost.

Hidden and system entries (``.git``, ``__MACOSX``, ``.DS_Store``, ``Thumbs.db``, ...) are never classes
or samples; entries that are not regular files (dangling symlinks, FIFOs, sockets, devices) are handed
back so the caller can report them. :func:`list_images` expands what ``imgclf predict`` is given.

Usage::

    paths = list_images(["cell.png", "more_cells/"])
    odd: list[str] = []
    files = walk_files("dataset/training/cat", odd)  # odd: entries that are not regular files
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from imgclf.errors import DatasetError, listed
from imgclf.images.preprocess import is_image_name

_SYSTEM_NAMES = {
    "__macosx",
    "thumbs.db",
    "desktop.ini",
    "@eadir",
    "$recycle.bin",
    "system volume information",
    "lost+found",
    "__pycache__",
}


def is_hidden(name: str) -> bool:
    """True for hidden or operating-system entries that are never classes or samples."""
    return name.startswith((".", "~$")) or name.lower() in _SYSTEM_NAMES


def walk_files(folder: str, odd: list[str] | None = None) -> list[str]:
    """All non-hidden regular files under ``folder`` (symlinked folders are not followed), sorted.

    Other entries (dangling symlinks, symlink loops, FIFOs, sockets, devices) are appended to ``odd``
    so the caller can report them rather than skip them silently; if ``odd`` is None they are listed
    with the files, in walk order.
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if is_hidden(name):
                continue
            if odd is None or os.path.isfile(full):
                found.append(full)
            else:
                odd.append(full)
    return found


def odd_entries_note(odd: list[str]) -> str:
    """The warning for entries that are not regular files: how many, and the first few names."""
    return (
        f"skipped {len(odd)} entr{'y' if len(odd) == 1 else 'ies'} that are not regular files "
        f"(dangling symlink, FIFO, socket or device): {listed(odd, 5)}"
    )


def subfolders(folder: str) -> list[str]:
    """The names of the non-hidden folders directly in ``folder``, sorted.

    Raises:
        DatasetError: If ``folder`` cannot be listed.
    """
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:
        raise DatasetError(
            "cannot list dataset folder",
            received=f"{folder} ({exc.strerror or exc})",
            expected="a readable folder",
            fix="check the path and its permissions",
        ) from None
    return [e for e in entries if not is_hidden(e) and os.path.isdir(os.path.join(folder, e))]


def list_images(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Expand files and folders (recursively, hidden entries skipped) into a list of image paths.

    Files named explicitly are kept whatever their extension; inside folders only files with image
    extensions are taken, and so are entries with image names that are not regular files (dangling
    symlinks, FIFOs, devices): reading them then fails with an error naming each. Order: as given,
    folders sorted.
    """
    out: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            out += [f for f in walk_files(p) if is_image_name(f)]
        else:
            out.append(p)
    return out
