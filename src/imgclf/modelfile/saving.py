"""Saving a model file: the classifier's weights, probes and manifest as one safetensors file, atomically.

The file is built and validated exactly as :func:`imgclf.modelfile.load` will read it (a file load would
refuse is never written); its probes are computed on a model rebuilt from the very tensors being saved.
Loading, verifying and inspecting are in :mod:`imgclf.modelfile`, which also exports these functions.

Usage::

    save(classifier, "model.imgclf")
    blob = serialize(classifier)          # the same bytes, in memory
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from typing import Any

import torch

from imgclf._version import versions
from imgclf.classifier import Classifier
from imgclf.errors import ModelFileError, UsageError
from imgclf.fileio.writing import atomic_write_bytes
from imgclf.images.preprocess import DECODE_RULE
from imgclf.modelfile import probes, weights
from imgclf.modelfile.digests import canonical_json, manifest_digest, tensors_digest
from imgclf.modelfile.manifest import FORMAT, FORMAT_VERSION, MANIFEST_KEY, MAX_PROBES, Task, validate
from imgclf.modelfile.provenance import fit_provenance
from imgclf.modelfile.trust import OPTIONAL_FIELDS
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
    arch_args = registry.resolve_args(classifier.arch, classifier.arch_args)
    model_tensors, fresh = _weights_checked(classifier, arch_args)
    # Probes run on a model rebuilt from exactly the tensors being saved: what load() will produce.
    state = {k[len("model.") :]: v for k, v in model_tensors.items()}
    fresh.load_state_dict(state, strict=True, assign=True)
    # With its task, calibration and OOD threshold: the probes record what predict will answer.
    kept = {k: v for k, v in classifier.manifest.items() if k in OPTIONAL_FIELDS}
    names, spec = classifier.class_names, classifier.preprocess
    rebuilt = Classifier(
        fresh, names, spec, classifier.arch, arch_args, manifest={**kept, "task": _task_of(classifier)}
    )
    images, kinds = _probe_images(extra_probes)
    records = probes.compute(rebuilt, images, kinds)
    tensors = dict(model_tensors)
    for i, r in enumerate(records):
        tensors[f"probe.{i}"] = torch.frombuffer(bytearray(r.encoded), dtype=torch.uint8)
        tensors[f"probe.{i}.input"] = probes.as_uint8_tensor(r.input)
    manifest = _manifest(classifier, arch_args, records, tensors)
    try:
        validate("<being saved>", manifest)  # never write a file that load() would refuse
    except ModelFileError as exc:
        raise UsageError(
            f"cannot save: {exc.problem.split(': ', 1)[-1]}", received=exc.received, expected=exc.expected
        ) from None
    from safetensors.torch import save as st_save

    return st_save(tensors, metadata={MANIFEST_KEY: canonical_json(manifest)})


def _weights_checked(
    classifier: Classifier, arch_args: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """The tensors to save and an empty (meta) model of the same architecture, once they match.

    Raises:
        UsageError: If the tensors' names, shapes or dtypes differ from the architecture's.
    """
    model_tensors = weights.from_model(classifier.model)
    spec = classifier.preprocess
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
    return model_tensors, fresh


def _task_of(classifier: Classifier) -> dict[str, Any]:
    """The ``task`` field: the classifier's (set by training), else single-label without balancing."""
    return dict(classifier.manifest.get("task") or Task().to_dict())


def _manifest(
    classifier: Classifier,
    arch_args: dict[str, Any],
    records: list[probes.ProbeRecord],
    tensors: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """The manifest of a file holding ``tensors`` (weights and probes), with its integrity digests."""
    provenance = _finite(dict(classifier.manifest.get("provenance", {})))
    provenance.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    provenance["versions"] = versions()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {"name": classifier.arch, "args": arch_args},
        "class_names": list(classifier.class_names),
        "preprocess": classifier.preprocess.to_dict(),
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
        "task": _task_of(classifier),
    }
    manifest.update({k: _finite(v) for k, v in classifier.manifest.items() if k in OPTIONAL_FIELDS})
    items = [(k, weights.dtype_name(v), tuple(v.shape), v.numpy().tobytes()) for k, v in tensors.items()]
    manifest["integrity"] = {
        "tensors_sha256": tensors_digest(items),
        "manifest_sha256": manifest_digest(manifest),
    }
    return manifest


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
