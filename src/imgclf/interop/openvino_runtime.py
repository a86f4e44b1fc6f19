"""An OpenVINO IR written by ``imgclf export --format openvino``, run without torch: load, verify, inspect.

The IR is two files, ``model.xml`` (graph) and ``model.bin`` (weights) beside it. The XML's runtime info
section ``imgclf`` holds the same entries an imgclf .onnx keeps in its ``metadata_props`` (the manifest,
with an ``openvino`` part, and the probes; :mod:`imgclf.interop.onnx_meta` validates them), so the class
names, preprocessing and self-check probes travel with the model. Both files are read bounded and
handed to OpenVINO as bytes. The model is compiled for the CPU with f32 inference precision (OpenVINO
would otherwise pick bf16 by itself on CPUs with AMX: the exported model must answer as it was gated),
one stream, and the given thread count; an int8 IR runs its quantized operations in int8.

:class:`OpenvinoClassifier` is an :class:`imgclf.interop.onnx_runtime.OnnxClassifier` whose session is
the compiled model, so ``predict``, the CLI and the server use it unchanged.

Usage::

    clf = load_openvino("malaria.xml")
    print(clf.predict(["cell.png"])[0].label)
    assert verify_openvino("malaria.xml").ok
"""

from __future__ import annotations

import hashlib
import os
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np

from imgclf.errors import ModelFileError, StorageError
from imgclf.fileio.reading import os_reason, read_bounded
from imgclf.images.read import MAX_PIXELS
from imgclf.interop.onnx_meta import ONNX_FORMAT, OnnxManifest, manifest_summary, parse_metadata
from imgclf.interop.onnx_runtime import MAX_ONNX_BYTES, OnnxClassifier

RT_SECTION = "imgclf"
MAX_XML_BYTES = 256 * 1024**2
MAX_BIN_BYTES = MAX_ONNX_BYTES
OPENVINO_FORMAT = "imgclf-openvino"
CPU_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
_FIX = "export the model again with `imgclf export MODEL --format openvino`"


def import_openvino() -> Any:
    """``import openvino``.

    Raises:
        ModelFileError: If it is not installed.
    """
    try:
        import openvino
    except ImportError:
        raise ModelFileError(
            "openvino is not installed",
            received="an OpenVINO IR model file",
            expected="the openvino extra",
            fix="pip install 'imgclf[openvino]'",
        ) from None
    return openvino


def weights_path(xml_path: str | os.PathLike) -> str:
    """The ``.bin`` that holds the weights of the IR ``xml_path`` (same name, extension ``.bin``)."""
    root, _ = os.path.splitext(os.fspath(xml_path))
    return root + ".bin"


def _read(path: str, cap: int, what: str) -> bytes:
    try:
        return read_bounded(path, cap, what)
    except StorageError as exc:
        raise ModelFileError(
            f"not a regular {what} of a supported size",
            received=f"{path} ({os_reason(exc)})",
            expected=f"a regular file of at most {cap} bytes",
            fix=_FIX,
        ) from None
    except OSError as exc:
        raise ModelFileError(
            f"cannot open {what}",
            received=f"{path} ({exc.strerror or exc})",
            expected=f"a readable {what}" + (" beside the .xml" if what.endswith("weights") else ""),
            fix="check the path and permissions; the .xml and its .bin travel together",
        ) from None


