"""Seeing and clearing the decode-once cache folder (``imgclf cache info|clear``).

Usage::

    print(cache_usage()["bytes"])
    freed = clear_cache()
"""

from __future__ import annotations

import os
from pathlib import Path

from imgclf.data.decode_cache import default_cache_dir, fcntl, require_file_locks


def cache_usage(root: str | os.PathLike | None = None) -> dict[str, object]:
    """What the cache folder holds: ``{"path", "bytes", "files", "specs"}`` (0s if it does not exist).

    Only imgclf's own ``v<N>/`` folders are counted; anything else in the folder is not ours.
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
    return {"path": str(base), "bytes": total, "files": files, "specs": len(specs)}


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
    return freed
