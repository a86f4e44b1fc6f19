"""Checking an .onnx written by ``imgclf export``: verify its graph and parity probes, summarise it.

Like :mod:`imgclf.interop.onnx_runtime`, which loads and runs the file, nothing here imports torch:
``verify_onnx`` re-runs the stored probes with this environment's onnxruntime and NumPy preprocessing.

Usage::

    report = verify_onnx("malaria.onnx"); assert report.ok
    print(inspect_onnx("malaria.onnx")["onnx"]["opset"])
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgclf.errors import ImageError
from imgclf.images.preprocess import preprocess_uint8, to_array
from imgclf.interop.onnx_meta import (
    ONNX_FORMAT,
    PARITY_TOLERANCE,
    OnnxManifest,
    manifest_summary,
    probe_data,
)
from imgclf.interop.onnx_runtime import OnnxClassifier, open_onnx


@dataclass
class OnnxVerifyReport:
    """Outcome of :func:`verify_onnx`: ``(check, ok, detail)`` rows, like ``modelfile.VerifyReport``."""

    path: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if every check passed."""
        return all(ok for _, ok, _ in self.checks)


def graph_digest(data: bytes) -> str:
    """SHA-256 of the model's graph (weights and nodes, not the metadata), deterministically serialised."""
    import onnx

    model = onnx.load_model_from_string(data)
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def verify_onnx(path: str | os.PathLike, *, tolerance: float = PARITY_TOLERANCE) -> OnnxVerifyReport:
    """Check the graph and re-run the stored parity probes with this environment's onnxruntime.

    Raises:
        ModelFileError: If the file does not even load (see :func:`load_onnx`).
    """
    data, session, m, props = open_onnx(path)
    report = OnnxVerifyReport(os.fspath(path))
    report.checks.append(_structure_check(data, m))
    clf = OnnxClassifier(session, m, report.path)
    quantized = m.raw.get("quantization")
    if isinstance(quantized, dict):  # an int8 file's probes hold its own answers, within kernel differences
        tolerance = max(tolerance, float(quantized.get("verify_tolerance", tolerance)))
    reference = "the quantized model" if isinstance(quantized, dict) else "PyTorch"
    report.checks.extend(probe_checks(clf, m, props, report.path, tolerance, reference))
    return report


def probe_checks(
    clf: Any,
    m: OnnxManifest,
    props: dict[str, str],
    path: str,
    tolerance: float,
    reference: str,
    runtime: str = "onnxruntime",
) -> list[tuple[str, bool, str]]:
    """Re-run the stored probes: their preprocessing, then ``clf``'s output against the stored answers.

    Args:
        clf: The classifier to run (an ``OnnxClassifier`` or a subclass).
        m: The file's manifest; ``props`` its metadata entries (the probes' bytes).
        path: The file, for messages.
        tolerance: Largest accepted |Δp| against the stored probabilities.
        reference: What produced the stored probabilities ("PyTorch"), for the check's detail.
        runtime: What runs ``clf``, for the check's detail.
    """
    checks: list[tuple[str, bool, str]] = []
    stored = probe_data(props, m, path)
    for probe, (image, then) in zip(m.probes, stored, strict=True):
        label = f"probe {probe.index} ({probe.kind}) preprocessing"
        try:
            now = preprocess_uint8(image, m.preprocess, name=f"probe {probe.index}")
        except ImageError as exc:
            checks.append((label, False, f"the probe image no longer decodes: {exc.problem}"))
            continue
        same = now.shape == then.shape and np.array_equal(now, then)
        digest = hashlib.sha256(to_array(then[None], m.preprocess).tobytes()).hexdigest()
        ok = same and digest == probe.input_sha256
        detail = (
            "identical input"
            if ok
            else "preprocessing changed (Pillow or imgclf?)"
            if not same
            else ("same pixels but the float input differs (scaling changed)")
        )
        checks.append((label, ok, detail))
    if stored:
        probs = clf.predict_proba_uint8(np.stack([s[1] for s in stored])).astype(np.float64)
        for probe, row in zip(m.probes, probs, strict=True):
            want = np.asarray(probe.probabilities)
            diff = float(np.max(np.abs(row - want)))
            top = "" if int(np.argmax(row)) == int(np.argmax(want)) else "; the top-1 class changed"
            checks.append(
                (
                    f"probe {probe.index} ({probe.kind}) output",
                    diff <= tolerance and not top,
                    f"{runtime} on the stored input vs {reference} at export: max |Δp| = {diff:.3g} "
                    f"(tolerance {tolerance:g}){top}",
                )
            )
    return checks


def _structure_check(data: bytes, m: OnnxManifest) -> tuple[str, bool, str]:
    import onnx

    try:
        onnx.checker.check_model(onnx.load_model_from_string(data), full_check=True)
    except Exception as exc:  # noqa: BLE001 - the checker's verdict, whatever its exception type
        return ("graph", False, f"onnx.checker refuses the model: {str(exc).splitlines()[0][:200]}")
    want = m.raw.get("graph_sha256")
    if graph_digest(data) != want:
        return ("graph", False, "the graph's digest differs from the one recorded at export (modified?)")
    return ("graph", True, "onnx.checker passes; graph digest matches the export's")


def inspect_onnx(path: str | os.PathLike) -> dict[str, Any]:
    """Summarise an imgclf .onnx file (metadata, graph size, parity figures) without running it.

    Raises:
        ModelFileError: If the file is not a valid imgclf .onnx.
    """
    import onnx

    data, _, m, _ = open_onnx(path)
    model = onnx.load_model_from_string(data)
    raw = m.raw
    summary = manifest_summary(path, m, ONNX_FORMAT)
    summary["onnx"].update(  # the graph's own, where the metadata holds the export's
        ir_version=model.ir_version,
        opset=max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
    )
    return {
        **summary,
        # As in the .imgclf's inspect: tensors_sha256 identifies the weights (those of the source file).
        "integrity": {
            "tensors_sha256": (raw.get("source") or {}).get("tensors_sha256"),
            "graph_sha256": raw.get("graph_sha256"),
        },
        "tensors": len(model.graph.initializer),
        "parameters": sum(int(np.prod(t.dims)) for t in model.graph.initializer),
        "file_bytes": len(data),
    }