class OpenvinoSession:
    """A compiled OpenVINO model with the two onnxruntime-session methods imgclf calls.

    One infer request, used under a lock: a server may predict from several threads.
    """

    def __init__(self, compiled: Any, input_name: str, output_name: str) -> None:  # noqa: D107
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self._inputs = [SimpleNamespace(name=input_name)]
        self._outputs = [SimpleNamespace(name=output_name)]

    def get_inputs(self) -> list[Any]:
        """The input, as ``[obj with .name]``."""
        return self._inputs

    def get_outputs(self) -> list[Any]:
        """The output, as ``[obj with .name]``."""
        return self._outputs

    def run(self, _output_names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``[probabilities]`` for the one input in ``feeds``."""
        (x,) = feeds.values()
        with self._lock:
            result = self._request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
            return [np.array(result[0], dtype=np.float32, copy=True)]


def compile_ir(model: Any, threads: int | None = None) -> Any:
    """``model`` compiled for the CPU with imgclf's settings (``CPU_CONFIG``, ``threads``)."""
    ov = import_openvino()
    config: dict[str, Any] = dict(CPU_CONFIG)
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(model, "CPU", config)


def rt_props(model: Any) -> dict[str, str]:
    """The ``imgclf`` runtime-info entries of an OpenVINO model (empty if it has none)."""
    info = model.get_rt_info()
    if RT_SECTION not in info:
        return {}
    section = info[RT_SECTION]
    section = section.astype(dict) if hasattr(section, "astype") else section
    if not isinstance(section, dict):
        return {}
    return {str(k): str(v.astype(str) if hasattr(v, "astype") else v) for k, v in section.items()}


def set_rt_props(model: Any, props: dict[str, str]) -> None:
    """Store ``props`` as the model's ``imgclf`` runtime info."""
    for key, value in props.items():
        model.set_rt_info(value, [RT_SECTION, key])


def check_graph(model: Any, m: OnnxManifest, name: str) -> tuple[str, str]:
    """The model's input and output names, once its shapes match the metadata.

    Raises:
        ModelFileError: If there is not one input (N, 3, H, W) and one output (N, classes) as named.
    """
    spec = m.preprocess
    ins, outs = model.inputs, model.outputs
    want_in = [3, spec.height, spec.width]
    shape_in = [str(d) for d in ins[0].get_partial_shape()][1:] if len(ins) == 1 else []
    shape_out = [str(d) for d in outs[0].get_partial_shape()][-1:] if len(outs) == 1 else []
    names = (ins[0].get_names() if len(ins) == 1 else set(), outs[0].get_names() if len(outs) == 1 else set())
    graph = m.raw["graph"]
    if (
        shape_in != [str(v) for v in want_in]
        or shape_out != [str(len(m.class_names))]
        or graph["input"] not in names[0]
        or graph["output"] not in names[1]
    ):
        raise ModelFileError(
            "invalid imgclf OpenVINO file: the graph does not match its metadata",
            received=f"{name} (inputs {[str(i.get_partial_shape()) for i in ins]}, outputs "
            f"{[str(o.get_partial_shape()) for o in outs]})",
            expected=f"one input {graph['input']!r} [N, {', '.join(map(str, want_in))}], one output "
            f"{graph['output']!r} [N, {len(m.class_names)}]",
            fix=_FIX,
        )
    return graph["input"], graph["output"]


def open_openvino(
    path: str | os.PathLike, threads: int | None = None
) -> tuple[bytes, bytes, OpenvinoSession, OnnxManifest, dict[str, str]]:
    """Read, check and compile an imgclf OpenVINO IR: ``(xml, bin, session, manifest, metadata)``.

    Raises:
        ModelFileError: If a file is unreadable, OpenVINO cannot read it, it has no imgclf metadata, or
            its graph does not match the metadata.
    """
    ov = import_openvino()
    name = os.fspath(path)
    xml = _read(name, MAX_XML_BYTES, "OpenVINO model file")
    weights = _read(weights_path(name), MAX_BIN_BYTES, "OpenVINO weights")
    try:
        model = ov.Core().read_model(xml, ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))
    except Exception as exc:  # noqa: BLE001 - any refusal of untrusted bytes is an invalid file
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"invalid model file {name!r}: OpenVINO cannot read the IR "
            "(truncated, corrupt or a mismatched .bin)",
            received=f"{name} ({detail})",
            expected="an .xml and its .bin written by `imgclf export --format openvino`",
            fix=_FIX,
        ) from None
    props = rt_props(model)
    if not props:
        raise ModelFileError(
            f"invalid model file {name!r}: not an imgclf model file: an OpenVINO model without imgclf "
            "metadata (class names, preprocessing)",
            received=name,
            expected=f"an IR written by `imgclf export --format openvino` (runtime info {RT_SECTION!r})",
            fix=_FIX,
        )
    m = parse_metadata(props, name)
    if not isinstance(m.raw.get("openvino"), dict):
        raise ModelFileError(
            f"invalid model file {name!r}: bad imgclf OpenVINO metadata: no openvino section",
            received=name,
            expected="an IR written by `imgclf export --format openvino`",
            fix=_FIX,
        )
    input_name, output_name = check_graph(model, m, name)
    session = OpenvinoSession(compile_ir(model, threads), input_name, output_name)
    return xml, weights, session, m, props


