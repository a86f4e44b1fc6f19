"""Deprecated alias: ``imgclf.evaluate.evaluate_dataset`` is now ``imgclf.evaluate_dataset``.

Kept for one minor release (0.1.x; removed in 0.2). Using the old path warns with a
``DeprecationWarning`` that says where the function moved.

Usage::

    import imgclf
    evaluation = imgclf.evaluate_dataset(imgclf.load("malaria.imgclf"), "malaria")
"""

from __future__ import annotations

import warnings
from typing import Any

MOVED = {"evaluate_dataset": "imgclf.evaluate_dataset"}


def __getattr__(name: str) -> Any:
    if name not in MOVED:
        raise AttributeError(f"module 'imgclf.evaluate' has no attribute {name!r}")
    warnings.warn(
        f"imgclf.evaluate.{name} moved to {MOVED[name]}; the old path will be removed in imgclf 0.2",
        DeprecationWarning,
        stacklevel=2,
    )
    from imgclf.dataset_evaluation import evaluate_dataset

    return evaluate_dataset
