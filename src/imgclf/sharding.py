"""Sharded prediction: one input list split across processes, each share classified into a part file, the
parts checked and merged back in input order.

The input list (in the order a single process would classify it) is cut into ``shards`` contiguous shares
whose sizes differ by at most one; shard ``I`` (0-based, like torchrun's ``RANK``) classifies share ``I``
into ``PARTS/shard-I-of-N.jsonl``, written atomically. A part is JSON Lines: a header recording the run it
belongs to (SHA-256 of the model file and of the whole input list, the options that change results, the
shard, the input positions it covers, its row count, and a digest of its images' sizes and modification
times), then one row per image with every field of an :class:`imgclf.Prediction`. Floats are written as
``repr`` does, so a merged row prints and writes exactly what the prediction itself would.

Every part is checked before it is reused or merged: its header against the run, and each row (a
prediction, for the image at that position of the input list, as many rows as the header says). A part
that fails a check is never merged: :meth:`ShardedPrediction.merge` refuses with a one-line
:class:`imgclf.StorageError` naming the part and what is wrong with it (another model, another input
list, another shard, a row count or a row that does not match), and :meth:`ShardedPrediction.predict`
classifies its shard again over it. The shard count is bounded by the number of images and by
``MAX_SHARDS``.

Imports no training code; the model is loaded (``imgclf.load``: .imgclf or .onnx) only to classify or to
check rows against its class names. The ``imgclf predict`` command (``--shard I/N``, or one shard per
torchrun rank) is a thin layer over this module: see docs/distributed.md.

Usage::

    import imgclf
    paths = ["cell1.png", "cell2.png"]
    job = imgclf.ShardedPrediction("malaria.imgclf", paths, "preds.parts", shards=2)
    job.predict(0)                       # each shard in its own process, usually; here one after the other
    job.predict(1)
    if all(state.finished for state in job.states()):
        for p in job.merge():            # every part checked first; input order
            print(p.source, p.label)
        job.remove_parts()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgclf.errors import ModelFileError, StorageError, UsageError
from imgclf.fileio.reading import open_for_reading
from imgclf.fileio.writing import TMP_SUFFIX, atomic_open

if TYPE_CHECKING:
    from imgclf.classifier import Prediction

MAX_SHARDS = 10_000  # one part file each, all in one folder; the merge opens them one after another
PART_FORMAT = 3  # 3: rows carry the out-of-distribution flag and a multi-label model's label set
MAX_ROW_BYTES = 16 << 20  # a row holds one path, one error message and one float per class
POLL_SECONDS = 0.5
_CHUNK = 1 << 20
_ROW_KEYS = {
    "source",
    "label",
    "index",
    "confidence",
    "probabilities",
    "top_k",
    "error",
    "unlike_training_data",
    "labels",
}


def share_bounds(total: int, index: int, count: int) -> tuple[int, int]:
    """``(start, stop)``: the input positions of shard ``index`` of ``count`` over ``total`` inputs."""
    return index * total // count, (index + 1) * total // count


def share(paths: Sequence[str], index: int, count: int) -> list[str]:
    """Shard ``index``'s contiguous share of ``paths``; the shares in order are ``paths`` exactly once."""
    start, stop = share_bounds(len(paths), index, count)
    return list(paths[start:stop])


