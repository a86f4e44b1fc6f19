"""The manifest: the JSON document under the ``imgclf`` metadata key, its schema and its versions.

Every field is checked for presence, type and bounds; unknown fields are refused (except inside
``provenance``, which is informational and never changes how the model is built or run). Each format
version has its own reader, kept forever; see ``docs/format.md``.

Usage::

    m = parse(container)                  # Manifest, or ModelFileError naming the file and the check
    m.arch, m.class_names, m.preprocess, m.probes
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from imgclf.config import PreprocessSpec
from imgclf.errors import ModelFileError, UsageError
from imgclf.images.preprocess import DECODE_RULE
from imgclf.modelfile.checks import invalid, is_int, is_num, require, strict_json
from imgclf.modelfile.digests import canonical_json, manifest_digest
from imgclf.modelfile.foreign import CHECKPOINT_KEY, describe_checkpoint
from imgclf.modelfile.format import Container
from imgclf.modelfile.provenance import check_provenance
from imgclf.modelfile.trust import OPTIONAL_FIELDS, check_trust
from imgclf.models import registry

FORMAT = "imgclf"
FORMAT_VERSION = 2
TASK_TYPES = ("single_label", "multi_label")
BALANCE_CHOICES = ("none", "weights", "sampler")
MANIFEST_KEY = "imgclf"
MAX_PROBES = 64
MAX_CLASS_NAME = 1000
MAX_STRING = 65536
MAX_DEPTH = 32
PROBE_KINDS = ("synthetic", "validation")
_PROBE_FIELDS = {"kind", "input_sha256", "probabilities"}  # plus the optional "label"
_TOP = ("format", "format_version", "architecture", "class_names", "preprocess", "decode_rule", "probes")
_FIELDS = {*_TOP, "provenance", "integrity"}
# Frozen with format version 1: a setting added to PreprocessSpec later must default to v1 behaviour,
# and v1 files (which never carry it) must keep loading.
_PREPROCESS_V1 = frozenset({"height", "width", "interpolation", "rescale", "mean", "std"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Probe:
    """One self-check probe: tensors ``probe.N`` (encoded image) and ``probe.N.input`` (H, W, 3 uint8)."""

    index: int
    kind: str
    input_sha256: str
    probabilities: tuple[float, ...]
    label: tuple[int, str] | None = None  # (index, name) at save time; absent from older files

    @property
    def image_tensor(self) -> str:
        """Name of the tensor holding the encoded image bytes."""
        return f"probe.{self.index}"

    @property
    def input_tensor(self) -> str:
        """Name of the tensor holding the preprocessed uint8 input as computed at save time."""
        return f"probe.{self.index}.input"


@dataclass(frozen=True)
class Task:
    """What the outputs mean (format version 2's ``task`` field; version 1 files are single-label).

    Attributes:
        type: ``single_label`` (softmax over the classes) or ``multi_label`` (a sigmoid per class).
        thresholds: Multi-label: each class's decision threshold, chosen on the validation split.
        balance: How training handled class imbalance (``none``, ``weights``, ``sampler``).
    """

    type: str = "single_label"
    thresholds: tuple[float, ...] | None = None
    balance: str = "none"

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``task`` object."""
        thresholds = list(self.thresholds) if self.thresholds is not None else None
        return {"type": self.type, "thresholds": thresholds, "balance": self.balance}


def _task(path: str, task: Any, classes: int) -> Task:
    """Check the ``task`` object: its type, balance and (multi-label only) one threshold per class."""
    ok = isinstance(task, dict) and set(task) == {"type", "thresholds", "balance"}
    require(path, ok, "task", "an object with type, thresholds and balance", task)
    require(path, task["type"] in TASK_TYPES, "task.type", " | ".join(TASK_TYPES), task["type"])
    balance = task["balance"]
    require(path, balance in BALANCE_CHOICES, "task.balance", " | ".join(BALANCE_CHOICES), balance)
    thresholds = task["thresholds"]
    if task["type"] == "single_label":
        require(path, thresholds is None, "task.thresholds", "null for a single-label model", thresholds)
        return Task("single_label", None, task["balance"])
    ok = (
        isinstance(thresholds, list)
        and len(thresholds) == classes
        and all(is_num(v) and 0.0 <= v <= 1.0 for v in thresholds)
    )
    require(path, ok, "task.thresholds", f"{classes} thresholds in [0, 1]", thresholds)
    return Task("multi_label", tuple(float(v) for v in thresholds), task["balance"])


@dataclass(frozen=True)
class Manifest:
    """A validated manifest (the current format version in memory, whatever version the file had)."""

    path: str
    format_version: int
    arch: str
    arch_args: dict[str, Any]
    class_names: list[str]
    preprocess: PreprocessSpec
    decode_rule: int
    probes: list[Probe]
    provenance: dict[str, Any]
    integrity: dict[str, str]
    raw: dict[str, Any]
    task: Task = Task()


def _check_bounds(path: str, obj: Any) -> None:
    """Walk the parsed JSON iteratively: depth, string length and valid Unicode (no lone surrogates)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise invalid(path, f"manifest is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            if len(value) > MAX_STRING:
                raise invalid(
                    path, f"manifest holds a string of {len(value)} characters (limit {MAX_STRING})"
                )
            if _SURROGATE.search(value):
                raise invalid(path, f"manifest string {value[:40]!r} is not valid Unicode (lone surrogate)")


def _class_names(path: str, names: Any) -> list[str]:
    require(
        path,
        isinstance(names, list) and 2 <= len(names) <= registry.MAX_CLASSES,
        "class_names",
        f"a list of 2 to {registry.MAX_CLASSES} names",
        names,
    )
    for i, name in enumerate(names):
        ok = isinstance(name, str) and 0 < len(name) <= MAX_CLASS_NAME and "\x00" not in name
        require(
            path,
            ok,
            f"class_names[{i}]",
            f"a non-empty string of at most {MAX_CLASS_NAME} characters, no NUL",
            name,
        )
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dupes = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
        raise invalid(path, f"class_names has duplicates: {dupes[:5]}", fix="class names must be unique")
    return list(names)


def _probes(path: str, probes: Any, classes: int, multi_label: bool = False) -> list[Probe]:
    require(
        path,
        isinstance(probes, list) and 1 <= len(probes) <= MAX_PROBES,
        "probes",
        f"a list of 1 to {MAX_PROBES}",
        probes,
    )
    out = []
    for i, p in enumerate(probes):
        field = f"probes[{i}]"
        require(
            path,
            isinstance(p, dict) and set(p) - {"label"} == _PROBE_FIELDS,
            field,
            "an object with kind, input_sha256, probabilities (and, since labels were added, label)",
            p,
        )
        require(path, p["kind"] in PROBE_KINDS, f"{field}.kind", " | ".join(PROBE_KINDS), p["kind"])
        digest = p["input_sha256"]
        require(
            path,
            isinstance(digest, str) and bool(_HEX64.fullmatch(digest)),
            f"{field}.input_sha256",
            "64 hex digits",
            digest,
        )
        probs = p["probabilities"]
        ok = (
            isinstance(probs, list)
            and len(probs) == classes
            and all(is_num(v) and 0.0 <= v <= 1.0 for v in probs)
            and (multi_label or abs(sum(probs) - 1.0) < 1e-3)
        )
        sums = "" if multi_label else " summing to 1"
        require(path, ok, f"{field}.probabilities", f"{classes} probabilities in [0, 1]{sums}", probs)
        label = _probe_label(path, field, p.get("label"), classes) if "label" in p else None
        out.append(Probe(i, p["kind"], digest, tuple(float(v) for v in probs), label))
    return out


def _probe_label(path: str, field: str, label: Any, classes: int) -> tuple[int, str]:
    """``{"index": i, "name": s}``: the class the probe got at save time (checked by ``verify``)."""
    ok = (
        isinstance(label, dict)
        and set(label) == {"index", "name"}
        and is_int(label["index"])
        and 0 <= label["index"] < classes
        and isinstance(label["name"], str)
        and 0 < len(label["name"]) <= MAX_CLASS_NAME
    )
    require(path, ok, f"{field}.label", f"an object with index (0 to {classes - 1}) and name", label)
    return label["index"], label["name"]


def _integrity(path: str, m: dict[str, Any]) -> dict[str, str]:
    """The manifest's ``integrity`` block, well formed and matching the manifest's own digest."""
    integrity = m["integrity"]
    ok = (
        isinstance(integrity, dict)
        and set(integrity) == {"tensors_sha256", "manifest_sha256"}
        and all(isinstance(v, str) and _HEX64.fullmatch(v) for v in integrity.values())
    )
    require(path, ok, "integrity", "tensors_sha256 and manifest_sha256, 64 hex digits each", integrity)
    if manifest_digest(m) != integrity["manifest_sha256"]:
        raise invalid(path, "integrity check failed: the manifest does not match its digest (file modified?)")
    return integrity


def _validate_v1(path: str, m: dict[str, Any], version: int, text: str | None) -> Manifest:
    if text is not None and canonical_json(m) != text:
        # imgclf writes canonical JSON only, so any other spelling means the text was edited.
        raise invalid(path, "manifest is not in canonical form (file modified?)")
    # Version 2 added the task (required), calibration and OOD threshold (optional: modelfile/trust.py).
    fields = _FIELDS | {"task"} if version >= 2 else _FIELDS
    optional = OPTIONAL_FIELDS if version >= 2 else frozenset()
    missing, unknown = sorted(fields - set(m)), sorted(set(m) - fields - optional)
    if missing or unknown:
        raise invalid(
            path, f"manifest fields wrong (missing: {missing or 'none'}, unknown: {unknown[:5] or 'none'})"
        )
    integrity = _integrity(path, m)
    arch = m["architecture"]
    ok = isinstance(arch, dict) and set(arch) == {"name", "args"} and isinstance(arch["args"], dict)
    require(path, ok, "architecture", "an object with name and args", arch)
    try:
        # Only registered names resolve: nothing is imported or looked up by a name from the file.
        args = registry.resolve_args(arch["name"], arch["args"])
    except UsageError as exc:
        raise invalid(path, exc.problem, received=exc.received, expected=exc.expected) from None
    names = _class_names(path, m["class_names"])
    task = _task(path, m["task"], len(names)) if version >= 2 else Task()
    pre = m["preprocess"]
    fields = set(_PREPROCESS_V1)
    require(
        path,
        isinstance(pre, dict) and set(pre) == fields,
        "preprocess",
        "keys " + ", ".join(sorted(fields)),
        pre,
    )
    try:
        spec = PreprocessSpec.from_dict(pre, where="preprocess")
    except UsageError as exc:
        raise invalid(path, exc.problem, received=exc.received, expected=exc.expected) from None
    check_trust(path, m)
    rule = m["decode_rule"]
    if not is_int(rule) or not 1 <= rule <= DECODE_RULE:
        raise invalid(
            path,
            f"unknown decode rule {str(rule)[:20]}",
            expected=f"1..{DECODE_RULE}",
            fix="upgrade imgclf: pip install -U imgclf",
        )
    return Manifest(
        path=path,
        format_version=version,
        arch=arch["name"],
        arch_args=args,
        class_names=names,
        preprocess=spec,
        decode_rule=rule,
        probes=_probes(path, m["probes"], len(names), task.type == "multi_label"),
        provenance=check_provenance(path, m["provenance"]),
        integrity=dict(integrity),
        raw=m,
        task=task,
    )


# One reader per format version, kept forever. A new version adds an entry; older readers migrate to
# the current in-memory Manifest so the rest of imgclf handles only one shape.
# Version 2 added ``task`` (single- or multi-label, thresholds, class balance); the same checks read both.
_READERS = {1: _validate_v1, 2: _validate_v1}


def validate(path: str, m: Any, text: str | None = None) -> Manifest:
    """Validate a parsed manifest object: marker, version, bounds, digest of itself, every field.

    Args:
        path: The file, for error messages.
        m: The parsed manifest.
        text: The manifest text as stored, which must be the canonical JSON of ``m``.

    Raises:
        ModelFileError: Naming ``path`` and the failed check.
    """
    if not isinstance(m, dict):
        raise invalid(path, "manifest is not a JSON object")
    _check_bounds(path, m)
    if m.get("format") != FORMAT:
        raise invalid(path, f"format marker is {str(m.get('format'))[:40]!r}, expected {FORMAT!r}")
    version = m.get("format_version")
    if not is_int(version):
        raise invalid(path, "format_version is missing or not an integer", received=repr(version)[:40])
    if version > FORMAT_VERSION:
        raise invalid(
            path,
            f"made by a newer version of imgclf (format version {version}; "
            f"this imgclf reads up to {FORMAT_VERSION})",
            fix="upgrade imgclf: pip install -U imgclf",
        )
    if version not in _READERS:
        raise invalid(path, f"format version {version} does not exist", expected=f"1..{FORMAT_VERSION}")
    return _READERS[version](path, m, version, text)


def parse(c: Container) -> Manifest:
    """Extract the manifest from a container's metadata and validate it (no model is built).

    Raises:
        ModelFileError: If the manifest is absent, not JSON, from a newer imgclf, or invalid.
    """
    if MANIFEST_KEY not in c.metadata and CHECKPOINT_KEY in c.metadata:
        what, fix = describe_checkpoint(c.path)
        raise ModelFileError(f"invalid model file {c.path!r}: not an imgclf model file: {what}", fix=fix)
    if MANIFEST_KEY not in c.metadata:
        keys = ", ".join(sorted(c.metadata)[:5]) or "none"
        raise ModelFileError(
            f"invalid model file {c.path!r}: not an imgclf model file: it is a plain safetensors file "
            f"without an imgclf manifest (metadata keys: {keys})",
            fix="this file was not written by imgclf; train one with `imgclf train`",
        )
    text = c.metadata[MANIFEST_KEY]
    return validate(c.path, strict_json(text, "manifest", c.path), text)
