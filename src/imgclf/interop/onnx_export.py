"""Export an .imgclf model file to one self-contained .onnx, kept only if it passes the parity gate.

The network is exported in eval mode with the softmax inside the graph (a multi-label model: the sigmoid,
with its per-class thresholds in the manifest's ``task``; its output is exactly what ``predict`` gives)
and a dynamic batch dimension. Before the file is written, onnxruntime (CPU, default
graph optimisations) runs the model file's probes, generated inputs and any ``parity_images`` at batch 1
and 7 against the PyTorch model (:mod:`imgclf.interop.onnx_parity`): every probability within
``PARITY_TOLERANCE`` and the same top-1 class, or :class:`imgclf.errors.ExportError` names the worst input
and nothing is written.
The manifest and the probes go into ``metadata_props`` (:mod:`imgclf.interop.onnx_meta`).

Usage::

    result = export_onnx("malaria.imgclf", "malaria.onnx", opset=18)
    print(result.parity["max_abs_diff"])
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch import nn

from imgclf._version import versions
from imgclf.classifier import Classifier
from imgclf.errors import ExportError, UsageError
from imgclf.fileio.writing import atomic_write_bytes, check_writable
from imgclf.images.preprocess import DECODE_RULE
from imgclf.interop.onnx_meta import (
    INPUT_NAME,
    ONNX_FORMAT,
    ONNX_FORMAT_VERSION,
    OUTPUT_NAME,
    PARITY_TOLERANCE,
    metadata_entries,
    parse_metadata,
)
from imgclf.interop.onnx_parity import gate_inputs, parity_check
from imgclf.interop.onnx_runtime import MAX_ONNX_BYTES, import_onnxruntime, new_session

DEFAULT_OPSET = 18
OPSETS = {"torchscript": (13, 20), "dynamo": (18, 23)}  # what each exporter writes and onnxruntime loads
EXPORTERS = tuple(OPSETS)
SINGLE_LABEL = {"type": "single_label", "thresholds": None, "balance": "none"}  # a version-1 model file
MAX_IR_VERSION = 10  # onnxruntime >= 1.18 reads IR 10; onnx's helper may stamp a newer one


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote: the path, its size and the parity figures stored in it."""

    path: str
    file_bytes: int
    opset: int
    parity: dict[str, Any]


class _WithSoftmax(nn.Module):
    """The classifier's network followed by the activation ``predict`` applies: the softmax at its
    calibration temperature, or (multi-label) the per-class sigmoid."""

    def __init__(self, model: nn.Module, temperature: float = 1.0, multi_label: bool = False) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.multi_label = multi_label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.multi_label:
            return torch.sigmoid(logits)
        return torch.softmax(logits if self.temperature == 1.0 else logits / self.temperature, dim=1)


def check_options(opset: int, exporter: str) -> None:
    """Reject an unknown exporter or an opset it cannot write / onnxruntime cannot load.

    Raises:
        UsageError: With the supported range.
    """
    if exporter not in OPSETS:
        raise UsageError("unknown ONNX exporter", received=repr(exporter), expected=" | ".join(EXPORTERS))
    lo, hi = OPSETS[exporter]
    if isinstance(opset, bool) or not isinstance(opset, int) or not lo <= opset <= hi:
        raise UsageError(
            "unsupported ONNX opset",
            received=repr(opset),
            expected=f"{lo} to {hi} with the {exporter} exporter",
            fix=f"use --opset {DEFAULT_OPSET}",
        )


