"""What an imgclf .onnx carries besides the graph: the manifest and the probes, in ``metadata_props``.

``metadata_props`` is a string-to-string map every ONNX reader exposes. imgclf writes three kinds of
entries: ``imgclf.manifest`` (canonical JSON: format marker and version, class names, preprocessing,
source model digest, versions, opset, parity figures, probe references) and, per probe,
``imgclf.probe.N.image`` (the encoded image) and ``imgclf.probe.N.input`` (its preprocessed uint8
pixels), both base64. Nothing here imports torch or onnx.

Usage::

    props = metadata_entries(manifest, probe_images, probe_inputs)     # at export time
    m = parse_metadata(session.get_modelmeta().custom_metadata_map, "m.onnx")   # at load time
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf.config import PreprocessSpec
from imgclf.errors import ModelFileError, UsageError

ONNX_FORMAT = "imgclf-onnx"
ONNX_FORMAT_VERSION = 1
MANIFEST_KEY = "imgclf.manifest"
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
PARITY_TOLERANCE = 1e-5
MIN_CLASSES = 2
MAX_CLASSES = 100_000  # the bounds of an .imgclf's class_names (modelfile.manifest), without importing torch
MAX_CLASS_NAME = 1000


def probe_key(index: int, part: str) -> str:
    """The metadata key of probe ``index``'s ``image`` (encoded bytes) or ``input`` (uint8 pixels)."""
    return f"imgclf.probe.{index}.{part}"


@dataclass(frozen=True)
class OnnxProbe:
    """One stored probe: its kind, the digest of its float input and the reference probabilities."""

    index: int
    kind: str
    input_sha256: str
    probabilities: list[float]


@dataclass(frozen=True)
class OnnxManifest:
    """The validated ``imgclf.manifest`` of an .onnx file (``raw`` is the whole JSON object)."""

    raw: dict[str, Any]
    class_names: list[str]
    preprocess: PreprocessSpec
    probes: list[OnnxProbe]

    @property
    def arch(self) -> str:
        """The source model's registered architecture name."""
        return str(self.raw.get("architecture", {}).get("name", ""))

    @property
    def arch_args(self) -> dict[str, Any]:
        """The source model's builder arguments."""
        args = self.raw.get("architecture", {}).get("args", {})
        return dict(args) if isinstance(args, dict) else {}


def metadata_entries(
    manifest: dict[str, Any], images: list[bytes], inputs: list[np.ndarray]
) -> dict[str, str]:
    """The ``metadata_props`` entries for ``manifest`` and the probes' encoded images and uint8 inputs."""
    props = {MANIFEST_KEY: json.dumps(manifest, sort_keys=True, separators=(",", ":"), allow_nan=False)}
    for i, (image, arr) in enumerate(zip(images, inputs, strict=True)):
        props[probe_key(i, "image")] = base64.b64encode(image).decode("ascii")
        props[probe_key(i, "input")] = base64.b64encode(
            np.ascontiguousarray(arr, np.uint8).tobytes()
        ).decode()
    return props


def _bad(path: str, problem: str, expected: str = "an .onnx written by `imgclf export`") -> ModelFileError:
    return ModelFileError(
        f"invalid model file {path!r}: bad imgclf ONNX metadata: {problem}",
        received=path,
        expected=expected,
        fix="export the model again with `imgclf export MODEL --format onnx`",
    )


def _no_constant(text: str) -> Any:
    raise ValueError(f"non-standard JSON constant {text}")


def _class_names(path: str, names: Any) -> list[str]:
    if not isinstance(names, list) or not MIN_CLASSES <= len(names) <= MAX_CLASSES:
        count = len(names) if isinstance(names, list) else type(names).__name__
        raise _bad(path, f"class_names must be a list of {MIN_CLASSES} to {MAX_CLASSES} names (got {count})")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not 0 < len(name) <= MAX_CLASS_NAME or "\x00" in name:
            got = f"{len(name)} characters" if isinstance(name, str) else type(name).__name__
            raise _bad(
                path,
                f"class_names[{i}] must be a non-empty string of at most {MAX_CLASS_NAME} characters "
                f"without NUL (got {got})",
            )
    if len(set(names)) != len(names):
        raise _bad(path, "class_names must be distinct")
    return names


def _graph_names(path: str, graph: Any) -> None:
    """The manifest's ``graph`` must name the input and output every imgclf export has."""
    want = {"input": INPUT_NAME, "output": OUTPUT_NAME}
    got = {k: graph.get(k) for k in want} if isinstance(graph, dict) else None
    if got != want:
        problem = f"graph must name input {INPUT_NAME!r} and output {OUTPUT_NAME!r} (got {got!r})"
        raise _bad(path, problem[:300])


