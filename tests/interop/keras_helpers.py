"""Helpers for the import-keras tests: the committed Keras fixtures and their references, a CLI runner.

The fixtures in ``tests/fixtures/keras`` were written once by real Keras (``make_fixtures.py`` there);
each ``<model>.json`` holds the probabilities Keras computed on ``input*.png`` through its own pipeline
(``load_img`` nearest resize, rescale 1/255, ``model.predict``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

KERAS_DIR = Path(__file__).parents[1] / "fixtures" / "keras"
TOLERANCE = 1e-5


def references() -> list[dict[str, Any]]:
    """Every fixture's reference record (model file name, classes, inputs, probabilities per variant)."""
    return [json.loads(p.read_text()) for p in sorted(KERAS_DIR.glob("*.json"))]


def reference(model_name: str) -> dict[str, Any]:
    return json.loads((KERAS_DIR / f"{model_name}.json").read_text())


def inputs(ref: dict[str, Any]) -> list[str]:
    return [str(KERAS_DIR / name) for name in ref["inputs"]]


def max_delta(probs: np.ndarray, ref: dict[str, Any], variant: str = "rgb") -> float:
    return float(np.abs(probs - np.asarray(ref["probabilities"][variant])).max())


def run_import(*argv: object) -> tuple[int, str, str]:
    """``imgclf import-keras ARGV`` through the real command line: ``(exit code, stdout, stderr)``."""
    from helpers import run_cli

    return run_cli("import-keras", *argv)
