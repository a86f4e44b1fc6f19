"""Dataset folders → class names and the samples of each split (nothing is decoded here).

Two layouts are understood:

* **split folders**: ``ROOT/{training,validation,testing}/<class>/...`` (also ``train/val/test``);
  a missing validation or testing folder is carved out of training by ``val_split``/``test_split``.
* **flat**: ``ROOT/<class>/...``, split into training/validation/testing by ``val_split`` and
  ``test_split``, stratified per class and seeded.

Class order is the sorted class-folder names. Hidden and system entries (``.git``, ``__MACOSX``,
``.DS_Store``, ``Thumbs.db``, ...) are neither classes nor samples (listing the files of a folder is
:mod:`imgclf.data.listing`'s job). Every structural problem is reported at once, before any image is
decoded; decoding the samples is :mod:`imgclf.data.decode`'s job.

Usage::

    ds = scan_dataset("dataset", val_split=0.1, test_split=0.2, seed=42)
    print(ds.class_names, ds.counts()["training"])
"""

from __future__ import annotations

import os
import random
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from imgclf.config import SEED, SPLITS, TEST_SPLIT, VAL_SPLIT
from imgclf.data.listing import is_hidden, odd_entries_note, subfolders, walk_files
from imgclf.errors import DatasetError, listed
from imgclf.images.preprocess import is_image_name

_ALIASES = {
    "training": "training",
    "train": "training",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "testing": "testing",
    "test": "testing",
}


@dataclass(frozen=True)
class Sample:
    """One image file and its class index (multi-label: also all its class indices in ``labels``)."""

    path: str
    label: int
    labels: tuple[int, ...] | None = None


@dataclass
class Dataset:
    """A scanned dataset: class names in index order and the samples of each split.

    A dataset read from a labels CSV (:mod:`imgclf.data.labels_csv`) has ``layout`` ``csv``, the CSV's
    folder as ``root``, the CSV in ``labels_file``, and may be ``multi_label``.
    """

    root: str
    layout: str
    class_names: list[str]
    splits: dict[str, list[Sample]]
    warnings: list[str] = field(default_factory=list)
    labels_file: str | None = None
    multi_label: bool = False

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class for each split: ``{"training": {"cat": 10, ...}, ...}`` (multi-label: images
        carrying each label)."""
        out = {}
        for split, samples in self.splits.items():
            found = Counter(i for s in samples for i in (s.labels if s.labels is not None else (s.label,)))
            out[split] = {name: found[i] for i, name in enumerate(self.class_names)}
        return out


def _class_files(folder: str, problems: list[str], odd: list[str]) -> dict[str, list[str]]:
    """Image files per class folder; everything else goes to ``odd`` (non-image files included)."""
    classes = {}
    for name in subfolders(folder):
        found = walk_files(os.path.join(folder, name), odd)
        files = [f for f in found if is_image_name(f)]
        odd += [f for f in found if not is_image_name(f)]  # readme.txt, labels.csv: not samples
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
    return DatasetError(
        f"dataset {root!r} has {len(problems)} problem(s): {listed(problems)}",
        fix="fix the folders listed (layout: ROOT/training/<class>/*.png or ROOT/<class>/*.png)",
    )


def scan_dataset(
    root: str | os.PathLike, *, val_split: float = VAL_SPLIT, test_split: float = TEST_SPLIT, seed: int = SEED
) -> Dataset:
    """Find classes and samples under ``root``; report every structural problem at once.

    Raises:
        DatasetError: Missing/empty root, fewer than two classes, empty class folders, class sets that
            differ between splits, or a split layout without a training folder.
    """
    root = os.fspath(root)
    subdirs = _root_folders(root)
    problems: list[str] = []
    notes: list[str] = []
    odd: list[str] = []
    if any(d.lower() in _ALIASES for d in subdirs):
        layout = "splits"
        class_names, files = _split_files(root, subdirs, (val_split, test_split), seed, problems, notes, odd)
    else:
        layout = "flat"
        classes = _class_files(root, problems, odd)
        class_names = sorted(classes)
        files = _stratified(classes, {"validation": val_split, "testing": test_split}, seed)
        loose = _loose_images(root)
        if loose:  # not samples of any class: say so rather than drop them silently
            where = "are in no class folder (each class is a folder: ROOT/<class>/*.png)"
            (problems if len(class_names) < 2 else notes).append(
                f"{len(loose)} image(s) directly in {root!r} {where}: {listed(loose, 3)}"
            )
    if len(class_names) < 2:
        problems.insert(0, f"found {len(class_names)} class folder(s) {class_names}; need at least 2")
    if problems:
        raise _problems_error(problems, root)
    others = [p for p in odd if os.path.isfile(p)]  # regular files without an image extension
    odd = [p for p in odd if not os.path.isfile(p)]
    if odd:
        notes.append(odd_entries_note(odd))
    if others:
        shown = ", ".join(os.path.relpath(p, root) for p in others[:3])
        notes.append(
            f"skipped {len(others)} file(s) without an image extension ({shown}"
            f"{', ...' if len(others) > 3 else ''})"
        )
    for dupe in _near_duplicates(class_names):
        notes.append(f"class names differ only by case or Unicode form: {dupe}")
    index = {name: i for i, name in enumerate(class_names)}
    splits = {
        s: [Sample(p, index[c]) for c in class_names for p in files.get(s, {}).get(c, [])] for s in SPLITS
    }
    notes += _balance_notes(splits["training"], class_names)
    return Dataset(root=root, layout=layout, class_names=class_names, splits=splits, warnings=notes)


def _root_folders(root: str) -> list[str]:
    """The folders in the dataset root, which must exist, be a folder and hold at least one folder."""
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
    subdirs = subfolders(root)
    loose = _loose_images(root)
    if not subdirs and loose:
        raise _loose_images_error(root, loose)
    if not subdirs:
        raise DatasetError(
            "dataset folder is empty",
            received=root,
            expected="class folders (ROOT/<class>/*.png) or split folders (ROOT/training/...)",
            fix="put images in one folder per class",
        )
    return subdirs


def _loose_images(folder: str) -> list[str]:
    """The names of the image files directly in ``folder`` (not in its subfolders), sorted."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []  # subfolders() reports an unlistable folder
    return [
        n for n in names if not is_hidden(n) and is_image_name(n) and os.path.isfile(os.path.join(folder, n))
    ]