def check_shard_count(count: int, images: int) -> None:
    """Refuse a shard count outside 1 … min(``images``, ``MAX_SHARDS``).

    Raises:
        UsageError: If ``count`` is not a whole number in that range.
    """
    limit = min(images, MAX_SHARDS)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= limit:
        raise UsageError(
            "too many shards" if isinstance(count, int) and count > limit else "bad shard count",
            received=f"{count!r} shards for {images} image(s)",
            expected=f"1 … {limit} (at most one shard per image and at most {MAX_SHARDS})",
            fix=f"use at most {limit} shards (imgclf predict: a smaller N in --shard I/N, or fewer torchrun "
            "processes)",
        )


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a regular file's bytes, read in chunks through a non-blocking descriptor.

    Raises:
        ModelFileError: If the file cannot be read or is not a regular file.
    """
    try:
        fd, st = open_for_reading(os.fspath(path))
    except OSError as exc:
        from imgclf.fileio.reading import os_reason

        raise ModelFileError(
            "cannot read the model file",
            received=f"{os.fspath(path)} ({os_reason(exc)})",
            expected="a readable model file",
            fix="check the --model path",
        ) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(
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


@dataclass(frozen=True)
class PartState:
    """What one shard's part file holds, as :meth:`ShardedPrediction.check` found it.

    Attributes:
        index: The shard, 0 … ``shards`` - 1.
        path: The part file.
        status: ``"finished"`` (a complete part of this run), ``"missing"`` (no part yet) or ``"bad"``
            (a part that must not be merged: damaged, or made by another run).
        reason: For ``"bad"``: what is wrong, e.g. ``"was made with another model file (…)"``.
        failed: For ``"finished"`` parts checked row by row: how many images could not be classified.
    """

    index: int
    path: str
    status: str
    reason: str = ""
    failed: int = 0

    @property
    def finished(self) -> bool:
        """True for a complete part of this run."""
        return self.status == "finished"


@dataclass(frozen=True)
class ShardResult:
    """What :meth:`ShardedPrediction.predict` did for one shard.

    Attributes:
        index: The shard.
        path: Its part file.
        images: How many images its share holds.
        failed: How many of them could not be classified.
        reused: True if a finished part of this run was there already (nothing was classified).
        replaced: Why the part that was there was not reused (``None`` if there was none, or it was).
    """

    index: int
    path: str
    images: int
    failed: int
    reused: bool
    replaced: str | None = None


class _BadPart(Exception):
    """A check of a part failed; the message says why (``PartState.reason``)."""


def _short(digest: object) -> str:
    return f"{digest}"[:12]


class ShardedPrediction:
    """One sharded prediction run: a model file, an input list cut into shares, a folder of part files.

    Every process of the run builds the same object (same model file, images in the same order, same
    options and shard count) and calls :meth:`predict` for its own shard; one process then merges.

    Args:
        model: The model file (.imgclf, or .onnx from ``imgclf export``); its bytes identify the run.
        images: The image paths, in the order a single process would classify them.
        parts: The folder of the part files (created when needed).
        shards: How many shares: 1 … min(len(images), ``MAX_SHARDS``).
        top_k: As :meth:`imgclf.Classifier.iter_predict`.
        batch_size: As :meth:`imgclf.Classifier.iter_predict` (part of the run: results may differ in
            the last bits across batch sizes).
        max_pixels: Pixel cap for the images (default: the library's cap).
        precision: ``auto``, ``fp32`` or ``bf16`` (:func:`imgclf.precision.setup_precision`, the choice
            shown on stderr), applied when the model loads; ``None`` leaves the model as
            :func:`imgclf.load` gives it (fp32). A bf16 choice is part of the run (its options): parts
            classified in another precision are not merged with it.

    Raises:
        UsageError: A shard count out of range, or no images.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        images: Sequence[str | os.PathLike],
        parts: str | os.PathLike,
        shards: int,
        *,
        top_k: int = 1,
        batch_size: int = 64,
        max_pixels: int | None = None,
        precision: str | None = None,
    ) -> None:
        self.model = os.fspath(model)
        self.images = [os.fspath(p) for p in images]
        if not self.images:
            raise UsageError(
                "no images to classify", received="an empty input list", expected="at least one image path"
            )
        check_shard_count(shards, len(self.images))
        self.parts = os.fspath(parts)
        self.shards = shards
        self.max_pixels = max_pixels
        if precision is not None:
            from imgclf.precision import check_precision

            check_precision(precision)
        self.precision = precision
        # The options that change results; max_pixels only when given, so the default run's key is stable.
        self.options: dict[str, Any] = {"top_k": top_k, "batch_size": batch_size}
        if max_pixels is not None:
            self.options["max_pixels"] = max_pixels
        self._classifier: Any = None
        self._model_digest: str | None = None
        self._inputs_digest = inputs_digest(self.images)
        self._headers: dict[int, dict[str, Any]] = {}

    @property
    def classifier(self) -> Any:
        """The model, loaded on first use (:func:`imgclf.load`)."""
        if self._classifier is None:
            from imgclf.loading import load  # .imgclf or .onnx (onnxruntime, no torch)

            cap = {} if self.max_pixels is None else {"max_pixels": self.max_pixels}
            clf = load(self.model, **cap)
            if self.precision is not None:
                from imgclf.precision import setup_precision

                if setup_precision(clf, self.precision, self.model).precision == "bf16":
                    self.options["precision"] = "bf16"  # only then: an fp32 run's key stays as before
                    self._headers.clear()
            self._classifier = clf
        return self._classifier

    @property
    def model_digest(self) -> str:
        """SHA-256 of the model file's bytes (read once)."""
        if self._model_digest is None:
            self._model_digest = file_digest(self.model)
        return self._model_digest

    def _index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.shards:
            raise UsageError(
                "no such shard", received=repr(index), expected=f"0 … {self.shards - 1}", fix="count from 0"
            )
        return index

    def share(self, index: int) -> list[str]:
        """The images shard ``index`` classifies."""
        return share(self.images, self._index(index), self.shards)

    def part_path(self, index: int) -> str:
        """Where shard ``index`` keeps its part."""
        return os.path.join(self.parts, f"shard-{self._index(index)}-of-{self.shards}.jsonl")

    def header(self, index: int) -> dict[str, Any]:
        """The header a finished part of shard ``index`` has (its images are stat'ed on first call)."""
        if self.precision is not None:
            _ = self.classifier  # loaded first: its precision choice belongs to the options in the header
        if index not in self._headers:
            start, stop = share_bounds(len(self.images), self._index(index), self.shards)
            self._headers[index] = {
                "imgclf_predict_part": PART_FORMAT,
                "model": self.model_digest,
                "inputs": self._inputs_digest,
                "images": len(self.images),
                "options": self.options,
                "shard": index,
                "shards": self.shards,
                "start": start,
                "stop": stop,
                "rows": stop - start,
                "files": files_digest(self.images[start:stop]),
            }
        return self._headers[index]

    def check(self, index: int, *, rows: bool = True) -> PartState:
        """Check shard ``index``'s part: its header against this run and, with ``rows``, every row.

        Args:
            index: The shard.
            rows: Also read every row (without: the header only, which is cheap).

        Returns:
            Its state: finished, missing or bad (with the reason).
        """
        path = self.part_path(index)
        if not os.path.lexists(path):
            return PartState(index, path, "missing")
        failed = 0
        lines = self._lines(path)
        try:
            self._check_header(index, next(lines, None))
            if rows:
                for p in self._rows(index, lines):
                    failed += p.error is not None
        except _BadPart as bad:
            return PartState(index, path, "bad", str(bad))
        except OSError as exc:
            from imgclf.fileio.reading import os_reason

            if isinstance(exc, FileNotFoundError):  # removed since (a merge cleaning up)
                return PartState(index, path, "missing")
            return PartState(index, path, "bad", f"cannot be read ({os_reason(exc)})")
        finally:
            lines.close()
        return PartState(index, path, "finished", failed=failed)

    def states(self, *, rows: bool = False) -> list[PartState]:
        """:meth:`check` of every shard's part, headers only unless ``rows``."""
        return [self.check(j, rows=rows) for j in range(self.shards)]

    def being_written(self, index: int) -> bool:
        """True while a temporary file of shard ``index``'s part exists (its writer is at work, or died)."""
        return bool(self._growth(index))

    def predict(self, index: int) -> ShardResult:
        """Classify shard ``index`` into its part, unless a finished part of this run is there already.

        A part that is there but fails its check (another run's, damaged) is replaced. Images that
        cannot be decoded become rows with an ``error``, as ``iter_predict(errors="return")`` gives them.

        Raises:
            StorageError: If the part cannot be written.
            ModelFileError: If the model cannot be read.
        """
        state = self.check(index)
        mine = self.share(index)
        if state.finished:
            return ShardResult(index, state.path, len(mine), state.failed, reused=True)
        _make_folder(self.parts)
        clf = self.classifier
        options = {"top_k": self.options["top_k"], "batch_size": self.options["batch_size"]}
        predictions = clf.iter_predict(mine, errors="return", **options)
        failed = self._write(state.path, self.header(index), predictions)
        return ShardResult(index, state.path, len(mine), failed, reused=False, replaced=state.reason or None)

    def wait(self, timeout: float, *, poll: float = POLL_SECONDS, name: str = "shard") -> None:
        """Wait until every part is finished; fail naming a shard whose part has not grown for ``timeout`` s.

        Args:
            timeout: Seconds without growth of a part's temporary file before giving up on its shard.
            poll: Seconds between looks.
            name: What a shard is called in the error (``"rank"`` under torchrun).

        Raises:
            StorageError: Naming the first shard that gave no sign of progress for ``timeout`` seconds.
        """
        seen = {j: (self._growth(j), time.monotonic()) for j in range(self.shards)}
        while True:
            waiting = [s for s in self.states() if not s.finished]
            if not waiting:
                return
            now = time.monotonic()
            for s in waiting:
                size = self._growth(s.index)
                if size != seen[s.index][0]:
                    seen[s.index] = (size, now)
                elif now - seen[s.index][1] > timeout:
                    state = f"a part that {s.reason}:" if s.reason else "no part"
                    raise StorageError(
                        f"{name} {s.index} did not finish its share of the prediction",
                        received=f"{state} {s.path}, and no progress for {timeout:g} s",
                        expected=f"all {self.shards} {name}s to write their parts",
                        fix=f"check {name} {s.index}'s log; re-run the same command (finished parts are "
                        "kept), or allow more time",
                    )
            time.sleep(poll)

    def merge(self) -> Iterator[Prediction]:
        """Check every part, row by row, then return their predictions in input order.

        Nothing is returned unless the whole set is complete and every part belongs to this run, so a
        caller never writes a partial or mixed result.

        Raises:
            StorageError: Naming the first part that is missing, damaged or made by another run (another
                model file, another input list or options, another shard, images changed since), or
                whose rows are not the predictions of its share.
        """
        for state in self.states(rows=True):
            if not state.finished:
                raise self.refusal(state)
        return self._merged()

    def refusal(self, state: PartState) -> StorageError:
        """The error that names a part which cannot be merged, and what to do about it."""
        if state.status == "missing":
            return StorageError(
                "cannot merge the prediction parts: a part is missing",
                received=f"no part {state.path}",
                expected=f"all {self.shards} parts of this run",
                fix=f"classify shard {state.index} of {self.shards} first",
            )
        return StorageError(
            f"cannot merge the prediction parts: {state.path} {state.reason}",
            received=state.path,
            expected=f"shard {state.index} of {self.shards}'s part of this run (same model file, images "
            "and options)",
            fix=f"classify shard {state.index} of {self.shards} again with this run's model, images and "
            f"options (it replaces the part), or delete {state.path}",
        )

    def remove_parts(self) -> None:
        """Remove the parts, the merge lock and, if nothing else is left in it, the parts folder."""
        for j in range(self.shards):
            with contextlib.suppress(OSError):
                os.unlink(self.part_path(j))
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.parts, "merge.lock"))
        with contextlib.suppress(OSError):
            os.rmdir(self.parts)  # only if nothing else (another sharding's parts) is left in it

    @contextlib.contextmanager
    def merge_lock(self) -> Iterator[bool]:
        """An exclusive lock on the parts folder while merging; ``False`` if another process holds it."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock; two processes finishing at the same instant may both merge
            yield True
            return
        try:
            fd = os.open(os.path.join(self.parts, "merge.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder is gone: another process merged and cleaned up
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    # -- the part files ---------------------------------------------------------------------------------

    def _merged(self) -> Iterator[Prediction]:
        for j in range(self.shards):
            path = self.part_path(j)
            lines = self._lines(path)
            try:
                self._check_header(j, next(lines, None))
                yield from self._rows(j, lines)
            except _BadPart as bad:  # changed since it was checked
                raise self.refusal(PartState(j, path, "bad", str(bad))) from None
            except OSError:
                raise self.refusal(PartState(j, path, "missing")) from None
            finally:
                lines.close()

    @staticmethod
    def _write(path: str, header: dict[str, Any], predictions: Iterable[Any]) -> int:
        """Write a part atomically (it exists only once every row is in it); return how many failed.

        The temporary file is flushed every few rows, so its growth shows the shard is alive.
        """
        failed = 0
        with atomic_open(path, "w") as fh:
            fh.write(json.dumps(header) + "\n")
            for n, p in enumerate(predictions, 1):
                fh.write(_row(p) + "\n")
                failed += p.error is not None
                if n % 64 == 0:
                    fh.flush()
        return failed

    @staticmethod
    def _lines(path: str) -> Generator[bytes, None, None]:
        fd, st = open_for_reading(path)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(st.st_mode):
                raise _BadPart("is not a regular file")
            remaining = st.st_size  # never read past what the file held when opened
            while remaining > 0:
                line = fh.readline(min(remaining, MAX_ROW_BYTES + 1))
                if not line:
                    break
                remaining -= len(line)
                if not line.endswith(b"\n"):
                    raise _BadPart("is damaged: a line is cut off or longer than the limit")
                yield line

    def _check_header(self, index: int, first: bytes | None) -> None:
        try:
            found = json.loads(first) if first else None
        except ValueError:
            found = None
        if not isinstance(found, dict) or "imgclf_predict_part" not in found:
            raise _BadPart("is damaged: it does not start with a prediction part's header")
        if found.get("imgclf_predict_part") != PART_FORMAT:
            raise _BadPart(
                f"was written by another imgclf version (part format {found.get('imgclf_predict_part')!r}, "
                f"this one reads {PART_FORMAT})"
            )
        want = self.header(index)
        if (found.get("shard"), found.get("shards")) != (index, self.shards):
            raise _BadPart(
                f"holds the predictions of shard {found.get('shard')!r} of {found.get('shards')!r}, "
                f"not of shard {index} of {self.shards} (a copied or renamed part)"
            )
        if found.get("model") != want["model"]:
            raise _BadPart(
                f"was made with another model file (SHA-256 {_short(found.get('model'))}…, this run's "
                f"{_short(want['model'])}…)"
            )
        if found.get("inputs") != want["inputs"]:
            raise _BadPart(
                f"was made for another input list ({found.get('images')!r} images, this run has "
                f"{want['images']}, in another order or with other paths)"
            )
        if found.get("options") != want["options"]:
            raise _BadPart(
                f"was made with other options ({found.get('options')!r}, this run's {want['options']!r})"
            )
        for key in ("start", "stop", "rows", "images"):
            if found.get(key) != want[key]:
                raise _BadPart(
                    f"is damaged: its header says {key} {found.get(key)!r}, shard {index} of {self.shards} "
                    f"has {want[key]}"
                )
        if found.get("files") != want["files"]:
            raise _BadPart("was made before some of its images changed (size or modification time)")

    def _rows(self, index: int, lines: Iterator[bytes]) -> Iterator[Prediction]:
        """The rows after the header, each checked: a prediction of the image at its input position."""
        from imgclf.classifier import Prediction  # the predict path has loaded it already

        classes = list(self.classifier.class_names)
        multi_label = getattr(self.classifier, "thresholds", None) is not None
        start, stop = share_bounds(len(self.images), index, self.shards)
        n = 0
        for line in lines:
            if start + n >= stop:
                raise _BadPart(f"is damaged: it holds more rows than the {stop - start} its header says")
            try:
                row = _checked_row(json.loads(line), classes, multi_label)
            except (ValueError, TypeError, KeyError):
                raise _BadPart(f"is damaged: row {n + 1} is not a prediction") from None
            if row["source"] != self.images[start + n]:
                raise _BadPart(
                    f"is damaged: row {n + 1} is for {row['source']!r}, expected {self.images[start + n]!r} "
                    f"(input {start + n + 1})"
                )
            yield Prediction(**row)
            n += 1
        if n != stop - start:
            raise _BadPart(f"is damaged: it holds {n} rows, its header says {stop - start}")

    def _growth(self, index: int) -> tuple[int, ...]:
        """Sizes of shard ``index``'s temporary part files: they grow while it classifies."""
        name = os.path.basename(self.part_path(index))
        try:
            with os.scandir(self.parts) as entries:
                temps = [e for e in entries if e.name.startswith(f".{name}.") and e.name.endswith(TMP_SUFFIX)]
                return tuple(sorted(e.stat().st_size for e in temps))
        except OSError:
            return ()


