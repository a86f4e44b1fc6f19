"""The model file: save, load, verify and inspect one safetensors file with a JSON manifest.

Loading is parse → validate everything → build from the registry → strict weight load. Nothing in a
file can make imgclf run code: no pickle, no imports by name, only registered architectures. See
``docs/format.md`` for the specification; :mod:`imgclf.modelfile.format` reads the bytes,
:mod:`imgclf.modelfile.manifest`
checks the manifest, :mod:`imgclf.modelfile.probes` runs the self-checks.

Usage::

    imgclf.save(classifier, "model.imgclf")
    clf = imgclf.load("model.imgclf")
    report = verify("model.imgclf"); assert report.ok
    summary = inspect("model.imgclf")            # dict, without building the model
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from imgclf._version import versions
from imgclf.classifier import Classifier
from imgclf.errors import ModelFileError, UsageError
from imgclf.fileio.writing import atomic_write_bytes
from imgclf.images.preprocess import DECODE_RULE
from imgclf.images.read import MAX_PIXELS, checked_max_pixels
from imgclf.modelfile import probes, weights
from imgclf.modelfile.checks import invalid
from imgclf.modelfile.digests import canonical_json, container_digest, manifest_digest, tensors_digest
from imgclf.modelfile.format import Container, read_container
from imgclf.modelfile.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_KEY,
    MAX_PROBES,
    Manifest,
    parse,
    validate,
)
from imgclf.modelfile.provenance import fit_provenance
from imgclf.models import registry

MAX_PROBE_BYTES = 8 * 1024 * 1024
SYNTHETIC_PROBES = 4
MAX_EXTRA_PROBES = MAX_PROBES - SYNTHETIC_PROBES


def _finite(obj: Any) -> Any:
    """Replace non-finite floats by ``None`` so provenance always serialises as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _check_probe_tensors(c: Container, m: Manifest) -> None:
    names = {p.image_tensor for p in m.probes} | {p.input_tensor for p in m.probes}
    stray = sorted(n for n in c.entries if not n.startswith("model.") and n not in names)
    missing = sorted(names - set(c.entries))
    if missing:
        raise invalid(c.path, f"missing probe tensors {missing[:5]}")
    if stray:
        raise invalid(c.path, f"unexpected tensors {stray[:5]}", expected="model.* and probe.N[.input] only")
    size = (m.preprocess.height, m.preprocess.width, 3)
    for p in m.probes:
        image, arr = c.entries[p.image_tensor], c.entries[p.input_tensor]
        if image.dtype != "U8" or len(image.shape) != 1 or not 0 < image.shape[0] <= MAX_PROBE_BYTES:
            raise invalid(
                c.path, f"probe tensor {image.name!r} must be 1-D uint8 bytes (1 to {MAX_PROBE_BYTES})"
            )
        if arr.dtype != "U8" or arr.shape != size:
            raise invalid(
                c.path,
                f"probe tensor {arr.name!r} must be uint8 shaped {list(size)}, "
                f"got {arr.dtype} {list(arr.shape)}",
            )


def _open_validated(path: str | os.PathLike) -> tuple[Container, Manifest]:
    c = read_container(path)
    m = parse(c)
    if container_digest(c) != m.integrity["tensors_sha256"]:
        raise invalid(
            c.path, "integrity check failed: tensor data does not match its digest (corrupt or modified)"
        )
    _check_probe_tensors(c, m)
    return c, m


def load(
    path: str | os.PathLike, *, device: torch.device | str = "cpu", max_pixels: int = MAX_PIXELS
) -> Classifier:
    """Load a model file: validate everything, build the registered architecture, load weights strictly.

    Args:
        path: The model file.
        device: Where the returned classifier runs.
        max_pixels: Pixel cap for the images it classifies (at most ``MAX_PIXELS``, the default).

    Raises:
        ModelFileError: If the file is missing, foreign, corrupt, tampered with or inconsistent.
    """
    checked_max_pixels(max_pixels)  # a bad value fails before the model file is read
    clf = _classifier(*_open_validated(path), device=device)
    clf.max_pixels = max_pixels
    return clf


def _classifier(c: Container, m: Manifest, device: torch.device | str = "cpu") -> Classifier:
    model = weights.build_from(c, m)
    manifest = {k: v for k, v in m.raw.items() if k != "integrity"}
    return Classifier(
        model, m.class_names, m.preprocess, m.arch, m.arch_args, manifest=manifest, device=device
    )


def _probe_images(extra: list[bytes] | None) -> tuple[list[bytes], list[str]]:
    synthetic = probes.synthetic_images()
    extra = [bytes(b) for b in extra or []]
    if len(extra) > MAX_EXTRA_PROBES or any(not 0 < len(b) <= MAX_PROBE_BYTES for b in extra):
        raise UsageError(
            "too many or too large extra probe images",
            received=f"{len(extra)} images, largest {max((len(b) for b in extra), default=0)} bytes",
            expected=f"at most {MAX_EXTRA_PROBES} images of at most {MAX_PROBE_BYTES} bytes",
            fix="ask for fewer probes (--probes-from N)",
        )
    return synthetic + extra, ["synthetic"] * len(synthetic) + ["validation"] * len(extra)


