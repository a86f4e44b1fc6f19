"""The parity gate of the ONNX export: onnxruntime must answer like PyTorch on every input.

The inputs are the model file's probes, ``GENERATED_INPUTS`` seeded images (noise and smooth blocks)
and the user's ``--parity-images``; each runs through onnxruntime alone (batch 1) and inside full batches
of ``ODD_BATCH``, against :meth:`imgclf.Classifier.predict_proba_uint8` (what ``predict`` gives).

Usage::

    inputs, names = gate_inputs(probe_arrays, probe_kinds, spec, "cells/")
    figures = parity_check(session, classifier, inputs, names)   # raises ExportError on disagreement
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from imgclf.classifier import Classifier
from imgclf.config import PreprocessSpec
from imgclf.errors import ExportError, UsageError
from imgclf.images.preprocess import is_image_name, preprocess_uint8, to_array
from imgclf.interop.onnx_meta import PARITY_TOLERANCE
from imgclf.interop.onnx_runtime import run_session

ODD_BATCH = 7
GENERATED_INPUTS = 7
MAX_PARITY_IMAGES = 256


def _image_files(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursive, hidden entries skipped), sorted."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [os.path.join(root, f) for f in files if not f.startswith(".") and is_image_name(f)]
    return sorted(out)


def gate_inputs(
    probes: list[np.ndarray], kinds: list[str], spec: PreprocessSpec, parity_images: str | os.PathLike | None
) -> tuple[np.ndarray, list[str]]:
    """Probes, seeded generated inputs and the user's images: uint8 (N, H, W, 3) and a name for each.

    Raises:
        UsageError: If ``parity_images`` holds no image; ImageError if one cannot be decoded.
    """
    arrays = list(probes)
    names = [f"probe {i} ({kind})" for i, kind in enumerate(kinds)]
    rng = np.random.default_rng(20261202)
    for i in range(GENERATED_INPUTS):
        if i % 2:  # smooth images as well as noise: both kinds of input a convolution can mishandle
            base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float64)
            img = np.kron(base, np.ones((-(-spec.height // 4), -(-spec.width // 4), 1)))[
                : spec.height, : spec.width
            ]
            arrays.append(img.astype(np.uint8))
        else:
            arrays.append(rng.integers(0, 256, size=(spec.height, spec.width, 3), dtype=np.uint8))
        names.append(f"generated input {i}")
    if parity_images is not None:
        paths = _image_files(parity_images)[:MAX_PARITY_IMAGES]
        if not paths:
            raise UsageError(
                "no images found for --parity-images",
                received=os.fspath(parity_images),
                expected="a folder holding images",
                fix="point --parity-images at a folder of images",
            )
        arrays += [preprocess_uint8(p, spec) for p in paths]
        # Names relative to the folder: they go into the .onnx, where an absolute path would tell
        # everyone who receives the file the exporting machine's directory layout (a home directory).
        names += [f"parity image {os.path.relpath(p, parity_images)}" for p in paths]
    return np.stack(arrays), names


def parity_check(
    session: Any, clf: Classifier, inputs: np.ndarray, names: list[str], tolerance: float = PARITY_TOLERANCE
) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch on ``inputs`` at batch 1 and ``ODD_BATCH``; the figures.

    Raises:
        ExportError: If any probability differs by more than ``tolerance`` or any top-1 class differs.
    """
    reference = clf.predict_proba_uint8(inputs).astype(np.float64)
    n = len(inputs)
    worst = (0.0, 0, 1)
    flips: list[tuple[int, int]] = []
    for batch in (1, ODD_BATCH):
        for start in range(0, n, batch):
            idx = [(start + j) % n for j in range(batch)]  # the last batch wraps: always full size
            got = run_session(session, to_array(inputs[idx], clf.preprocess)).astype(np.float64)
            for row, i in zip(got, idx, strict=True):
                diff = float(np.max(np.abs(row - reference[i])))
                if np.isnan(diff) or diff > worst[0]:
                    worst = (diff, i, batch)
                if int(np.argmax(row)) != int(np.argmax(reference[i])):
                    flips.append((i, batch))
    diff, i, batch = worst
    if not diff <= tolerance or flips:
        what = f"max |Δp| = {diff:.3g} on {names[i]} at batch {batch}"
        if flips:
            what += f"; top-1 class differs on {names[flips[0][0]]} at batch {flips[0][1]}"
            what += f" ({len(flips)} case(s))" if len(flips) > 1 else ""
        raise ExportError(
            "export failed: the ONNX model disagrees with the PyTorch model",
            received=what,
            expected=f"max |Δp| <= {tolerance:g} and the same top-1 class on every input",
            fix="try another --opset or --exporter; report it with the model file if it persists",
        )
    return {
        "tolerance": tolerance,
        "max_abs_diff": diff,
        "worst_input": names[i],
        "inputs": n,
        "batch_sizes": [1, ODD_BATCH],
        "top1_agree": True,
        "runtime": "onnxruntime CPUExecutionProvider, default graph optimisations",
    }