def _loose_images_error(folder: str, loose: list[str], *, root: bool = True) -> DatasetError:
    """Images lie directly in ``folder`` (the dataset root, or one of its split folders), which has no
    class folders: say what was found and how to lay it out."""
    shown = ", ".join(loose[:3]) + (", ..." if len(loose) > 3 else "")
    name = os.path.basename(os.path.normpath(folder)) or folder
    splits = f" (or {name}/training/<class>/*.png)" if root else ""
    return DatasetError(
        f"{len(loose)} image(s) directly in the folder and no class folders: imgclf learns each image's "
        "class from the name of the folder it is in",
        received=f"{folder} ({shown})",
        expected=f"one folder per class, at least 2: {name}/<class>/*.png{splits}",
        fix=f"move the images into one subfolder per class, e.g. {name}/cats/ and {name}/dogs/; to classify "
        f"unlabelled images: imgclf predict --images {folder}",
    )


def _split_files(
    root: str,
    subdirs: list[str],
    fractions: tuple[float, float],
    seed: int,
    problems: list[str],
    notes: list[str],
    odd: list[str],
) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
    """Class names and ``{split: {class: files}}`` of a split layout; missing validation/testing splits
    are carved out of training by ``fractions`` (validation, testing)."""
    split_dirs = {_ALIASES[d.lower()]: d for d in subdirs if d.lower() in _ALIASES}
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
    per_split = {s: _class_files(os.path.join(root, d), problems, odd) for s, d in split_dirs.items()}
    for split, d in split_dirs.items():
        loose = [] if per_split[split] else _loose_images(os.path.join(root, d))
        if loose:  # training/*.png: a split folder without class folders
            raise _loose_images_error(os.path.join(root, d), loose, root=False)
    class_names = sorted(per_split["training"])
    for split, classes in per_split.items():
        missing = sorted(set(class_names) - set(classes))
        extra = sorted(set(classes) - set(class_names))
        if split != "training" and (missing or extra):
            problems.append(
                f"{split} classes differ from training (missing: {missing or 'none'}, "
                f"extra: {extra or 'none'})"
            )
    wanted = zip(("validation", "testing"), fractions, strict=True)
    carve = {s: f for s, f in wanted if s not in per_split and f > 0}
    files = {s: per_split.get(s, {}) for s in SPLITS}
    if carve:
        files.update(_stratified(per_split["training"], carve, seed))
        shares = ", ".join(f"{f:g}" for f in carve.values())
        notes.append(f"split {', '.join(carve)} out of training ({shares})")
    return class_names, files


def _balance_notes(training: list[Sample], class_names: list[str]) -> list[str]:
    """Warnings about classes with a single training image (imbalance: :mod:`imgclf.training.balance`)."""
    notes = []
    counts = Counter(s.label for s in training)
    for i, name in enumerate(class_names):
        if counts[i] == 1:
            notes.append(f"class {name!r} has a single training image")
    return notes