class OpenvinoClassifier(OnnxClassifier):
    """A classifier backed by a compiled OpenVINO model: what ``imgclf.load("m.xml")`` returns."""

    def __repr__(self) -> str:
        spec = self.preprocess
        return (
            f"OpenvinoClassifier(arch={self.arch!r}, classes={self.class_names!r}, "
            f"input={spec.height}x{spec.width}, interpolation={spec.interpolation!r}, file={self.path!r})"
        )


def load_openvino(
    path: str | os.PathLike, *, threads: int | None = None, max_pixels: int = MAX_PIXELS
) -> OpenvinoClassifier:
    """Load an IR written by ``imgclf export --format openvino`` (OpenVINO on the CPU, no torch).

    Raises:
        ModelFileError: If the files are unreadable, inconsistent or without imgclf metadata.
    """
    _, _, session, m, _ = open_openvino(path, threads)
    return OpenvinoClassifier(session, m, os.fspath(path), max_pixels=max_pixels)


def verify_openvino(path: str | os.PathLike) -> Any:
    """Check the weights' digest and re-run the stored probes with this environment's OpenVINO.

    Raises:
        ModelFileError: If the files do not even load.
    """
    from imgclf.interop.onnx_verify import OnnxVerifyReport, probe_checks

    _, weights, session, m, props = open_openvino(path)
    report = OnnxVerifyReport(os.fspath(path))
    ov_meta = m.raw["openvino"]
    same = hashlib.sha256(weights).hexdigest() == ov_meta.get("weights_sha256")
    said = "the .bin's digest matches the export's" if same else "the .bin differs from the export's"
    report.checks.append(("weights", same, said))
    clf = OpenvinoClassifier(session, m, report.path)
    tolerance = float(ov_meta.get("verify_tolerance", 0.0))
    reference = str(ov_meta.get("reference"))
    report.checks.extend(probe_checks(clf, m, props, report.path, tolerance, reference, "OpenVINO"))
    return report


def inspect_openvino(path: str | os.PathLike) -> dict[str, Any]:
    """Summarise an imgclf OpenVINO IR (metadata, weights, gate figures), as ``inspect_onnx`` does.

    Raises:
        ModelFileError: If the files are not a valid imgclf IR.
    """
    xml, weights, _, m, _ = open_openvino(path)
    ov = import_openvino()
    graph = ov.Core().read_model(xml, ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))
    constants = [op for op in graph.get_ops() if op.get_type_name() == "Constant"]
    raw = m.raw
    ov_meta = raw["openvino"]
    return {
        **manifest_summary(path, m, f"{OPENVINO_FORMAT} (IR, from {ONNX_FORMAT})"),
        "openvino": ov_meta,
        "integrity": {
            "tensors_sha256": (raw.get("source") or {}).get("tensors_sha256"),
            "weights_sha256": ov_meta.get("weights_sha256"),
        },
        "tensors": len(constants),
        "parameters": sum(int(np.prod(c.get_output_shape(0))) for c in constants),
        "file_bytes": len(xml) + len(weights),
    }