def _probes(path: str, raw: Any, num_classes: int) -> list[OnnxProbe]:
    if not isinstance(raw, list):
        raise _bad(path, "probes must be a list")
    out = []
    for i, p in enumerate(raw):
        probs = p.get("probabilities") if isinstance(p, dict) else None
        if (
            not isinstance(probs, list)
            or len(probs) != num_classes
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in probs)
            or not isinstance(p.get("input_sha256"), str)
        ):
            raise _bad(path, f"probe {i} must give input_sha256 and {num_classes} finite probabilities")
        out.append(OnnxProbe(i, str(p.get("kind", "")), p["input_sha256"], [float(v) for v in probs]))
    return out


def parse_metadata(props: dict[str, str], path: str) -> OnnxManifest:
    """Validate the imgclf entries of an .onnx file's ``metadata_props``.

    Raises:
        ModelFileError: If there is no imgclf manifest (a plain ONNX model) or it is invalid.
    """
    text = props.get(MANIFEST_KEY)
    if text is None:
        raise ModelFileError(
            f"invalid model file {path!r}: not an imgclf model file: an ONNX model without imgclf metadata "
            "(class names, preprocessing)",
            received=path,
            expected=f"an .onnx written by `imgclf export` (metadata key {MANIFEST_KEY!r})",
            fix="export the .imgclf model with `imgclf export MODEL --format onnx`",
        )
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise _bad(path, f"the manifest is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != ONNX_FORMAT:
        raise _bad(path, f"format marker must be {ONNX_FORMAT!r}")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > ONNX_FORMAT_VERSION:
        raise ModelFileError(
            "unsupported imgclf ONNX format version",
            received=f"{path} (version {version!r})",
            expected=f"version {ONNX_FORMAT_VERSION} or older",
            fix="upgrade imgclf",
        )
    names = _class_names(path, raw.get("class_names"))
    _graph_names(path, raw.get("graph"))
    pre = raw.get("preprocess")
    if not isinstance(pre, dict) or set(pre) != set(PreprocessSpec().to_dict()):
        raise _bad(path, "preprocess must give every preprocessing setting (nothing is assumed)")
    try:
        spec = PreprocessSpec.from_dict(pre, where="preprocess")
    except UsageError as exc:
        raise _bad(path, f"preprocess: {exc.problem}") from None
    _task(path, raw.get("task"), len(names))
    return OnnxManifest(raw, names, spec, _probes(path, raw.get("probes", []), len(names)))


def _task(path: str, task: Any, classes: int) -> None:
    """The optional ``task`` (absent from exports made before multi-label): as the model file's."""
    if task is None:
        return
    thresholds = task.get("thresholds") if isinstance(task, dict) else None
    multi = isinstance(task, dict) and task.get("type") == "multi_label"
    ok = (
        isinstance(task, dict)
        and task.get("type") in ("single_label", "multi_label")
        and (
            thresholds is None
            if not multi
            else isinstance(thresholds, list)
            and len(thresholds) == classes
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in thresholds
            )
        )
    )
    if not ok:
        raise _bad(path, f"task must be single_label, or multi_label with {classes} thresholds in [0, 1]")


def probe_data(props: dict[str, str], m: OnnxManifest, path: str) -> list[tuple[bytes, np.ndarray]]:
    """Each probe's encoded image and stored uint8 input (height, width, 3).

    Raises:
        ModelFileError: If a probe entry is missing or malformed.
    """
    shape = (m.preprocess.height, m.preprocess.width, 3)
    out = []
    for p in m.probes:
        try:
            image = base64.b64decode(props[probe_key(p.index, "image")], validate=True)
            pixels = base64.b64decode(props[probe_key(p.index, "input")], validate=True)
        except (KeyError, binascii.Error):
            raise _bad(path, f"probe {p.index}'s image or input is missing or not base64") from None
        if len(pixels) != math.prod(shape) or not image:
            raise _bad(path, f"probe {p.index}'s input must hold {math.prod(shape)} uint8 values")
        out.append((image, np.frombuffer(pixels, dtype=np.uint8).reshape(shape)))
    return out


def manifest_summary(path: str | os.PathLike[str], m: OnnxManifest, file_format: str) -> dict[str, Any]:
    """What ``inspect`` shows of an exported model's metadata (an .onnx or its OpenVINO IR): the
    export's own figures (``onnx``) without those only the graph itself can tell."""
    raw, prov = m.raw, m.raw.get("provenance", {}) or {}
    export = raw.get("export", {}) or {}
    return {
        "path": os.fspath(path),
        "format": file_format,
        "format_version": raw["format_version"],
        "architecture": raw.get("architecture"),
        "class_names": m.class_names,
        "preprocess": m.preprocess.to_dict(),
        "decode_rule": raw.get("decode_rule"),
        "training": prov.get("training"),
        "metrics": prov.get("metrics"),
        "data": prov.get("data"),
        "versions": export.get("versions"),
        "created": export.get("created"),
        "probes": len(m.probes),
        "probe_kinds": [p.kind for p in m.probes],
        "source": raw.get("source"),
        "onnx": {
            "ir_version": export.get("ir_version"),
            "opset": export.get("opset"),
            "exporter": export.get("exporter"),
            "graph_sha256": raw.get("graph_sha256"),
            "parity": raw.get("parity"),
            "quantization": raw.get("quantization"),
        },
    }
