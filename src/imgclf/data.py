"""Dataset folders → samples and class names → decoded uint8 arrays (each image decoded once).

Two layouts are understood:

* **split folders**: ``ROOT/{training,validation,testing}/<class>/...`` (also ``train/val/test``);
  a missing validation or testing folder is carved out of training by ``val_split``/``test_split``.
* **flat**: ``ROOT/<class>/...``, split into training/validation/testing by ``val_split`` and
  ``test_split``, stratified per class and seeded.

Class order is the sorted class-folder names. Hidden and system entries (``.git``, ``__MACOSX``,
``.DS_Store``, ``Thumbs.db``, ...) are neither classes nor samples. Every structural problem is reported
at once, before any image is decoded; then every undecodable file is reported at once, before training.

Usage::

    ds = scan_dataset("dataset", val_split=0.1, test_split=0.2, seed=42)
    train = load_split(ds.splits["training"], spec)      # DecodedSplit with .images (N, H, W, 3) uint8
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import os
import random
import sys
import threading
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from imgclf.cache import DecodeCache, default_cache_dir
from imgclf.config import PreprocessSpec
from imgclf.errors import DatasetError, ImageError
from imgclf.images import is_image_name, preprocess_uint8, read_bytes

__all__ = ["Sample", "Dataset", "DecodedSplit", "scan_dataset", "load_split", "list_images", "SPLITS"]

SPLITS = ("training", "validation", "testing")
_ALIASES = {
    "training": "training",
    "train": "training",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "testing": "testing",
    "test": "testing",
}
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
MAX_LISTED = 8
PARALLEL_MIN = 256  # below this, starting worker processes costs more than it saves


def is_hidden(name: str) -> bool:
    """True for hidden or operating-system entries that are never classes or samples."""
    return name.startswith((".", "~$")) or name.lower() in _SYSTEM_NAMES


@dataclass(frozen=True)
class Sample:
    """One image file and its class index."""

    path: str
    label: int


@dataclass
class Dataset:
    """A scanned dataset: class names in index order and the samples of each split."""

    root: str
    layout: str
    class_names: list[str]
    splits: dict[str, list[Sample]]
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class for each split: ``{"training": {"cat": 10, ...}, ...}``."""
        return {
            split: {name: sum(1 for s in samples if s.label == i) for i, name in enumerate(self.class_names)}
            for split, samples in self.splits.items()
        }


@dataclass
class DecodedSplit:
    """Decoded, resized images of one split, ready for :func:`imgclf.images.to_tensor`."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    paths: list[str]
    digests: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def _walk_files(folder: str) -> list[str]:
    """All non-hidden regular files under ``folder`` (symlinked folders are not followed), sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if not is_hidden(name) and os.path.isfile(full):
                found.append(full)
    return found


def _subdirs(folder: str) -> list[str]:
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


def _class_files(folder: str, problems: list[str]) -> dict[str, list[str]]:
    classes = {}
    for name in _subdirs(folder):
        files = _walk_files(os.path.join(folder, name))
        if not files:
            problems.append(f"class folder {os.path.join(folder, name)!r} is empty")
        classes[name] = files
    return classes


def _stratified(
    files: dict[str, list[str]], fractions: dict[str, float], seed: int
) -> dict[str, dict[str, list]]:
    """Split each class's files by ``fractions`` (seeded); training keeps at least one file per class."""
    rng = random.Random(seed)
    out: dict[str, dict[str, list[str]]] = {s: {} for s in ["training", *fractions]}
    for name in sorted(files):
        items = sorted(files[name])
        rng.shuffle(items)
        start = 0
        for split, frac in fractions.items():
            n = min(round(len(items) * frac), max(len(items) - start - 1, 0))
            out[split][name] = items[start : start + n]
            start += n
        out["training"][name] = items[start:]
    return out


