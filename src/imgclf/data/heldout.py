"""Which images of a flat dataset folder a model did not train on: its recorded split, re-derived.

A flat folder (``ROOT/<class>/*.png``) is split at training time by ``val_split``/``test_split`` and a
seed; the model file records those and the data fingerprint. Evaluating such a folder must score the
held-out split, not every image (most of which the model trained on), so the split is derived again from
the recorded settings and accepted only when the fingerprint of the files matches the recorded one.

Usage::

    ds, decoded = heldout_split(clf.manifest, "flat", "testing", decode=decode_all)
    testing = decoded["testing"]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from imgclf.data.decode import DecodedSplit
from imgclf.data.folders import Dataset, Sample, scan_dataset
from imgclf.data.identity import file_table, table_fingerprint
from imgclf.errors import DatasetError

ALL = "all"  # evaluate every image of a folder (one the model never saw)


def _refuse(why: str, root: str, fix: str) -> DatasetError:
    return DatasetError(
        f"cannot tell which images of a flat dataset folder the model did not train on: {why}",
        received=root,
        expected="the folder the model was trained on, unchanged (its split is re-derived from the "
        "seed and fractions recorded in the model file)",
        fix=fix,
    )


ALL_FIX = "pass --split all to score every image (only right for images the model never saw)"


def heldout_split(
    manifest: dict[str, Any],
    dataset: str | os.PathLike,
    split: str,
    decode: Callable[[dict[str, list[Sample]]], dict[str, DecodedSplit]],
) -> tuple[Dataset, dict[str, DecodedSplit]]:
    """The flat folder ``dataset`` split exactly as training split it, and every split decoded.

    Args:
        manifest: The loaded model's manifest (``provenance.training`` and ``provenance.data``).
        dataset: The flat dataset folder.
        split: ``"testing"`` or ``"validation"`` (``"training"`` too, for completeness).
        decode: Decodes every split (skipping bad files, as training did with ``--skip-bad``) so the
            content fingerprint can be compared.

    Returns:
        The scanned dataset and its decoded splits (``split`` among them, not empty).

    Raises:
        DatasetError: If the model records no split of a flat folder, or the files differ from the ones
            it was trained on (added, removed, changed or relabelled), so the split cannot be reproduced.
    """
    root = os.fspath(dataset)
    prov = manifest.get("provenance") or {}
    recipe, data = prov.get("training") or {}, prov.get("data") or {}
    if data.get("layout") != "flat" or not data.get("fingerprint") or "seed" not in recipe:
        raise _refuse("the model file records no split of a flat folder", root, ALL_FIX)
    ds: Dataset = scan_dataset(
        root,
        val_split=float(recipe.get("val_split", 0.0)),
        test_split=float(recipe.get("test_split", 0.0)),
        seed=int(recipe["seed"]),
    )
    decoded = decode(ds.splits)
    found = table_fingerprint(ds.class_names, file_table(ds, decoded))
    if found != data["fingerprint"]:
        raise _refuse(
            "its files differ from the ones the model was trained on (data fingerprint "
            f"{found[:12]}..., the model records {str(data['fingerprint'])[:12]}...)",
            root,
            "evaluate on the unchanged training folder, or " + ALL_FIX,
        )
    if not len(decoded.get(split) or []):
        raise _refuse(f"the recorded split has no {split!r} images", root, "pass --split validation")
    return ds, decoded
