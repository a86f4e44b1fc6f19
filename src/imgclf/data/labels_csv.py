"""Labels from a CSV file → a :class:`~imgclf.data.folders.Dataset`, like a folder of class folders.

The file has a header row naming its columns (any order, case-insensitive): the image path
(``path``, ``image``, ``file`` or ``filename``), relative to the CSV's folder; its label (``label``,
``labels`` or ``class``); optionally its split (``split``: ``train``/``training``, ``val``/``validation``,
``test``/``testing``). A label cell holding several labels separated by :data:`LABEL_DELIMITER` (``|``,
e.g. ``cat|dog``) makes the dataset multi-label; such a dataset (or any, with ``multi_label=True``)
gives every sample its set of class indices in ``Sample.labels``, and there an empty label cell is an
image showing none of the classes (in a single-label dataset it is an error). Without a split column
(or for splits it leaves empty) the rows are split like a flat folder: stratified per class (multi-label:
per rarest label), seeded, so the same file and seed always give the same split.

The file is read streaming, one bounded line at a time (a progress callback sees the bytes), so a CSV of
millions of rows never sits in memory as text. Problems name their line numbers: a missing column, an
empty path or label, an unknown split, a path leaving the CSV's folder (``..`` or an absolute path
elsewhere: refused), a missing file, a path listed twice with different labels are errors, all reported
at once; a path listed twice with the same label is skipped with a warning giving the count.

Usage::

    ds = scan_labels_csv("labels.csv", val_split=0.1, test_split=0.2, seed=42)
    print(ds.class_names, ds.counts()["training"], ds.multi_label)
    ds = scan_source("dataset-or-labels.csv", val_split=0.1, test_split=0.2, seed=42)  # either kind
"""

from __future__ import annotations

import csv
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from typing import BinaryIO

from imgclf.config import SEED, SPLITS, TEST_SPLIT, VAL_SPLIT
from imgclf.data.folders import _ALIASES, Dataset, Sample, _stratified, scan_dataset
from imgclf.errors import DatasetError, listed
from imgclf.fileio.reading import open_for_reading, os_reason

LABEL_DELIMITER = "|"
PATH_COLUMNS = ("path", "image", "file", "filename")
LABEL_COLUMNS = ("label", "labels", "class")
SPLIT_COLUMN = "split"
MAX_CSV_BYTES = 1 << 32  # 4 GiB: ten million rows of generous paths
MAX_LINE_BYTES = 1 << 16  # one row; a longer one is not a labels file
MAX_ROWS = 20_000_000
MAX_PROBLEMS_SHOWN = 10
Progress = Callable[[str, int], Callable[[int], None] | None]


