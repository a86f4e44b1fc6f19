"""Samples → decoded, resized uint8 arrays: each image decoded once, in parallel, optionally cached.

Decoding runs in forked worker processes that write pixels into one shared anonymous mapping (Pillow
holds the GIL while decoding PNGs, so threads do not scale). Every undecodable file is reported at once,
before training; the decode-once cache (:mod:`imgclf.data.decode_cache`) is filled through
:func:`decode_into`.

Usage::

    train = load_split(scan_dataset("dataset").splits["training"], spec)  # .images: (N, H, W, 3) uint8
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import mmap
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from imgclf.config import PreprocessSpec
from imgclf.data.decode_cache import DEFAULT_MAX_BYTES, DecodeCache, default_cache_dir
from imgclf.data.folders import Sample
from imgclf.errors import DatasetError, ImageError, UsageError, listed
from imgclf.images.preprocess import preprocess_uint8
from imgclf.images.read import MAX_PIXELS, read_bytes

PARALLEL_MIN = 256  # below this, starting worker processes costs more than it saves


@dataclass
class DecodedSplit:
    """Decoded, resized images of one split, ready for :func:`imgclf.images.preprocess.to_tensor`."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    paths: list[str]
    digests: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def _decode_one(path: str, spec: PreprocessSpec, max_pixels: int) -> tuple[np.ndarray, str]:
    data = read_bytes(path)
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    return preprocess_uint8(data, spec, name=path, max_pixels=max_pixels), digest


# Pixels travel from forked workers through this shared anonymous mapping, not through pipes.
_SHARED: np.ndarray | None = None
_SHARED_LOCK = threading.Lock()


def _decode_chunk(
    start: int, paths: Sequence[str], spec: PreprocessSpec, max_pixels: int
) -> list[tuple[str, str | None]]:
    """Decode ``paths`` into rows ``start...`` of ``_SHARED``; ``(digest, None)`` or ``("", reason)`` each."""
    assert _SHARED is not None
    out: list[tuple[str, str | None]] = []
    for k, path in enumerate(paths):
        try:
            _SHARED[start + k], digest = _decode_one(path, spec, max_pixels)
            out.append((digest, None))
        except ImageError as exc:
            out.append(("", exc.problem))
    return out