def serialize(classifier: Classifier, *, extra_probes: list[bytes] | None = None) -> bytes:
    """The model file's bytes (see :func:`save`); validated exactly as :func:`load` would.

    Raises:
        UsageError: If the model does not match its architecture, has non-finite weights, or its class
            names or settings cannot be stored.
    """
    model_tensors = weights.from_model(classifier.model)
    spec = classifier.preprocess
    arch_args = registry.resolve_args(classifier.arch, classifier.arch_args)
    fresh = weights.meta_model(classifier.arch, len(classifier.class_names), spec.size, arch_args)
    got = {k: (tuple(v.shape), weights.dtype_name(v)) for k, v in model_tensors.items()}
    problems = weights.compare(weights.signature(fresh), got)
    if problems:
        raise UsageError(
            "cannot save: the model does not match its architecture",
            received="; ".join(problems[:4]),
            expected=f"{classifier.arch} with {len(classifier.class_names)} classes",
            fix="save the model built for these class names and architecture args",
        )
    # Probes run on a model rebuilt from exactly the tensors being saved: what load() will produce.
    state = {k[len("model.") :]: v for k, v in model_tensors.items()}
    fresh.load_state_dict(state, strict=True, assign=True)
    rebuilt = Classifier(fresh, classifier.class_names, spec, classifier.arch, arch_args)
    images, kinds = _probe_images(extra_probes)
    records = probes.compute(rebuilt, images, kinds)
    tensors = dict(model_tensors)
    for i, r in enumerate(records):
        tensors[f"probe.{i}"] = torch.frombuffer(bytearray(r.encoded), dtype=torch.uint8)
        tensors[f"probe.{i}.input"] = probes.as_uint8_tensor(r.input)
    provenance = _finite(dict(classifier.manifest.get("provenance", {})))
    provenance.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    provenance["versions"] = versions()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {"name": classifier.arch, "args": arch_args},
        "class_names": list(classifier.class_names),
        "preprocess": spec.to_dict(),
        "decode_rule": DECODE_RULE,
        "probes": [
            {
                "kind": r.kind,
                "input_sha256": r.input_sha256,
                "probabilities": r.probabilities,
                "label": {"index": r.label_index, "name": r.label_name},
            }
            for r in records
        ],
        "provenance": fit_provenance(provenance),
    }
    items = [(k, weights.dtype_name(v), tuple(v.shape), v.numpy().tobytes()) for k, v in tensors.items()]
    manifest["integrity"] = {
        "tensors_sha256": tensors_digest(items),
        "manifest_sha256": manifest_digest(manifest),
    }
    try:
        validate("<being saved>", manifest)  # never write a file that load() would refuse
    except ModelFileError as exc:
        raise UsageError(
            f"cannot save: {exc.problem.split(': ', 1)[-1]}", received=exc.received, expected=exc.expected
        ) from None
    from safetensors.torch import save as st_save

    return st_save(tensors, metadata={MANIFEST_KEY: canonical_json(manifest)})


def save(classifier: Classifier, path: str | os.PathLike, *, extra_probes: list[bytes] | None = None) -> None:
    """Write ``classifier`` to ``path`` atomically as one safetensors file with a manifest.

    Weights are taken from the unwrapped model (no ``module.``/``_orig_mod.`` prefixes) as contiguous
    float32 CPU tensors (integer buffers keep their dtype), whatever device, precision or layout
    training used. An existing file is only ever replaced by a complete one.

    Args:
        classifier: What to save.
        path: Destination file.
        extra_probes: Encoded images to store as self-check probes besides the synthetic ones
            (e.g. a few validation images, when the user asks for them).

    Raises:
        UsageError: See :func:`serialize`.
        StorageError: If the file cannot be written (folder missing or read-only, disk full).
    """
    atomic_write_bytes(path, serialize(classifier, extra_probes=extra_probes))


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`: one ``(check, ok, detail)`` row per check, and whether all passed."""

    path: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if every check passed."""
        return all(ok for _, ok, _ in self.checks)


def verify(path: str | os.PathLike, *, tolerance: float = probes.TOLERANCE) -> VerifyReport:
    """Load the file and re-run its probes; report preprocessing or model-output drift precisely.

    Raises:
        ModelFileError: If the file does not even load (see :func:`load`).
    """
    c, m = _open_validated(path)
    report = VerifyReport(os.fspath(path))
    report.checks.append(("structure and digests", True, "header, manifest and tensor digests match"))
    clf = _classifier(c, m)
    detail = f"{m.arch}, {len(m.class_names)} classes, all weights finite"
    report.checks.append(("architecture and weights", True, detail))
    report.checks.extend(probes.run_checks(clf, m, c, tolerance=tolerance))
    return report


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """Summarise a model file without building the model (the digests are checked).

    Raises:
        ModelFileError: If the file is not a valid imgclf file.
    """
    c, m = _open_validated(path)
    prov = m.provenance
    model_entries = [e for n, e in c.entries.items() if n.startswith("model.")]
    return {
        "path": c.path,
        "format": FORMAT,
        "format_version": m.format_version,
        "architecture": {"name": m.arch, "args": m.arch_args},
        "class_names": m.class_names,
        "preprocess": m.preprocess.to_dict(),
        "decode_rule": m.decode_rule,
        "training": prov.get("training"),
        "metrics": prov.get("metrics"),
        "data": prov.get("data"),
        "versions": prov.get("versions"),
        "created": prov.get("created"),
        "imported_from": prov.get("imported_from"),
        "epoch": prov.get("epoch"),
        "device": prov.get("device"),
        "probes": len(m.probes),
        "probe_kinds": [p.kind for p in m.probes],
        "integrity": m.integrity,
        "tensors": len(model_entries),
        "parameters": sum(math.prod(e.shape) for e in model_entries),
        "file_bytes": c.file_bytes,
    }
