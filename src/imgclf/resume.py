"""Deprecated alias: ``imgclf.resume.resume_run`` is now ``imgclf.resume_run``.

Kept for one minor release (0.1.x; removed in 0.2). Using the old path warns with a
``DeprecationWarning`` that says where the function moved.

Usage::

    import imgclf
    result = imgclf.resume_run("malaria-run")    # instead of imgclf.resume.resume_run
"""

from __future__ import annotations

import warnings
from typing import Any

MOVED = {"resume_run": "imgclf.resume_run"}


def __getattr__(name: str) -> Any:
    if name not in MOVED:
        raise AttributeError(f"module 'imgclf.resume' has no attribute {name!r}")
    warnings.warn(
        f"imgclf.resume.{name} moved to {MOVED[name]}; the old path will be removed in imgclf 0.2",
        DeprecationWarning,
        stacklevel=2,
    )
    from imgclf.training.pipeline import resume_run

    return resume_run