def _row(p: Any) -> str:
    row = {
        "source": p.source,
        "label": p.label,
        "index": p.index,
        "confidence": p.confidence,
        "probabilities": p.probabilities,
        "top_k": [list(pair) for pair in p.top_k],
        "error": p.error,
        "unlike_training_data": p.unlike_training_data,
        "labels": p.labels,
    }
    return json.dumps(row)  # ASCII: undecodable names travel as surrogate escapes and come back


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_label(row: dict[str, Any], classes: list[str], multi_label: bool) -> bool:
    """The row's answer has this model's kind: a class name, or (multi-label) a set of classes in class
    order whose ``label`` is them joined by ``|`` (``none`` when empty)."""
    from imgclf.classifier import label_text

    labels = row["labels"]
    if not multi_label:
        return labels is None and row["label"] == classes[row["index"]]
    if not isinstance(labels, list) or not all(isinstance(c, str) and c in classes for c in labels):
        return False
    in_order = [c for c in classes if c in labels]
    return labels == in_order and row["label"] == label_text(labels)


def _checked_row(row: object, classes: list[str], multi_label: bool = False) -> dict[str, Any]:
    """A row's fields, typed as a :class:`imgclf.Prediction` of this model's classes; else ``ValueError``."""
    if not isinstance(row, dict) or set(row) != _ROW_KEYS or not isinstance(row["source"], str):
        raise ValueError("not a prediction")
    top_k = row["top_k"]
    if not isinstance(top_k, list) or not all(isinstance(t, list) and len(t) == 2 for t in top_k):
        raise ValueError("bad top_k")
    row["top_k"] = [(label, prob) for label, prob in top_k]
    if row["error"] is not None:
        failed_ok = row["label"] is None and row["labels"] is None and row["unlike_training_data"] is None
        if not isinstance(row["error"], str) or not failed_ok:
            raise ValueError("bad failed row")
        return row
    probs, index = row["probabilities"], row["index"]
    good = (
        isinstance(index, int)
        and not isinstance(index, bool)
        and 0 <= index < len(classes)
        and _checked_label(row, classes, multi_label)
        and (row["unlike_training_data"] is None or isinstance(row["unlike_training_data"], bool))
        and _number(row["confidence"])
        and isinstance(probs, dict)
        and list(probs) == classes
        and all(_number(v) and math.isfinite(v) for v in probs.values())
        and bool(row["top_k"])
        and all(label in probs and _number(prob) for label, prob in row["top_k"])
    )
    if not good:
        raise ValueError("bad row")
    return row


def _make_folder(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        from imgclf.fileio.reading import os_reason

        raise StorageError(
            "cannot create the folder for the prediction parts",
            received=f"{folder} ({os_reason(exc)})",
            expected="a folder that can be created (beside --output, for imgclf predict)",
            fix=f"move or remove what is at {folder}, or choose another place for the parts",
        ) from None