def is_labels_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a labels CSV (by its ``.csv`` extension) rather than a dataset folder."""
    return os.fspath(path).lower().endswith(".csv") and not os.path.isdir(path)


def scan_source(
    source: str | os.PathLike,
    *,
    val_split: float = VAL_SPLIT,
    test_split: float = TEST_SPLIT,
    seed: int = SEED,
    multi_label: bool = False,
    progress: Progress | None = None,
) -> Dataset:
    """A dataset folder (:func:`~imgclf.data.folders.scan_dataset`) or a labels CSV (:func:`scan_labels_csv`).

    Raises:
        DatasetError: As those functions do.
    """
    if is_labels_file(source):
        return scan_labels_csv(
            source,
            val_split=val_split,
            test_split=test_split,
            seed=seed,
            multi_label=multi_label,
            progress=progress,
        )
    return scan_dataset(source, val_split=val_split, test_split=test_split, seed=seed)


def _lines(fh: BinaryIO, name: str, tick: Callable[[int], None] | None) -> Iterator[str]:
    """The file's lines as text, each at most :data:`MAX_LINE_BYTES` (a longer one is an error)."""
    number = 0
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if tick is not None:
            tick(len(raw))
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise DatasetError(
                f"line {number} of the labels file is too long",
                received=f"{name} (more than {MAX_LINE_BYTES} bytes)",
                expected="one row per line: path,label[,split]",
                fix="check that the file is a labels CSV",
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DatasetError(
                f"line {number} of the labels file is not UTF-8 text",
                received=name,
                expected="a UTF-8 CSV file",
                fix="save the CSV as UTF-8",
            ) from None
        yield text.lstrip("\ufeff") if number == 1 else text


def _open(path: str) -> tuple[BinaryIO, int]:
    """The CSV opened for binary reading (a regular file, at most :data:`MAX_CSV_BYTES`) and its size."""
    try:
        fd, st = open_for_reading(path)
    except OSError as exc:
        raise DatasetError(
            "cannot read the labels file",
            received=f"{path} ({os_reason(exc)})",
            expected="a readable CSV file",
            fix="check the --labels path",
        ) from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CSV_BYTES:
        os.close(fd)
        raise DatasetError(
            "the labels file is not a regular file of a usable size",
            received=f"{path} ({st.st_size} bytes)",
            expected=f"a regular CSV file of at most {MAX_CSV_BYTES} bytes",
            fix="pass the labels CSV itself",
        )
    return os.fdopen(fd, "rb"), st.st_size


def _columns(header: list[str], name: str) -> tuple[int, int, int | None]:
    """The indices of the path, label and (optional) split columns in the header row."""
    lowered = [h.strip().lower() for h in header]

    def find(options: tuple[str, ...]) -> int | None:
        return next((lowered.index(o) for o in options if o in lowered), None)

    path_col, label_col, split_col = find(PATH_COLUMNS), find(LABEL_COLUMNS), find((SPLIT_COLUMN,))
    if path_col is None or label_col is None:
        raise DatasetError(
            "line 1 of the labels file lacks a path or a label column",
            received=f"{name} (header: {', '.join(header) or 'empty'})",
            expected=f"a header naming a path column ({'/'.join(PATH_COLUMNS)}) and a label column "
            f"({'/'.join(LABEL_COLUMNS)}), optionally '{SPLIT_COLUMN}'",
            fix="add a header row such as: path,label,split",
        )
    return path_col, label_col, split_col


def _inside(root: str, cell: str) -> str | None:
    """The absolute path of ``cell`` (relative to ``root``), or ``None`` when it leaves ``root``."""
    full = os.path.realpath(os.path.join(root, cell))
    return full if os.path.commonpath([root, full]) == root and full != root else None


class _Rows:
    """What reading the rows gathers: samples by path, problems and skipped duplicates."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[tuple[str, ...], str | None, int]] = {}  # path -> labels, split, line
        self.problems: list[str] = []
        self.dropped = 0
        self.multi = False
        self.empty: list[tuple[int, str]] = []  # (line, path) of rows without a label

    def problem(self, line: int, text: str) -> None:
        self.problems.append(f"line {line}: {text}")


def _read_rows(path: str, root: str, progress: Progress | None) -> _Rows:
    fh, size = _open(path)
    name = os.path.basename(path)
    tick = progress(f"reading {name}", size) if progress and size else None
    out = _Rows()
    old_limit = csv.field_size_limit(MAX_LINE_BYTES)
    try:
        with fh:
            reader = csv.reader(_lines(fh, path, tick), strict=True)
            header = next(reader, None)
            if header is None:
                raise DatasetError(
                    "the labels file is empty",
                    received=path,
                    expected="a header row and one row per image",
                    fix="write a header (path,label) and a row per image",
                )
            path_col, label_col, split_col = _columns(header, path)
            width = max(path_col, label_col, split_col or 0) + 1
            for row in reader:
                _read_row(row, reader.line_num, width, (path_col, label_col, split_col), root, out)
                if len(out.rows) > MAX_ROWS:
                    raise DatasetError(
                        "the labels file has too many rows",
                        received=path,
                        expected=f"at most {MAX_ROWS} rows",
                        fix="split the dataset",
                    )
    except csv.Error as exc:
        raise DatasetError(
            f"line {reader.line_num} of the labels file is not valid CSV",
            received=f"{path} ({exc})",
            expected="comma-separated rows, quotes balanced",
            fix="check the quoting on that line",
        ) from None
    finally:
        csv.field_size_limit(old_limit)
    return out


def _read_row(
    row: list[str], line: int, width: int, cols: tuple[int, int, int | None], root: str, out: _Rows
) -> None:
    if not row or not any(cell.strip() for cell in row):
        return  # blank lines are not rows
    if len(row) < width:
        out.problem(line, f"{len(row)} column(s), the header names {width}")
        return
    path_col, label_col, split_col = cols
    cell, label_cell = row[path_col].strip(), row[label_col].strip()
    labels = tuple(sorted({p.strip() for p in label_cell.split(LABEL_DELIMITER) if p.strip()}))
    out.multi = out.multi or LABEL_DELIMITER in label_cell
    split = None
    if split_col is not None and row[split_col].strip():
        split = _ALIASES.get(row[split_col].strip().lower())
        if split is None:
            out.problem(line, f"unknown split {row[split_col].strip()!r} (train, val or test)")
            return
    if not cell:
        out.problem(line, "empty path")
        return
    full = _inside(root, cell)
    if full is None:
        out.problem(line, f"path {cell!r} leaves the CSV's folder")
        return
    if full in out.rows:
        first_labels, first_split, first_line = out.rows[full]
        if (first_labels, first_split) != (labels, split):
            out.problem(line, f"{cell!r} is also on line {first_line} with another label or split")
        else:
            out.dropped += 1
        return
    if not os.path.isfile(full):
        out.problem(line, f"file {cell!r} does not exist")
        return
    if not labels:  # an image without labels: valid in a multi-label dataset only (judged at the end)
        out.empty.append((line, cell))
    out.rows[full] = (labels, split, line)


def scan_labels_csv(
    path: str | os.PathLike,
    *,
    val_split: float = VAL_SPLIT,
    test_split: float = TEST_SPLIT,
    seed: int = SEED,
    multi_label: bool = False,
    progress: Progress | None = None,
) -> Dataset:
    """Read a labels CSV into a :class:`Dataset` whose root is the CSV's folder.

    Args:
        path: The CSV file.
        val_split, test_split, seed: How rows without a split are divided (stratified, seeded).
        multi_label: Treat every label cell as a set of labels even if none holds the delimiter.
        progress: ``progress(description, total_bytes)`` returns a callback advanced by bytes read.

    Raises:
        DatasetError: Every problem of the file at once, each with its line number.
    """
    path = os.fspath(path)
    root = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    found = _read_rows(path, root, progress)
    multi = multi_label or found.multi
    if not multi:
        for line, cell in found.empty:
            found.problem(line, f"empty label for {cell!r}")
        found.problems.sort(key=lambda text: int(text.split(":")[0].split()[1]))
    if found.problems:
        shown = found.problems[:MAX_PROBLEMS_SHOWN]
        more = len(found.problems) - len(shown)
        raise DatasetError(
            f"labels file {path!r} has {len(found.problems)} problem(s): {listed(shown)}"
            + (f" (and {more} more)" if more else ""),
            fix="fix the rows listed (columns: path relative to the CSV's folder, label, optional split)",
        )
    class_names = sorted({label for labels, _, _ in found.rows.values() for label in labels})
    if len(class_names) < 2:
        raise DatasetError(
            f"labels file {path!r} names {len(class_names)} class(es) {class_names}; need at least 2",
            fix="label the images with at least two classes",
        )
    notes = []
    if found.dropped:
        notes.append(f"skipped {found.dropped} row(s) listing an image again with the same label")
    index = {name: i for i, name in enumerate(class_names)}
    splits = _assign_splits(found.rows, index, (val_split, test_split), seed, multi, notes)
    return Dataset(
        root=root,
        layout="csv",
        class_names=class_names,
        splits=splits,
        warnings=notes,
        labels_file=os.path.abspath(path),
        multi_label=multi,
    )


def _assign_splits(
    rows: dict[str, tuple[tuple[str, ...], str | None, int]],
    index: dict[str, int],
    fractions: tuple[float, float],
    seed: int,
    multi: bool,
    notes: list[str],
) -> dict[str, list[Sample]]:
    """Samples per split: the CSV's split where given, the rest stratified (by the rarest label)."""
    counts = Counter(label for labels, _, _ in rows.values() for label in labels)
    given: dict[str, list[str]] = {s: [] for s in SPLITS}
    free: dict[str, list[str]] = {}
    for full, (labels, split, _) in rows.items():
        if split is not None:
            given[split].append(full)
        else:
            stratum = min(labels, key=lambda name: (counts[name], name)) if labels else ""
            free.setdefault(stratum, []).append(full)
    wanted = dict(zip(("validation", "testing"), fractions, strict=True))
    carve = {s: f for s, f in wanted.items() if not given[s] and f > 0}
    if free:
        parts = _stratified(free, carve, seed)
        for split, per_class in parts.items():
            given[split] += [p for name in sorted(per_class) for p in per_class[name]]
        if carve:
            notes.append(
                "split rows without a split into "
                + ", ".join(f"{s} {f:g}" for s, f in carve.items())
                + " (stratified, seeded; the split is written to the run folder)"
            )

    def sample(full: str) -> Sample:
        labels = tuple(index[name] for name in rows[full][0])
        return Sample(full, labels[0] if labels else -1, labels if multi else None)

    return {s: [sample(p) for p in sorted(given[s], key=lambda p: (rows[p][0], p))] for s in SPLITS}


def split_table(ds: Dataset) -> str:
    """The dataset's split as CSV text (``path,label,split``; labels joined by :data:`LABEL_DELIMITER`),
    the record of a split the run drew itself."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    for split, samples in ds.splits.items():
        for s in samples:
            labels = s.labels if s.labels is not None else (s.label,)
            names = LABEL_DELIMITER.join(ds.class_names[i] for i in labels)
            writer.writerow([os.path.relpath(s.path, ds.root), names, split])
    return buf.getvalue()