def default_workers() -> int:
    """Number of decode processes: one per available CPU core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _chunks(n: int, workers: int) -> list[range]:
    size = max(16, min(256, -(-n // (workers * 8))))
    return [range(a, min(a + size, n)) for a in range(0, n, size)]


def decode_into(
    paths: Sequence[str],
    out: np.ndarray,
    progress: Callable[[int], None] | None = None,
    *,
    rows: Sequence[int] | None = None,
    spec: PreprocessSpec,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> tuple[list[str], dict[int, str]]:
    """Decode ``paths[j]`` into ``out[rows[j]]`` (default ``out[j]``), one process per core.

    Pillow holds the GIL while decoding PNGs, so threads do not scale; forked worker processes do.
    Small jobs (fewer than ``PARALLEL_MIN`` images) and non-Linux systems decode in this process.

    Args:
        paths: Image files.
        out: (N, H, W, 3) uint8 array (may be a writable memory map).
        progress: Called with the number of images finished since the last call.
        rows: Target row of each path.
        spec: Preprocessing spec (must match ``out``'s height and width).
        workers: Processes (default: one per core).
        max_pixels: Pixel cap per image (see :func:`imgclf.images.preprocess.decode_image`).

    Returns:
        ``(digests, failures)``: a content digest per path ("" for failures) and ``{j: reason}``.
    """
    global _SHARED
    targets = list(range(len(paths))) if rows is None else list(rows)
    digests = [""] * len(paths)
    failures: dict[int, str] = {}
    workers = workers or default_workers()
    n = len(paths)
    parallel = workers > 1 and n >= PARALLEL_MIN and sys.platform.startswith("linux")
    size = n * spec.height * spec.width * 3
    with _SHARED_LOCK:
        buffer = mmap.mmap(-1, max(1, size))
        try:
            _SHARED = np.frombuffer(buffer, dtype=np.uint8, count=size).reshape(n, spec.height, spec.width, 3)
            chunks = _chunks(n, workers)
            args = (
                [c.start for c in chunks],
                [[paths[j] for j in c] for c in chunks],
                [spec] * len(chunks),
                [max_pixels] * len(chunks),
            )
            if parallel:
                _decode_parallel(workers, args, chunks, out, targets, digests, failures, progress)
            else:
                jobs = map(_decode_chunk, *args)
                _collect(zip(chunks, jobs, strict=True), _SHARED, out, targets, digests, failures, progress)
        finally:
            _SHARED = None
            # After Ctrl-C a traceback may still hold a view of the mapping: then it is unmapped once
            # that view goes, instead of close() raising BufferError over the KeyboardInterrupt.
            with contextlib.suppress(BufferError):
                buffer.close()
    return digests, failures


def _worker_signals() -> None:
    """Workers leave SIGINT and SIGTERM to the parent, which stops them (no traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _decode_parallel(workers, args, chunks, out, targets, digests, failures, progress) -> None:
    # fork: no re-import of the caller's __main__ (spawn/forkserver would need a main guard in every
    # user script); the children only run Pillow and NumPy, never torch or CUDA.
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_signals
    )
    try:
        with warnings.catch_warnings():  # workers fork on submit; 3.12+ warns about threads
            warnings.simplefilter("ignore", DeprecationWarning)
            jobs = pool.map(_decode_chunk, *args)
        _collect(zip(chunks, jobs, strict=True), _SHARED, out, targets, digests, failures, progress)
    except BaseException:
        # Interrupted (or failed): stop the workers now rather than let them finish every queued chunk.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _collect(results, shared, out, targets, digests, failures, progress) -> None:
    for chunk, decoded in results:
        for j, (digest, problem) in zip(chunk, decoded, strict=True):
            if problem is None:
                out[targets[j]] = shared[j]
                digests[j] = digest
            else:
                failures[j] = problem
        if progress is not None:
            progress(len(chunk))


def load_split(
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    *,
    skip_bad: bool = False,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    cache: DecodeCache | None = None,
    max_pixels: int = MAX_PIXELS,
) -> DecodedSplit:
    """Decode and resize every sample once, in parallel; report every bad file at once.

    Args:
        samples: The split's samples.
        spec: Preprocessing spec (its size decides the array shape).
        skip_bad: Drop undecodable files (listed in ``skipped``) instead of raising.
        workers: Decode processes (see :func:`decode_into`; default one per core).
        progress: Called with the number of images finished since the last call.
        cache: Decode-once cache to read from and fill (see :mod:`imgclf.data.decode_cache`); ``None`` decodes
            into memory (a cache decodes with the cap it was opened with).
        max_pixels: Pixel cap per image, without a cache.

    Raises:
        DatasetError: If any file cannot be decoded and ``skip_bad`` is false.
    """
    paths = [s.path for s in samples]
    if cache is not None:
        images, kept, digests, bad = cache.fetch(paths, progress)
    else:
        images = np.empty((len(paths), spec.height, spec.width, 3), dtype=np.uint8)
        all_digests, failures = decode_into(
            paths, images, progress, spec=spec, workers=workers, max_pixels=max_pixels
        )
        kept = np.array([i for i in range(len(paths)) if i not in failures], dtype=np.int64)
        if len(kept) < len(paths):
            images = images[kept]
        digests = [all_digests[i] for i in kept.tolist()]
        bad = sorted((paths[j], why) for j, why in failures.items())
    if bad and not skip_bad:
        raise bad_files_error(bad)
    return DecodedSplit(
        images=images,
        labels=np.array([samples[i].label for i in kept.tolist()], dtype=np.int64),
        paths=[paths[i] for i in kept.tolist()],
        digests=digests,
        skipped=bad,
    )


def open_cache(
    spec: PreprocessSpec, cache_dir: str | os.PathLike | None = None, max_pixels: int = MAX_PIXELS
) -> DecodeCache:
    """The decode-once cache for ``spec`` in ``cache_dir`` (default: ``cache.default_cache_dir()``).

    Images it decodes are held to ``max_pixels``.

    ``$IMGCLF_CACHE_MAX_BYTES`` overrides the size bound (default 20 GiB per preprocessing spec).

    Raises:
        UsageError: If ``$IMGCLF_CACHE_MAX_BYTES`` is not a positive integer.
    """
    raw = os.environ.get("IMGCLF_CACHE_MAX_BYTES")
    max_bytes = DEFAULT_MAX_BYTES
    if raw is not None:
        if not raw.strip().isdigit() or int(raw) < 1:
            raise UsageError(
                "IMGCLF_CACHE_MAX_BYTES is not a positive integer",
                received=repr(raw),
                expected="a number of bytes, e.g. 10000000000",
                fix="fix or unset the variable",
            )
        max_bytes = int(raw)
    decoder = functools.partial(decode_into, max_pixels=max_pixels)
    return DecodeCache(cache_dir or default_cache_dir(), spec, decoder, max_bytes=max_bytes)


def bad_files_error(bad: Sequence[tuple[str, str]]) -> DatasetError:
    """One error listing every undecodable file ``(path, why)`` (the first few by name)."""
    return DatasetError(
        f"{len(bad)} file(s) are not readable images: {listed([f'{p} ({why})' for p, why in bad])}",
        fix="remove or replace them, or pass --skip-bad to train without them",
    )
