"""Part files of a sharded ``imgclf predict``: one per shard, written atomically, read back for the merge.

A part is JSON Lines: a header naming the shard and the run it belongs to (its *key*: a digest of the
model file's bytes, the whole input list, the options that change results, and the size and modification
time of the shard's own images), then one row per image with every field of an
:class:`imgclf.Prediction`. Floats are written by ``json`` as ``repr`` does, so a row read back prints
and writes exactly what the prediction itself would. A part whose key differs (another model, other
inputs, other options, a changed image) is stale: it is never merged and its shard predicts again.

Stdlib only; the classifier is not needed to read parts back.

Usage::

    key = run_key(model_digest, paths, options, share, index, count)
    write_part(path, key, index, count, len(share), clf.iter_predict(share, errors="return"))
    if finished(path, key):
        rows = list(read_part(path, key))
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from imgclf.errors import StorageError
from imgclf.fileio.reading import open_for_reading
from imgclf.fileio.writing import atomic_open

if TYPE_CHECKING:
    from imgclf.classifier import Prediction

PART_FORMAT = 1
MAX_ROW_BYTES = 16 << 20  # a row holds one path, one error message and one float per class
_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a regular file's bytes, read in chunks through a non-blocking descriptor.

    Raises:
        OSError: If the file cannot be read; :class:`StorageError` if it is not a regular file.
    """
    fd, st = open_for_reading(os.fspath(path))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(
                "model is not a regular file", received=os.fspath(path), fix="pass a model file"
            )
        h = hashlib.sha256()
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _name(path: str) -> bytes:
    return os.fsencode(path)  # undecodable file names stay distinct (surrogate escapes)


def inputs_digest(paths: Iterable[str]) -> str:
    """SHA-256 of an input list, order included (a NUL cannot occur in a path)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(_name(p) + b"\0")
    return h.hexdigest()


def files_digest(paths: Iterable[str]) -> str:
    """SHA-256 of the paths with each file's size and modification time (``-`` if it cannot be stat'ed)."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            state = f"{st.st_size}:{st.st_mtime_ns}"
        except (OSError, ValueError):
            state = "-"
        h.update(_name(p) + b"\0" + state.encode() + b"\0")
    return h.hexdigest()


def run_key(
    model_digest: str, all_inputs: str, options: dict[str, Any], share: list[str], index: int, count: int
) -> str:
    """The identity of one shard's work: a part with another key is stale.

    Args:
        model_digest: :func:`file_digest` of the model file.
        all_inputs: :func:`inputs_digest` of the whole input list (every shard's).
        options: The flags that change results (``top_k``, ``batch_size``, ``max_pixels``).
        share: This shard's paths (their sizes and times go in, so a changed image is noticed).
        index: The shard, 0 … ``count`` - 1.
        count: How many shards.
    """
    body = {
        "format": PART_FORMAT,
        "model": model_digest,
        "inputs": all_inputs,
        "options": options,
        "shard": [index, count],
        "files": files_digest(share),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _row(p: Any) -> str:
    row = {
        "source": p.source,
        "label": p.label,
        "index": p.index,
        "confidence": p.confidence,
        "probabilities": p.probabilities,
        "top_k": [list(pair) for pair in p.top_k],
        "error": p.error,
    }
    return json.dumps(row)  # ASCII: undecodable names travel as surrogate escapes and come back


def write_part(path: str, key: str, index: int, count: int, rows: int, predictions: Iterable[Any]) -> int:
    """Write one shard's predictions atomically: the part exists only once every row is in it.

    The temporary file is flushed after each row batch, so its growth shows the shard is alive.

    Returns:
        How many predictions failed.

    Raises:
        StorageError: If the part cannot be written.
    """
    failed = 0
    header = {"imgclf_predict_part": PART_FORMAT, "key": key, "shard": index, "shards": count, "rows": rows}
    with atomic_open(path, "w") as fh:
        fh.write(json.dumps(header) + "\n")
        for n, p in enumerate(predictions, 1):
            fh.write(_row(p) + "\n")
            failed += p.error is not None
            if n % 64 == 0:
                fh.flush()
    return failed


def _lines(path: str) -> Iterator[bytes]:
    fd, st = open_for_reading(path)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(st.st_mode):
            raise _bad_part(path, "not a regular file")
        remaining = st.st_size  # never read past what the file held when opened
        while remaining > 0:
            line = fh.readline(min(remaining, MAX_ROW_BYTES + 1))
            if not line:
                break
            remaining -= len(line)
            if not line.endswith(b"\n"):
                raise _bad_part(path, "a row is cut off or longer than the limit")
            yield line


def _bad_part(path: str, why: str) -> StorageError:
    return StorageError(
        f"prediction part file is damaged: {why}",
        received=path,
        expected="a part written by imgclf predict --shard or under torchrun",
        fix=f"delete {path} and run the same command again (that shard is predicted again)",
    )


def finished(path: str, key: str) -> bool:
    """True if ``path`` is a complete part of the run ``key`` (a missing, stale or foreign file is not)."""
    try:
        first = next(_lines(path), b"")
        header = json.loads(first)
    except (OSError, ValueError):
        return False
    return (
        isinstance(header, dict)
        and header.get("imgclf_predict_part") == PART_FORMAT
        and header.get("key") == key
    )


def read_part(path: str, key: str) -> Iterator[Prediction]:
    """The rows of a finished part, in order, as the predictions they were written from.

    Raises:
        StorageError: If the part is not of run ``key`` or holds another number of rows than its header says.
    """
    from imgclf.classifier import Prediction  # the predict path has loaded it already

    lines = _lines(path)
    try:
        header = json.loads(next(lines, b"{}"))
    except ValueError:
        raise _bad_part(path, "the header is not JSON") from None
    if not isinstance(header, dict) or header.get("key") != key:
        raise _bad_part(path, "it belongs to another run")
    n = 0
    for line in lines:
        try:
            row = json.loads(line)
            row["top_k"] = [(label, prob) for label, prob in row["top_k"]]
            yield Prediction(**row)
        except (ValueError, TypeError, KeyError):
            raise _bad_part(path, f"row {n + 1} is not a prediction") from None
        n += 1
    if n != header.get("rows"):
        raise _bad_part(path, f"{n} rows, its header says {header.get('rows')}")