def _near_duplicates(names: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    dupes = []
    for name in names:
        key = unicodedata.normalize("NFC", name).casefold()
        if key in seen:
            dupes.append(f"{seen[key]!r} and {name!r}")
        seen[key] = name
    return dupes


def _problems_error(problems: list[str], root: str) -> DatasetError:
    shown = "; ".join(problems[:MAX_LISTED])
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return DatasetError(
        f"dataset {root!r} has {len(problems)} problem(s): {shown}{more}",
        fix="fix the folders listed (layout: ROOT/training/<class>/*.png or ROOT/<class>/*.png)",
    )


def scan_dataset(
    root: str | os.PathLike, *, val_split: float = 0.1, test_split: float = 0.2, seed: int = 42
) -> Dataset:
    """Find classes and samples under ``root``; report every structural problem at once.

    Raises:
        DatasetError: Missing/empty root, fewer than two classes, empty class folders, class sets that
            differ between splits, or a split layout without a training folder.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DatasetError(
            "dataset folder does not exist",
            received=root,
            expected="a folder of class folders",
            fix="check the --dataset path",
        )
    if not os.path.isdir(root):
        raise DatasetError(
            "dataset path is not a folder",
            received=root,
            expected="a folder of class folders",
            fix="pass the folder that holds the class (or split) folders",
        )
    subdirs = _subdirs(root)
    if not subdirs:
        raise DatasetError(
            "dataset folder is empty",
            received=root,
            expected="class folders (ROOT/<class>/*.png) or split folders (ROOT/training/...)",
            fix="put images in one folder per class",
        )
    problems: list[str] = []
    notes: list[str] = []
    split_dirs = {_ALIASES[d.lower()]: d for d in subdirs if d.lower() in _ALIASES}
    if split_dirs:
        layout = "splits"
        ignored = [d for d in subdirs if d.lower() not in _ALIASES]
        if ignored:
            notes.append(f"ignored folders that are not splits: {', '.join(ignored)}")
        if "training" not in split_dirs:
            raise DatasetError(
                "dataset has split folders but no training folder",
                received=", ".join(subdirs),
                expected="a 'training' (or 'train') folder",
                fix="rename or add the training folder",
            )
        per_split = {s: _class_files(os.path.join(root, d), problems) for s, d in split_dirs.items()}
        class_names = sorted(per_split["training"])
        for split, classes in per_split.items():
            missing = sorted(set(class_names) - set(classes))
            extra = sorted(set(classes) - set(class_names))
            if split != "training" and (missing or extra):
                problems.append(
                    f"{split} classes differ from training (missing: {missing or 'none'}, "
                    f"extra: {extra or 'none'})"
                )
        carve = {
            s: f
            for s, f in (("validation", val_split), ("testing", test_split))
            if s not in per_split and f > 0
        }
        files = {s: per_split.get(s, {}) for s in SPLITS}
        if carve:
            carved = _stratified(per_split["training"], carve, seed)
            files.update(carved)
            shares = ", ".join(f"{f:g}" for f in carve.values())
            notes.append(f"split {', '.join(carve)} out of training ({shares})")
    else:
        layout = "flat"
        classes = _class_files(root, problems)
        class_names = sorted(classes)
        files = _stratified(classes, {"validation": val_split, "testing": test_split}, seed)
    if len(class_names) < 2:
        problems.insert(0, f"found {len(class_names)} class folder(s) {class_names}; need at least 2")
    if problems:
        raise _problems_error(problems, root)
    for dupe in _near_duplicates(class_names):
        notes.append(f"class names differ only by case or Unicode form: {dupe}")
    index = {name: i for i, name in enumerate(class_names)}
    splits = {
        s: [Sample(p, index[c]) for c in class_names for p in files.get(s, {}).get(c, [])] for s in SPLITS
    }
    counts = Counter(s.label for s in splits["training"])
    for name, i in index.items():
        if counts[i] == 1:
            notes.append(f"class {name!r} has a single training image")
    if counts and max(counts.values()) >= 10 * max(min(counts.values()), 1):
        notes.append(f"classes are very imbalanced in training: {dict(sorted(counts.items()))}")
    return Dataset(root=root, layout=layout, class_names=class_names, splits=splits, warnings=notes)


def _decode_one(path: str, spec: PreprocessSpec) -> tuple[np.ndarray, str]:
    data = read_bytes(path)
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    return preprocess_uint8(data, spec, name=path), digest


# Pixels travel from forked workers through this shared anonymous mapping, not through pipes.
_SHARED: np.ndarray | None = None
_SHARED_LOCK = threading.Lock()


def _decode_chunk(start: int, paths: Sequence[str], spec: PreprocessSpec) -> list[tuple[str, str | None]]:
    """Decode ``paths`` into rows ``start...`` of ``_SHARED``; ``(digest, None)`` or ``("", reason)`` each."""
    assert _SHARED is not None
    out: list[tuple[str, str | None]] = []
    for k, path in enumerate(paths):
        try:
            _SHARED[start + k], digest = _decode_one(path, spec)
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
            args = ([c.start for c in chunks], [[paths[j] for j in c] for c in chunks], [spec] * len(chunks))
            if parallel:
                # fork: no re-import of the caller's __main__ (spawn/forkserver would need a main guard in
                # every user script); the children only run Pillow and NumPy, never torch or CUDA.
                with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                    with warnings.catch_warnings():  # workers fork on submit; 3.12+ warns about threads
                        warnings.simplefilter("ignore", DeprecationWarning)
                        jobs = pool.map(_decode_chunk, *args)
                    _collect(
                        zip(chunks, jobs, strict=True), _SHARED, out, targets, digests, failures, progress
                    )
            else:
                jobs = map(_decode_chunk, *args)
                _collect(zip(chunks, jobs, strict=True), _SHARED, out, targets, digests, failures, progress)
        finally:
            _SHARED = None
            buffer.close()
    return digests, failures


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
) -> DecodedSplit:
    """Decode and resize every sample once, in parallel; report every bad file at once.

    Args:
        samples: The split's samples.
        spec: Preprocessing spec (its size decides the array shape).
        skip_bad: Drop undecodable files (listed in ``skipped``) instead of raising.
        workers: Decode threads (Pillow releases the GIL while decoding and resizing).
        progress: Called with the number of images finished since the last call.
        cache: Decode-once cache to read from and fill (see :mod:`imgclf.cache`); ``None`` decodes
            into memory.

    Raises:
        DatasetError: If any file cannot be decoded and ``skip_bad`` is false.
    """
    paths = [s.path for s in samples]
    if cache is not None:
        images, kept, digests, bad = cache.fetch(paths, progress)
    else:
        images = np.empty((len(paths), spec.height, spec.width, 3), dtype=np.uint8)
        all_digests, failures = decode_into(paths, images, progress, spec=spec, workers=workers)
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


def open_cache(spec: PreprocessSpec, cache_dir: str | os.PathLike | None = None) -> DecodeCache:
    """The decode-once cache for ``spec`` in ``cache_dir`` (default: ``cache.default_cache_dir()``)."""
    return DecodeCache(cache_dir or default_cache_dir(), spec, decode_into)


def bad_files_error(bad: Sequence[tuple[str, str]]) -> DatasetError:
    """One error listing every undecodable file ``(path, why)`` (the first few by name)."""
    listed = "; ".join(f"{p} ({why})" for p, why in bad[:MAX_LISTED])
    more = f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return DatasetError(
        f"{len(bad)} file(s) are not readable images: {listed}{more}",
        fix="remove or replace them, or pass --skip-bad to train without them",
    )


def duplicate_report(splits: dict[str, DecodedSplit]) -> str | None:
    """Describe identical files found in more than one class or split (possible leakage), if any."""
    where: dict[str, set[tuple[str, int]]] = {}
    for split, dec in splits.items():
        for digest, label in zip(dec.digests, dec.labels.tolist(), strict=True):
            where.setdefault(digest, set()).add((split, label))
    clashes = [d for d, places in where.items() if len(places) > 1]
    if not clashes:
        return None
    return f"{len(clashes)} identical file(s) appear in more than one class or split (possible leakage)"


def fingerprint(dataset: Dataset, splits: dict[str, DecodedSplit]) -> str:
    """SHA-256 over class names and every (split, relative path, label, content digest)."""
    h = hashlib.sha256()
    h.update("\x00".join(dataset.class_names).encode("utf-8", "surrogateescape"))
    for split in sorted(splits):
        dec = splits[split]
        for path, label, digest in zip(dec.paths, dec.labels.tolist(), dec.digests, strict=True):
            rel = os.path.relpath(path, dataset.root)
            h.update(f"\x01{split}\x00{rel}\x00{label}\x00{digest}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def list_images(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Expand files and folders (recursively, hidden entries skipped) into a list of image paths.

    Files named explicitly are kept whatever their extension; inside folders only files with image
    extensions are taken. Order: as given, folders sorted.
    """
    out: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            out += [f for f in _walk_files(p) if is_image_name(f)]
        else:
            out.append(p)
    return out


def warn_all(messages: Sequence[str]) -> None:
    """Emit each message as a :class:`UserWarning` (the CLI shows them on stderr)."""
    for m in messages:
        warnings.warn(m, stacklevel=2)
