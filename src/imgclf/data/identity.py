"""What a decoded dataset is: its file table, the fingerprint recorded in run.json and the model file,
and files that appear in more than one class or split.

Usage::

    files = file_table(dataset, decoded)                     # {split: [[relative path, label, digest], ...]}
    fp = table_fingerprint(dataset.class_names, files)        # the same as fingerprint(dataset, decoded)
    note = duplicate_report(decoded)                          # None, or one line about possible leakage
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np

from imgclf.data.decode import DecodedSplit
from imgclf.data.folders import Dataset


def duplicate_report(splits: dict[str, DecodedSplit]) -> str | None:
    """Describe identical files found in more than one class or split (possible leakage), if any."""
    where: dict[str, set[tuple[str, object]]] = {}
    for split, dec in splits.items():
        for digest, label in zip(dec.digests, dec.labels.tolist(), strict=True):
            # a multi-label row is a list: hashed as a tuple
            where.setdefault(digest, set()).add((split, tuple(label) if isinstance(label, list) else label))
    clashes = [d for d, places in where.items() if len(places) > 1]
    if not clashes:
        return None
    return f"{len(clashes)} identical file(s) appear in more than one class or split (possible leakage)"


def fingerprint(dataset: Dataset, splits: dict[str, DecodedSplit]) -> str:
    """SHA-256 over class names and every (split, relative path, label, content digest)."""
    return table_fingerprint(dataset.class_names, file_table(dataset, splits))


def table_fingerprint(class_names: Sequence[str], table: dict[str, list]) -> str:
    """:func:`fingerprint` of a decoded :func:`file_table` (rows ``[relative path, label, digest]``)."""
    h = hashlib.sha256()
    h.update("\x00".join(class_names).encode("utf-8", "surrogateescape"))
    for split in sorted(table):
        for rel, label, digest in table[split]:
            h.update(f"\x01{split}\x00{rel}\x00{label}\x00{digest}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def file_table(dataset: Dataset, decoded: dict[str, DecodedSplit] | None = None) -> dict[str, list]:
    """Every file per split as ``[relative path, label]`` (plus its content digest once decoded); a
    multi-label file's label is the list of its class indices."""
    out: dict[str, list] = {}
    if decoded is None:
        for split, samples in dataset.splits.items():
            out[split] = [
                [os.path.relpath(s.path, dataset.root), list(s.labels) if s.labels is not None else s.label]
                for s in samples
            ]
        return out
    for split, dec in decoded.items():
        multi = dec.labels.ndim == 2
        labels = [np.flatnonzero(r).tolist() for r in dec.labels] if multi else dec.labels.tolist()
        rows = zip(dec.paths, labels, dec.digests, strict=True)
        out[split] = [[os.path.relpath(p, dataset.root), label, digest] for p, label, digest in rows]
    return out
