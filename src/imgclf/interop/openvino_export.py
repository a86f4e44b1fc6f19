"""Export an .imgclf model file to an OpenVINO IR (``.xml`` + ``.bin``), kept only if it passes its gate.

The ONNX export comes first, with its own gate (:mod:`imgclf.interop.onnx_export` for fp32,
:mod:`imgclf.interop.onnx_quantize` for int8); OpenVINO's converter then reads that ONNX graph
(``openvino.convert_model``; an int8 graph's QuantizeLinear/DequantizeLinear pairs become OpenVINO's
int8 operations, so no second quantization tool is needed) and the IR is gated again with OpenVINO's own
CPU kernels against the PyTorch model:

* fp32: every probe, generated input and ``parity_images`` within ``OPENVINO_TOLERANCE`` and the same
  top-1 class, at batch 1 and 7 (:func:`imgclf.interop.onnx_parity.parity_check`);
* int8: the agreement gate of :func:`imgclf.interop.onnx_quantize.agreement_gate` on the same held-out
  and test images as the int8 ONNX export.

The IR keeps the ONNX file's metadata (manifest, probes) in its runtime info, with an ``openvino``
section: precision, OpenVINO version, the gate's figures, the ``.bin``'s digest and the tolerance
``verify`` uses. The weights are stored as exported (no fp16 compression). ``.bin`` then ``.xml`` are
written atomically; a failed gate writes neither.

Usage::

    result = export_openvino("malaria.imgclf", "malaria.xml")
    result = export_openvino("malaria.imgclf", "malaria.int8.xml", quantize="int8", calibration="malaria/")
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf.errors import ExportError, UsageError
from imgclf.fileio.reading import read_bounded
from imgclf.fileio.writing import atomic_write_bytes, check_writable
from imgclf.images.preprocess import to_array
from imgclf.interop.onnx_meta import MANIFEST_KEY, probe_data
from imgclf.interop.onnx_runtime import run_session
from imgclf.interop.openvino_runtime import (
    MAX_BIN_BYTES,
    MAX_XML_BYTES,
    OpenvinoSession,
    check_graph,
    compile_ir,
    import_openvino,
    open_openvino,
    set_rt_props,
    weights_path,
)

OPENVINO_TOLERANCE = 1e-4  # OpenVINO's CPU kernels sum in another order than PyTorch's


@dataclass(frozen=True)
class OpenvinoResult:
    """What :func:`export_openvino` wrote: the .xml, its .bin, their size, the precision and the gate."""

    path: str
    weights: str
    file_bytes: int
    precision: str
    gate: dict[str, Any]


def default_out(model: str, quantize: str | None = None) -> str:
    """``m.imgclf`` → ``m.xml`` (``m.int8.xml`` when quantized)."""
    root, ext = os.path.splitext(model)
    return (root if ext.lower() == ".imgclf" else model) + (".int8" if quantize else "") + ".xml"


def _check_out(out_path: str | os.PathLike) -> str:
    name = os.fspath(out_path)
    if not name.lower().endswith(".xml"):
        raise UsageError(
            "an OpenVINO IR is written as NAME.xml (its weights go to NAME.bin beside it)",
            received=name,
            expected="an output name ending in .xml",
            fix="use --out model.xml",
        )
    check_writable(name)
    check_writable(weights_path(name))
    return name


def export_openvino(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    quantize: str | None = None,
    calibration: str | os.PathLike | None = None,
    calibration_images: int | None = None,
    tolerance: float = OPENVINO_TOLERANCE,
    **export_options: Any,
) -> OpenvinoResult:
    """Export ``model_path`` as an OpenVINO IR (fp32, or int8 with ``quantize="int8"``), behind the gate.

    Args:
        model_path: The .imgclf model file.
        out_path: The ``.xml`` to write (the ``.bin`` goes beside it).
        quantize: None for fp32, ``int8`` for static post-training quantization.
        calibration: With ``int8``: the dataset the model was trained on.
        calibration_images: With ``int8``: how many training images calibrate.
        tolerance: fp32: largest accepted |Δp| between OpenVINO and PyTorch.
        **export_options: Passed to the ONNX export (opset, exporter, parity_images).

    Raises:
        ExportError: If a gate fails (nothing is written).
        ModelFileError: If openvino is not installed or ``model_path`` is invalid.
        UsageError: On a bad option.
    """
    from imgclf.interop import onnx_quantize
    from imgclf.interop.onnx_export import export_onnx
    from imgclf.interop.onnx_parity import gate_inputs, parity_check
    from imgclf.interop.onnx_runtime import open_onnx
    from imgclf.modelfile import load

    ov = import_openvino()
    if quantize not in (None, "int8"):
        raise UsageError("unknown quantization", received=repr(quantize), expected="int8", fix="use int8")
    if quantize and calibration is None:
        raise UsageError(
            "--quantize needs --calibration",
            received="no --calibration",
            expected="--calibration DATASET_DIR",
            fix="pass the dataset the model was trained on",
        )
    name = _check_out(out_path)
    clf = load(model_path)
    with tempfile.TemporaryDirectory(prefix="imgclf-openvino-") as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        if quantize:
            count = calibration_images or onnx_quantize.CALIBRATION_IMAGES
            assert calibration is not None
            onnx_quantize.export_onnx_int8(
                model_path, onnx_path, calibration=calibration, calibration_images=count, **export_options
            )
        else:
            export_onnx(model_path, onnx_path, **export_options)
        _, _, m, props = open_onnx(onnx_path)
        model = ov.convert_model(onnx_path)
        input_name, output_name = check_graph(model, m, name)
        session = OpenvinoSession(compile_ir(model), input_name, output_name)
        stored = probe_data(props, m, name)
        probes = [arr for _, arr in stored]
        if quantize:
            gate = _agreement(clf, session, calibration, count)
        else:
            inputs, names = gate_inputs(
                probes, [p.kind for p in m.probes], clf.preprocess, export_options.get("parity_images")
            )
            try:
                gate = parity_check(session, clf, inputs, names, tolerance)
            except ExportError as exc:
                raise ExportError(
                    "export failed: the OpenVINO model disagrees with the PyTorch model",
                    received=exc.received,
                    expected=exc.expected,
                    fix="export to ONNX instead, or try another --opset; report it with the model file",
                ) from None
            gate["runtime"] = f"OpenVINO {ov.__version__} CPU, f32 inference precision"
        raw = json.loads(props[MANIFEST_KEY])
        if quantize:  # the probes' answers become OpenVINO's own int8 ones (what verify re-checks)
            empty = np.zeros((0, clf.num_classes), dtype=np.float32)
            answers = run_session(session, to_array(np.stack(probes), clf.preprocess)) if probes else empty
            for p, row in zip(raw.get("probes", []), answers, strict=True):
                p["probabilities"] = [float(v) for v in row]
        raw["openvino"] = {
            "version": ov.__version__,
            "precision": quantize or "fp32",
            "inference_precision": "f32",
            "converted_from": "the ONNX export (openvino.convert_model)",
            "gate": gate,
            "verify_tolerance": onnx_quantize.VERIFY_TOLERANCE if quantize else tolerance,
            "reference": "OpenVINO int8" if quantize else "PyTorch",
        }
        xml_tmp = os.path.join(tmp, "model.xml")
        ov.save_model(model, xml_tmp, compress_to_fp16=False)
        weights = read_bounded(weights_path(xml_tmp), MAX_BIN_BYTES, "OpenVINO weights")
        raw["openvino"]["weights_sha256"] = hashlib.sha256(weights).hexdigest()
        props[MANIFEST_KEY] = json.dumps(raw, sort_keys=True, separators=(",", ":"), allow_nan=False)
        set_rt_props(model, props)
        ov.save_model(model, xml_tmp, compress_to_fp16=False)
        xml = read_bounded(xml_tmp, MAX_XML_BYTES, "OpenVINO model file")
        weights = read_bounded(weights_path(xml_tmp), MAX_BIN_BYTES, "OpenVINO weights")
        # What load() will see: the final files read back, validate and answer the probes as gated.
        final_xml, _, final, _, _ = open_openvino(xml_tmp)
        if probes:
            got = run_session(final, to_array(np.stack(probes), clf.preprocess))
            want = np.array([p["probabilities"] for p in raw["probes"]])
            limit = raw["openvino"]["verify_tolerance"]
            if not float(np.max(np.abs(got - want))) <= limit:  # pragma: no cover - a reload that drifts
                raise ExportError(
                    "export failed: the written OpenVINO model answers its probes differently",
                    received=f"max |Δp| = {float(np.max(np.abs(got - want))):.3g}",
                    expected=f"<= {limit:g}",
                    fix="report it with the model file",
                )
    atomic_write_bytes(weights_path(name), weights)
    atomic_write_bytes(name, xml)
    return OpenvinoResult(name, weights_path(name), len(xml) + len(weights), quantize or "fp32", gate)


def _agreement(clf: Any, session: OpenvinoSession, calibration: Any, count: int) -> dict[str, Any]:
    """The int8 agreement gate with OpenVINO's kernels, on the int8 ONNX export's held-out images."""
    from imgclf.interop.onnx_quantize import agreement_gate, calibration_set, load_arrays, run_batches

    training = (clf.manifest.get("provenance") or {}).get("training")
    cset = calibration_set(calibration, clf.class_names, training, count=count)
    spec = clf.preprocess
    held = load_arrays([p for p, _ in cset.heldout], spec)
    test = load_arrays([p for p, _ in cset.test], spec)
    labels = np.array([lab for _, lab in cset.test], dtype=np.int64)
    has_test = len(test) > 0 and bool(np.all(labels >= 0))
    try:
        figures = agreement_gate(
            clf.predict_proba_uint8(held),
            run_batches(session, held, spec),
            clf.predict_proba_uint8(test) if has_test else None,
            run_batches(session, test, spec) if has_test else None,
            labels if has_test else None,
        )
    except ExportError as exc:  # the int8 .onnx passed with onnxruntime: say that OpenVINO's kernels did not
        raise ExportError(
            "export failed: the OpenVINO int8 model disagrees with the fp32 model",
            received=exc.received,
            expected=exc.expected,
            fix="export fp32 (drop --quantize), or the int8 .onnx (--format onnx), which passed its gate",
        ) from None
    figures["heldout_split"] = cset.heldout_split
    figures["runtime"] = "OpenVINO CPU, int8"
    return figures