def _graph_bytes(
    model: nn.Module,
    spec: Any,
    opset: int,
    exporter: str,
    temperature: float = 1.0,
    multi_label: bool = False,
) -> bytes:
    """Serialised ONNX of ``model`` with a dynamic batch; exporter chatter goes to stderr, never stdout."""
    net = _WithSoftmax(model, temperature, multi_label).to(memory_format=torch.contiguous_format).eval()
    example = torch.zeros((2, 3, spec.height, spec.width), dtype=torch.float32)
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notes: the parity gate is the real check
        if exporter == "dynamo":
            program = torch.onnx.export(
                net,
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                verbose=False,
                external_data=False,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},),
            )
            return program.model_proto.SerializeToString()
        buf = io.BytesIO()
        torch.onnx.export(
            net,
            (example,),
            buf,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        return buf.getvalue()


@dataclass(frozen=True)
class _Source:
    """The validated model file: its classifier, probes and the manifest parts the .onnx keeps."""

    path: str
    clf: Classifier
    probes: list[tuple[bytes, np.ndarray]]
    probe_kinds: list[str]
    integrity: dict[str, str]
    provenance: dict[str, Any]


def _read_source(path: str | os.PathLike) -> _Source:
    from imgclf.modelfile import load
    from imgclf.modelfile.format import read_container
    from imgclf.modelfile.manifest import parse

    clf = load(path)  # every check of the model file, digests included
    c = read_container(path)
    m = parse(c)
    probes = [(c.raw_bytes(p.image_tensor).tobytes(), c.tensor(p.input_tensor).numpy()) for p in m.probes]
    prov = {
        k: m.provenance[k]
        for k in ("training", "metrics", "data", "created", "epoch", "device", "versions")
        if k in m.provenance
    }
    return _Source(os.fspath(path), clf, probes, [p.kind for p in m.probes], dict(m.integrity), prov)


def _export_versions() -> dict[str, str]:
    import onnx

    onnxruntime = import_onnxruntime()
    out = versions()
    out["onnx"] = onnx.__version__
    out["onnxruntime"] = onnxruntime.__version__
    with contextlib.suppress(ImportError):
        import onnxscript

        out["onnxscript"] = onnxscript.__version__
    return out


def _manifest(src: _Source, model: Any, opset: int, exporter: str, parity: dict[str, Any]) -> dict[str, Any]:
    clf = src.clf
    probe_inputs = [arr for _, arr in src.probes]
    reference = clf.predict_proba_uint8(np.stack(probe_inputs)) if probe_inputs else np.zeros((0, 0))
    from imgclf.images.preprocess import to_array

    return {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "class_names": list(clf.class_names),
        "preprocess": clf.preprocess.to_dict(),
        "decode_rule": DECODE_RULE,
        "architecture": {"name": clf.arch, "args": clf.arch_args},
        "graph": {
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "layout": "float32 NCHW, batch dimension dynamic",
            "output_meaning": (
                "per-class probabilities (a sigmoid each, inside the graph; task.thresholds decide), "
                if clf.multi_label
                else "class probabilities (softmax inside the graph), "
            )
            + "in class_names order",
        },
        "task": dict(clf.manifest.get("task") or SINGLE_LABEL),
        "graph_sha256": hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest(),
        "source": {"file": os.path.basename(src.path), **src.integrity},
        "provenance": src.provenance,
        "export": {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "exporter": exporter,
            "opset": opset,
            "ir_version": model.ir_version,
            "versions": _export_versions(),
        },
        "parity": parity,
        "probes": [
            {
                "kind": kind,
                "input_sha256": hashlib.sha256(to_array(arr[None], clf.preprocess).tobytes()).hexdigest(),
                "probabilities": [float(v) for v in row],
            }
            for kind, arr, row in zip(src.probe_kinds, probe_inputs, reference, strict=True)
        ],
    }


def export_onnx(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    parity_images: str | os.PathLike | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportResult:
    """Export ``model_path`` to ``out_path`` as one self-contained .onnx, behind the parity gate.

    Args:
        model_path: The .imgclf model file.
        out_path: Where the .onnx goes (written atomically, only if the gate passes).
        opset: ONNX opset to write (see ``OPSETS``).
        exporter: ``torchscript`` (torch.onnx's tracer: fast) or ``dynamo`` (torch.export based).
        parity_images: A folder of images to add to the parity inputs.
        tolerance: Largest accepted |Δp| between onnxruntime and PyTorch.

    Raises:
        ExportError: If the gate fails or the exported model is not a valid, loadable ONNX file.
        ModelFileError: If ``model_path`` is not a valid model file.
        UsageError: On a bad option; StorageError if ``out_path`` cannot be written.
    """
    import onnx

    check_options(opset, exporter)
    check_writable(out_path)
    with contextlib.suppress(ImportError):  # first, so its start-up lines never reach stderr
        import_onnxruntime()
    src = _read_source(model_path)
    spec = src.clf.preprocess
    inputs, names = gate_inputs([arr for _, arr in src.probes], src.probe_kinds, spec, parity_images)
    graph = _graph_bytes(src.clf.model, spec, opset, exporter, src.clf.temperature, src.clf.multi_label)
    model = onnx.load_model_from_string(graph)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.producer_name, model.producer_version = "imgclf", versions()["imgclf"]
    name = os.fspath(out_path)
    parity = parity_check(new_session(model.SerializeToString(), name), src.clf, inputs, names, tolerance)
    manifest = _manifest(src, model, opset, exporter, parity)
    meta = metadata_entries(manifest, [img for img, _ in src.probes], [arr for _, arr in src.probes])
    onnx.helper.set_model_props(model, meta)
    data = _checked_bytes(model)
    # What load() will see: the final bytes parse, the metadata validates, the probes give the gate's answer.
    final = new_session(data, name)
    parse_metadata(dict(final.get_modelmeta().custom_metadata_map), name)
    parity_check(final, src.clf, inputs[: len(src.probes) or 1], names, tolerance)
    atomic_write_bytes(out_path, data)
    return ExportResult(name, len(data), opset, parity)


def _checked_bytes(model: Any) -> bytes:
    """The exported model's bytes, once ``onnx.checker`` accepts it and it fits in one protobuf message.

    Raises:
        ExportError: If the checker refuses the model or it is too large for one self-contained .onnx.
    """
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - the checker's verdict, whatever its exception type
        raise ExportError(
            "export failed: onnx.checker refuses the exported model",
            received=str(exc).splitlines()[0][:300],
            expected="a valid ONNX model",
            fix="try another --opset or --exporter",
        ) from None
    data = model.SerializeToString()
    if len(data) >= MAX_ONNX_BYTES:
        raise ExportError(
            "export failed: the model is too large for one self-contained .onnx",
            received=f"{len(data)} bytes",
            expected=f"under {MAX_ONNX_BYTES} bytes (protobuf's limit)",
            fix="export a smaller model",
        )
    return data
