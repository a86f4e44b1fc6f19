"""Decode-once cache: preprocessed uint8 images kept on disk and reused across epochs and runs.

Each image is decoded and resized once through :mod:`imgclf.images.preprocess`; later runs on unchanged files
never touch Pillow again. Layout under the cache folder (``$IMGCLF_CACHE_DIR``, else
``$XDG_CACHE_HOME/imgclf`` or ``~/.cache/imgclf``)::

    v1/<spec key>/index.json        file key -> [pack, row, content digest]   (or a bad-file reason)
    v1/<spec key>/packs/<id>.npy    immutable (N, H, W, 3) uint8 arrays, memory-mapped when read

* A file key is the absolute path, size and modification time; the spec key hashes the
  preprocessing spec, the decode rule and the Pillow version, so any change re-decodes.
* Packs are written to a temporary name and renamed; the index is replaced atomically under an
  ``flock``, so concurrent runs and interrupted runs never see a half-written cache.
* A split whose files all sit in one pack, in order, is served straight from a memory map (datasets
  larger than memory stream from it); otherwise a new pack is assembled from old rows plus freshly
  decoded ones.
* The cache is bounded (``max_bytes`` per preprocessing spec): least recently used packs are evicted;
  unreferenced packs and stale temporary files are removed.

Usage::

    cache = DecodeCache(default_cache_dir(), spec, imgclf.data.decode.decode_into)
    images, kept, digests, bad = cache.fetch(paths)    # images: read-only memmap of the kept rows
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imgclf.config import PreprocessSpec
from imgclf.errors import UsageError
from imgclf.fileio.reading import read_json
from imgclf.fileio.writing import atomic_write_text
from imgclf.images.preprocess import DECODE_RULE

try:
    import fcntl
except ImportError:  # Windows: no flock; the cache refuses with a clear message (require_file_locks)
    fcntl = None  # type: ignore[assignment]

CACHE_VERSION = 1
DEFAULT_MAX_BYTES = 20 * 1024**3
_STALE_SECONDS = 3600
MAX_INDEX_BYTES = 1 << 30  # about 100 bytes per cached file

# decoder(paths, out, progress, rows=..., spec=...) fills out[rows[j]] for paths[j]; -> (digests, {j: why}).
Decoder = Callable[..., tuple[list[str], dict[int, str]]]


def default_cache_dir() -> Path:
    """``$IMGCLF_CACHE_DIR``, else ``$XDG_CACHE_HOME/imgclf``, else ``~/.cache/imgclf``."""
    env = os.environ.get("IMGCLF_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imgclf"


def require_file_locks() -> None:
    """Fail clearly where the cache cannot lock its index (no ``fcntl``: Windows).

    Raises:
        UsageError: Naming the platform and the way around it (``--no-cache``).
    """
    if fcntl is None:
        import sys

        raise UsageError(
            "the decode-once cache needs POSIX file locks (fcntl), which this platform lacks",
            received=f"platform {sys.platform}",
            expected="Linux or macOS",
            fix="pass --no-cache (Python: use_cache=False) to decode into memory only",
        )


def _spec_key(spec: PreprocessSpec) -> str:
    import PIL

    blob = json.dumps(
        {"spec": spec.to_dict(), "rule": DECODE_RULE, "pillow": PIL.__version__}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _open_pack(path: str | os.PathLike) -> np.memmap:
    """Memory-map a pack read-only (``open_memmap`` parses the .npy header and never unpickles)."""
    return np.lib.format.open_memmap(path, mode="r")


def _file_key(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    raw = f"{os.path.abspath(path)}\x00{st.st_size}\x00{st.st_mtime_ns}\x00{st.st_ino}"
    return hashlib.sha1(raw.encode("utf-8", "surrogateescape")).hexdigest()


class DecodeCache:
    """The on-disk cache for one preprocessing spec.

    Args:
        root: Cache folder (the spec's subfolder is created inside it).
        spec: Preprocessing spec whose output the cache holds.
        decoder: ``decoder(paths, out, progress, rows=rows, spec=spec) -> (digests, failures)``
            decodes ``paths[j]`` into ``out[rows[j]]`` (see :func:`imgclf.data.decode.decode_into`).
        max_bytes: Size bound for this spec's packs; the least recently used are evicted beyond it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        spec: PreprocessSpec,
        decoder: Decoder,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        require_file_locks()
        self.root = Path(root)
        self.spec = spec
        self.decoder = decoder
        self.max_bytes = max_bytes
        self.folder = self.root / f"v{CACHE_VERSION}" / _spec_key(spec)
        self.packs = self.folder / "packs"
        self.hits = 0
        self.decoded = 0

    # -- index ---------------------------------------------------------------------------------------
    def _read_index(self) -> dict:
        try:
            index = read_json(self.folder / "index.json", MAX_INDEX_BYTES, "cache index")
            if index.get("version") == CACHE_VERSION and isinstance(index.get("entries"), dict):
                return index
        except (OSError, ValueError):
            pass  # missing or damaged index: start afresh (packs are rebuilt as needed)
        return {"version": CACHE_VERSION, "entries": {}, "bad": {}}

    @contextlib.contextmanager
    def _locked(self):
        self.packs.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "index.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- public --------------------------------------------------------------------------------------
    def fetch(
        self,
        paths: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, str]]]:
        """Images for ``paths``, decoding only what the cache does not hold.

        Returns:
            ``(images, kept, digests, bad)``: images (K, H, W, 3) uint8 of the decodable files (a
            read-only memory map), their indices into ``paths``, their content digests, and
            ``(path, reason)`` for every file that could not be decoded.
        """
        keys = [_file_key(p) for p in paths]
        index = self._read_index()
        entries, known_bad = index["entries"], index.get("bad", {})
        live = {p for p in {e[0] for e in entries.values()} if (self.packs / f"{p}.npy").exists()}
        hit = [k is not None and k in entries and entries[k][0] in live for k in keys]
        # A file refused for its size is tried again: the cap may differ between runs.
        bad_hits = {
            i: known_bad[k]
            for i, k in enumerate(keys)
            if k is not None and k in known_bad and known_bad[k] != "image too large"
        }
        self.hits += sum(hit) + len(bad_hits)
        direct = self._direct(keys, hit, entries, bad_hits)
        if direct is not None:
            if progress:
                progress(len(paths))
            return direct + ([(paths[i], why) for i, why in sorted(bad_hits.items())],)
        return self._build(paths, keys, hit, entries, bad_hits, progress)

    def _direct(self, keys, hit, entries, bad_hits) -> tuple | None:
        """Serve a split straight from one pack when its good files are that pack's rows, in order."""
        good = [i for i in range(len(keys)) if i not in bad_hits]
        if not good or not all(hit[i] for i in good):
            return None
        packs = {entries[keys[i]][0] for i in good}
        rows = [entries[keys[i]][1] for i in good]
        if len(packs) != 1 or any(b <= a for a, b in zip(rows, rows[1:], strict=False)):
            return None
        pack = self.packs / f"{packs.pop()}.npy"
        try:
            images = _open_pack(pack)
        except (OSError, ValueError):
            return None
        if images.shape[1:] != (self.spec.height, self.spec.width, 3) or images.dtype != np.uint8:
            return None
        if rows[-1] >= len(images):
            return None
        if rows != list(range(len(images))):
            images = np.ascontiguousarray(images[rows])  # a pack holding rows of skipped files: copy
        with contextlib.suppress(OSError):
            os.utime(pack)  # recency for eviction
        return images, np.array(good, dtype=np.int64), [entries[keys[i]][2] for i in good]

    def _build(self, paths, keys, hit, entries, bad_hits, progress):
        """Write a new pack holding every file of ``paths`` in order (rows of bad files stay zero)."""
        n = len(paths)
        self.packs.mkdir(parents=True, exist_ok=True)
        pack_id = f"{int(time.time())}-{secrets.token_hex(6)}"
        tmp = self.packs / f".tmp-{os.getpid()}-{pack_id}.npy"
        try:
            digests, bad = self._fill(tmp, paths, keys, hit, entries, bad_hits, progress)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.replace(tmp, self.packs / f"{pack_id}.npy")
        good = [i for i in range(n) if i not in bad]
        with self._locked():
            index = self._read_index()
            for i in good:
                if keys[i] is not None:
                    index["entries"][keys[i]] = [pack_id, i, digests[i]]
                    index["bad"].pop(keys[i], None)
            for i, why in bad.items():
                if keys[i] is not None:
                    index["bad"][keys[i]] = why
                    index["entries"].pop(keys[i], None)
            self._collect(index, keep=pack_id)
            atomic_write_text(self.folder / "index.json", json.dumps(index, separators=(",", ":")))
        images = _open_pack(self.packs / f"{pack_id}.npy")
        if len(good) < n:
            images = np.ascontiguousarray(images[good])
        bad_list = sorted((paths[i], why) for i, why in bad.items())
        return images, np.array(good, dtype=np.int64), [digests[i] for i in good], bad_list

    def _fill(
        self, tmp, paths, keys, hit, entries, bad_hits, progress
    ) -> tuple[dict[int, str], dict[int, str]]:
        """Write every row of the new pack to ``tmp``: cached rows copied, the rest decoded."""
        n = len(paths)
        h, w = self.spec.height, self.spec.width
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, h, w, 3))
        digests: dict[int, str] = {}
        opened: dict[str, np.ndarray] = {}
        for i in range(n):
            if hit[i]:
                pack, src, digests[i] = entries[keys[i]]
                if pack not in opened:
                    opened[pack] = _open_pack(self.packs / f"{pack}.npy")
                out[i] = opened[pack][src]
        opened.clear()
        todo = [i for i in range(n) if not hit[i] and i not in bad_hits]
        if progress and n - len(todo):
            progress(n - len(todo))
        new_digests, failures = self.decoder(
            [paths[i] for i in todo], out, progress, rows=todo, spec=self.spec
        )
        self.decoded += len(todo)
        bad = dict(bad_hits)
        for j, i in enumerate(todo):
            if j in failures:
                bad[i] = failures[j]
            else:
                digests[i] = new_digests[j]
        out.flush()
        del out
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        return digests, bad

    def _collect(self, index: dict, keep: str) -> None:
        """Drop unreferenced packs, stale temporaries and, over the size bound, the oldest packs."""
        now = time.time()
        referenced = {e[0] for e in index["entries"].values()}
        sizes = []
        for f in self.packs.iterdir():
            try:
                st = f.stat()
            except OSError:
                continue
            pack = f.stem
            if f.name.startswith(".tmp-") or pack not in referenced:
                # Another run may have just renamed its pack and not yet indexed it: wait before deleting.
                if now - st.st_mtime > _STALE_SECONDS:
                    with contextlib.suppress(OSError):
                        f.unlink()
                continue
            sizes.append((st.st_mtime, st.st_size, pack, f))
        total = sum(s for _, s, _, _ in sizes)
        for _, size, pack, f in sorted(sizes):
            if total <= self.max_bytes:
                break
            if pack == keep:
                continue
            with contextlib.suppress(OSError):
                f.unlink()
            total -= size
            index["entries"] = {k: v for k, v in index["entries"].items() if v[0] != pack}
