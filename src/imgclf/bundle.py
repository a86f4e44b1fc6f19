"""The model file: one safetensors file with a JSON manifest; save, load, verify and inspect it.

Loading is parse → validate everything → build from the registry → strict weight load. Nothing in a
file can make imgclf run code: no pickle, no imports by name, only registered architectures. See
``docs/format.md`` for the specification.

Usage::

    imgclf.save(classifier, "model.imgclf")
    clf = imgclf.load("model.imgclf")
    report = verify("model.imgclf"); assert report.ok
    summary = inspect("model.imgclf")            # dict, without building the model
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from imgclf import architectures
from imgclf.classifier import Classifier
from imgclf.config import PreprocessSpec
from imgclf.container import DTYPES, Container, read_container, strict_json
from imgclf.errors import ImageError, ModelFileError, UsageError
from imgclf.files import atomic_write_bytes
from imgclf.images import DECODE_RULE, preprocess_uint8, to_tensor

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_KEY",
    "save",
    "load",
    "verify",
    "inspect",
    "VerifyReport",
    "canonical_json",
    "tensors_digest",
    "versions",
]

FORMAT = "imgclf"
FORMAT_VERSION = 1
MANIFEST_KEY = "imgclf"
PROBE_TOLERANCE = 1e-4
MAX_CLASS_NAME = 1000
_REQUIRED = {
    "format",
    "format_version",
    "architecture",
    "class_names",
    "preprocess",
    "decode_rule",
    "probes",
    "provenance",
    "integrity",
}


def canonical_json(obj: Any) -> str:
    """The one JSON serialisation digests are computed over (sorted keys, no spaces, ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _finite(obj: Any) -> Any:
    """Replace non-finite floats by ``None`` so provenance always serialises as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def versions() -> dict[str, str]:
    """Versions of everything that can change a model's outputs."""
    import PIL

    from imgclf import __version__

    return {
        "imgclf": __version__,
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": sys.platform,
    }


def tensors_digest(items: list[tuple[str, str, tuple[int, ...], memoryview | bytes]]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    h = hashlib.sha256()
    for name, dtype, shape, data in sorted(items, key=lambda t: t[0]):
        h.update(f"{name}\x00{dtype}\x00{list(shape)}\x00{len(data)}\x00".encode())
        h.update(data)
    return h.hexdigest()


def _container_digest(c: Container) -> str:
    view = memoryview(c.data) if c.data is not None else memoryview(b"")
    return tensors_digest([(e.name, e.dtype, e.shape, view[e.begin : e.end]) for e in c.entries.values()])


def make_probe_images() -> list[bytes]:
    """Four small synthetic PNG probes (gradient, checkerboard, noise, disc) — no user data."""
    from PIL import Image

    rng = np.random.default_rng(20240607)
    yy, xx = np.mgrid[0:90, 0:120]
    gradient = np.stack([xx * 2, yy * 2, (xx + yy)], axis=2).astype(np.uint8)
    checker = (((np.indices((48, 48)).sum(axis=0) // 6) % 2) * 255).astype(np.uint8)
    noise = rng.integers(0, 256, size=(70, 70, 3), dtype=np.uint8)
    dy, dx = np.mgrid[-64:64, -64:64]
    disc = np.zeros((128, 128, 3), dtype=np.uint8)
    inside = dy**2 + dx**2 < 50**2
    disc[inside] = (230, 140, 170)
    disc[(dy - 10) ** 2 + (dx + 15) ** 2 < 8**2] = (110, 40, 150)
    out = []
    for arr in (gradient, checker, noise, disc):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _probe_tensor(encoded: bytes, spec: PreprocessSpec) -> tuple[np.ndarray, str]:
    arr = preprocess_uint8(encoded, spec, name="probe image")
    x = to_tensor(arr[None], spec).contiguous()
    return arr, hashlib.sha256(x.numpy().tobytes()).hexdigest()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    for attr in ("_orig_mod", "module"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), torch.nn.Module):
            model = getattr(model, attr)
    return model


def save(classifier: Classifier, path: str | os.PathLike, *, extra_probes: list[bytes] | None = None) -> None:
    """Write ``classifier`` to ``path`` atomically as one safetensors file with a manifest.

    Weights are taken from the unwrapped model as contiguous float32 CPU tensors (integer buffers
    keep their dtype), whatever device, precision or layout training used.

    Args:
        classifier: What to save.
        path: Destination file (replaced only by a complete file).
        extra_probes: Encoded images to store as self-check probes besides the synthetic ones
            (e.g. a few validation images, when the user asks for them).
    """
    model = _unwrap(classifier.model)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.to(torch.float32)
        tensors[f"model.{key}"] = value.contiguous()
    spec = classifier.preprocess
    probes = []
    encoded_all = make_probe_images() + list(extra_probes or [])
    arrays = []
    for i, encoded in enumerate(encoded_all):
        arr, digest = _probe_tensor(encoded, spec)
        arrays.append(arr)
        tensors[f"probe.{i}"] = torch.frombuffer(bytearray(encoded), dtype=torch.uint8).clone()
        probes.append({"tensor": f"probe.{i}", "input_sha256": digest})
    eval_clf = Classifier(
        _copy_to_cpu(model), classifier.class_names, spec, classifier.arch, classifier.arch_args
    )
    probs = eval_clf.predict_proba_uint8(np.stack(arrays))
    for probe, row in zip(probes, probs, strict=True):
        probe["probabilities"] = [float(v) for v in row]
    provenance = _finite(dict(classifier.manifest.get("provenance", {})))
    provenance.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    provenance["versions"] = versions()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {
            "name": classifier.arch,
            "args": architectures.resolve_args(classifier.arch, classifier.arch_args),
        },
        "class_names": list(classifier.class_names),
        "preprocess": spec.to_dict(),
        "decode_rule": DECODE_RULE,
        "probes": probes,
        "provenance": provenance,
    }
    items = [(k, _dtype_name(v), tuple(v.shape), v.numpy().tobytes()) for k, v in tensors.items()]
    manifest["integrity"] = {
        "tensors_sha256": tensors_digest(items),
        "manifest_sha256": hashlib.sha256(canonical_json(manifest).encode()).hexdigest(),
    }
    from safetensors.torch import save as st_save

    payload = st_save(tensors, metadata={MANIFEST_KEY: canonical_json(manifest)})
    atomic_write_bytes(path, payload)


def _copy_to_cpu(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to("cpu", torch.float32)


def _dtype_name(t: torch.Tensor) -> str:
    for name, (dtype, _) in DTYPES.items():
        if t.dtype == dtype:
            return name
    raise UsageError(
        "cannot save tensor dtype",
        received=str(t.dtype),
        expected="float or integer tensors",
        fix="convert the model to float32",
    )


def _bad(path: str, check: str, fix: str = "use an intact model file written by imgclf") -> ModelFileError:
    return ModelFileError(f"invalid model file {path!r}: {check}", fix=fix)


def _manifest(c: Container) -> dict[str, Any]:
    """Extract and validate the manifest (types, digest, version) — no model is built."""
    path = c.path
    if MANIFEST_KEY not in c.metadata:
        raise _bad(
            path,
            "a plain safetensors file without an imgclf manifest",
            fix="this file was not written by imgclf; train one with `imgclf train`",
        )
    m = strict_json(c.metadata[MANIFEST_KEY], "manifest", path)
    if not isinstance(m, dict):
        raise _bad(path, "manifest is not a JSON object")
    if m.get("format") != FORMAT:
        raise _bad(path, f"format marker is {str(m.get('format'))[:40]!r}, expected {FORMAT!r}")
    version = m.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _bad(path, "format_version is missing or not an integer")
    if version > FORMAT_VERSION:
        raise _bad(
            path,
            f"made by a newer imgclf (format version {version}; this imgclf reads up to {FORMAT_VERSION})",
            fix="upgrade imgclf: pip install -U imgclf",
        )
    if version < 1:
        raise _bad(path, f"format version {version} does not exist")
    missing = sorted(_REQUIRED - set(m))
    unknown = sorted(set(m) - _REQUIRED)
    if missing or unknown:
        raise _bad(
            path, f"manifest fields wrong (missing: {missing or 'none'}, unknown: {unknown or 'none'})"
        )
    integrity = m["integrity"]
    if not (
        isinstance(integrity, dict)
        and set(integrity) == {"tensors_sha256", "manifest_sha256"}
        and all(isinstance(v, str) for v in integrity.values())
    ):
        raise _bad(path, "integrity field is malformed")
    body = {k: v for k, v in m.items() if k != "integrity"}
    if hashlib.sha256(canonical_json(body).encode()).hexdigest() != integrity["manifest_sha256"]:
        raise _bad(path, "integrity check failed: the manifest does not match its digest (file modified?)")
    _check_fields(path, m)
    return m


def _check_fields(path: str, m: dict[str, Any]) -> None:
    arch = m["architecture"]
    if not (isinstance(arch, dict) and set(arch) == {"name", "args"} and isinstance(arch["args"], dict)):
        raise _bad(path, "architecture must be {name, args}")
    names = m["class_names"]
    if not isinstance(names, list) or not 2 <= len(names) <= architectures.MAX_CLASSES:
        raise _bad(path, "class_names must be a list of 2 or more names")
    if not all(isinstance(n, str) and 0 < len(n) <= MAX_CLASS_NAME for n in names):
        raise _bad(path, f"class_names must be non-empty strings of at most {MAX_CLASS_NAME} characters")
    if len(set(names)) != len(names):
        raise _bad(path, "class_names contains duplicates")
    rule = m["decode_rule"]
    if isinstance(rule, bool) or not isinstance(rule, int) or not 1 <= rule <= DECODE_RULE:
        raise _bad(path, f"unknown decode rule {str(rule)[:20]}", fix="upgrade imgclf")
    if not isinstance(m["provenance"], dict):
        raise _bad(path, "provenance must be an object")
    probes = m["probes"]
    ok = isinstance(probes, list) and all(
        isinstance(p, dict)
        and set(p) == {"tensor", "input_sha256", "probabilities"}
        and isinstance(p["tensor"], str)
        and isinstance(p["input_sha256"], str)
        and isinstance(p["probabilities"], list)
        and len(p["probabilities"]) == len(names)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p["probabilities"])
        for p in probes
    )
    if not ok:
        raise _bad(path, "probes are malformed")


def _open_validated(
    path: str | os.PathLike,
) -> tuple[Container, dict[str, Any], PreprocessSpec, dict[str, Any]]:
    c = read_container(path)
    m = _manifest(c)
    if _container_digest(c) != m["integrity"]["tensors_sha256"]:
        raise _bad(
            c.path, "integrity check failed: tensor data does not match its digest (corrupt or modified)"
        )
    try:
        spec = PreprocessSpec.from_dict(m["preprocess"], where="preprocess")
        args = architectures.resolve_args(m["architecture"]["name"], m["architecture"]["args"])
    except UsageError as exc:
        raise _bad(c.path, str(exc)) from None
    probe_names = {p["tensor"] for p in m["probes"]}
    stray = sorted(n for n in c.entries if not n.startswith("model.") and n not in probe_names)
    missing = sorted(n for n in probe_names if n not in c.entries)
    if stray or missing:
        raise _bad(c.path, f"unexpected tensors {stray[:5]} / missing probe tensors {missing[:5]}")
    for name in probe_names:
        e = c.entries[name]
        if e.dtype != "U8" or len(e.shape) != 1:
            raise _bad(c.path, f"probe tensor {name!r} must be 1-D uint8")
    return c, m, spec, args


def _build(c: Container, m: dict[str, Any], spec: PreprocessSpec, args: dict[str, Any]) -> torch.nn.Module:
    path = c.path
    names = m["class_names"]
    try:
        with torch.device("meta"):
            model = architectures.build(m["architecture"]["name"], len(names), spec.size, args)
    except UsageError as exc:
        raise _bad(path, f"cannot build the architecture: {exc}") from None
    expected = {f"model.{k}": v for k, v in model.state_dict().items()}
    present = {n for n in c.entries if n.startswith("model.")}
    missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        problems.append(f"unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    for name in sorted(set(expected) & present):
        want, got = expected[name], c.entries[name]
        if tuple(want.shape) != got.shape:
            if (
                want.ndim >= 1
                and len(got.shape) == want.ndim
                and want.shape[0] == len(names)
                and got.shape[0] != len(names)
                and tuple(want.shape[1:]) == got.shape[1:]
            ):
                problems.append(f"class count mismatch: manifest {len(names)}, weights {got.shape[0]}")
            else:
                problems.append(f"tensor {name!r} shape {list(got.shape)}, expected {list(want.shape)}")
        elif _dtype_name(want) != got.dtype:
            problems.append(f"tensor {name!r} dtype {got.dtype}, expected {_dtype_name(want)}")
    if problems:
        raise _bad(path, "weights do not match the architecture: " + "; ".join(problems[:6]))
    state = {}
    for name in expected:
        t = c.tensor(name)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _bad(path, f"tensor {name!r} contains NaN or infinite values")
        state[name[len("model.") :]] = t
    model.load_state_dict(state, strict=True, assign=True)
    return model


def load(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> Classifier:
    """Load a model file: validate everything, build the registered architecture, load weights strictly.

    Raises:
        ModelFileError: If the file is missing, foreign, corrupt, tampered with or inconsistent.
    """
    c, m, spec, args = _open_validated(path)
    model = _build(c, m, spec, args)
    return Classifier(
        model,
        m["class_names"],
        spec,
        m["architecture"]["name"],
        args,
        manifest={k: v for k, v in m.items() if k not in ("integrity",)},
        device=device,
    )


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`: one line per check and whether all passed."""

    path: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if every check passed."""
        return all(ok for _, ok, _ in self.checks)


def verify(path: str | os.PathLike, *, tolerance: float = PROBE_TOLERANCE) -> VerifyReport:
    """Load the file and re-run its probe images; report preprocessing or output drift precisely.

    Raises:
        ModelFileError: If the file does not even load (see :func:`load`).
    """
    c, m, spec, args = _open_validated(path)
    report = VerifyReport(os.fspath(path))
    report.checks.append(("structure and digests", True, "header, manifest and tensor digests match"))
    model = _build(c, m, spec, args)
    report.checks.append(
        (
            "architecture and weights",
            True,
            f"{m['architecture']['name']}, {len(m['class_names'])} classes, all finite",
        )
    )
    clf = Classifier(model, m["class_names"], spec, m["architecture"]["name"], args)
    arrays = []
    for i, probe in enumerate(m["probes"]):
        encoded = c.tensor(probe["tensor"]).numpy().tobytes()
        try:
            arr, digest = _probe_tensor(encoded, spec)
        except ImageError as exc:
            report.checks.append(
                (f"probe {i} preprocessing", False, f"probe no longer decodes: {exc.problem}")
            )
            return report
        arrays.append(arr)
        same = digest == probe["input_sha256"]
        report.checks.append(
            (
                f"probe {i} preprocessing",
                same,
                "identical input tensor"
                if same
                else "preprocessed tensor differs from save time (Pillow or imgclf changed?)",
            )
        )
    if arrays:
        probs = clf.predict_proba_uint8(np.stack(arrays))
        for i, (probe, row) in enumerate(zip(m["probes"], probs, strict=True)):
            diff = float(np.max(np.abs(row - np.asarray(probe["probabilities"], dtype=np.float64))))
            ok = diff <= tolerance
            report.checks.append(
                (f"probe {i} output", ok, f"max |Δp| = {diff:.3g} (tolerance {tolerance:g})")
            )
    return report


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """Summarise a model file without building the model (digests are checked).

    Raises:
        ModelFileError: If the file is not a valid imgclf file.
    """
    c, m, spec, args = _open_validated(path)
    prov = m["provenance"]
    return {
        "path": c.path,
        "format": m["format"],
        "format_version": m["format_version"],
        "architecture": {"name": m["architecture"]["name"], "args": args},
        "class_names": m["class_names"],
        "preprocess": spec.to_dict(),
        "decode_rule": m["decode_rule"],
        "training": prov.get("training"),
        "metrics": prov.get("metrics"),
        "data": prov.get("data"),
        "versions": prov.get("versions"),
        "created": prov.get("created"),
        "epoch": prov.get("epoch"),
        "device": prov.get("device"),
        "probes": len(m["probes"]),
        "integrity": m["integrity"],
        "tensors": sum(1 for n in c.entries if n.startswith("model.")),
        "parameters": sum(math.prod(e.shape) for n, e in c.entries.items() if n.startswith("model.")),
        "file_bytes": 8 + c.header_bytes + (len(c.data) if c.data is not None else 0),
    }
