"""Seeing and clearing the decode-once cache folder (``imgclf cache info|clear``).

The folder holds the decoded images (``v<N>/``, :mod:`.decode_cache`) and the linear probe's embedding
tables (``embeddings/v<N>/``, :mod:`imgclf.training.embeddings`); both are counted and cleared.

Usage::

    print(cache_usage()["bytes"])
    freed = clear_cache()
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from imgclf.data.decode_cache import default_cache_dir, fcntl, require_file_locks


def cache_usage(root: str | os.PathLike | None = None) -> dict[str, object]:
    """What the cache folder holds: ``{"path", "bytes", "files", "specs", "embeddings"}`` (0s if absent).

    Only imgclf's own ``v<N>/`` and ``embeddings/v<N>/`` folders are counted; anything else in the folder
    is not ours. ``embeddings`` counts the stored embedding tables.
    """
    base = Path(root) if root else default_cache_dir()
    total = files = 0
    specs = set()
    for folder in sorted(base.glob("v[0-9]*")):
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
                files += 1
                specs.add(path.relative_to(folder).parts[0])
    tables = 0
    for folder in sorted(base.glob("embeddings/v[0-9]*")):
        for path in folder.iterdir():
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
                files += 1
                tables += path.suffix == ".npy" and not path.name.startswith(".")
    return {"path": str(base), "bytes": total, "files": files, "specs": len(specs), "embeddings": tables}


def clear_cache(root: str | os.PathLike | None = None) -> int:
    """Delete imgclf's cache folders (``v<N>/``) under ``root``; returns the bytes freed.

    Each preprocessing spec's folder is emptied under its lock, so a training that is filling it
    finishes its write first; a run holding packs memory-mapped keeps reading them (Linux semantics).
    Files of other programs in the folder are left alone.
    """
    import shutil

    require_file_locks()
    base = Path(root) if root else default_cache_dir()
    freed = int(cache_usage(base)["bytes"])  # type: ignore[call-overload]
    for version in sorted(base.glob("v[0-9]*")):
        for spec in sorted(p for p in version.iterdir() if p.is_dir() and not p.is_symlink()):
            lock = spec / "index.lock"
            with open(lock, "a+") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                for entry in spec.iterdir():
                    if entry == lock:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
            lock.unlink(missing_ok=True)
        shutil.rmtree(version, ignore_errors=True)
    # Tables are replaced by rename and read whole, so deleting them under a running probe is safe.
    for version in sorted(base.glob("embeddings/v[0-9]*")):
        for entry in sorted(version.iterdir()):
            if entry.is_file() or entry.is_symlink():
                entry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            version.rmdir()
    with contextlib.suppress(OSError):
        (base / "embeddings").rmdir()
    return freed
