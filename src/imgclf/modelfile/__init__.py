"""The model file: save, load, verify and inspect one safetensors file with a JSON manifest.

Loading is parse → validate everything → build from the registry → strict weight load. Nothing in a
file can make imgclf run code: no pickle, no imports by name, only registered architectures. See
``docs/format.md`` for the specification; :mod:`imgclf.modelfile.format` reads the bytes,
:mod:`imgclf.modelfile.manifest`
checks the manifest, :mod:`imgclf.modelfile.probes` runs the self-checks, :mod:`imgclf.modelfile.saving`
writes the file (``save`` and ``serialize`` are exported here).

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
from typing import Any

import torch

from imgclf.classifier import Classifier
from imgclf.images.read import MAX_PIXELS, checked_max_pixels
from imgclf.modelfile import probes, weights
from imgclf.modelfile.checks import invalid
from imgclf.modelfile.digests import container_digest
from imgclf.modelfile.format import Container, read_container
from imgclf.modelfile.manifest import FORMAT, Manifest, parse
from imgclf.modelfile.saving import MAX_EXTRA_PROBES as MAX_EXTRA_PROBES  # re-exported: the CLI's limit
from imgclf.modelfile.saving import MAX_PROBE_BYTES
from imgclf.modelfile.saving import save as save
from imgclf.modelfile.saving import serialize as serialize


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


def _open_validated(path: str | os.PathLike[str]) -> tuple[Container, Manifest]:
    c = read_container(path)
    m = parse(c)
    if container_digest(c) != m.integrity["tensors_sha256"]:
        raise invalid(
            c.path, "integrity check failed: tensor data does not match its digest (corrupt or modified)"
        )
    _check_probe_tensors(c, m)
    return c, m


def load(
    path: str | os.PathLike[str], *, device: torch.device | str = "cpu", max_pixels: int = MAX_PIXELS
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


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`: one ``(check, ok, detail)`` row per check, and whether all passed."""

    path: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if every check passed."""
        return all(ok for _, ok, _ in self.checks)


def verify(path: str | os.PathLike[str], *, tolerance: float = probes.TOLERANCE) -> VerifyReport:
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


def _distributed(facts: Any) -> dict[str, Any] | None:
    """The run's parallelism as recorded (world size, backend, batches, batch norm); files written before
    ``global_batch`` was recorded get it as world size × per-rank batch."""
    if not isinstance(facts, dict):
        return None
    settings: dict[str, Any] = dict(facts)
    size, per_rank = settings.get("world_size"), settings.get("per_rank_batch")
    if "global_batch" not in settings and isinstance(size, int) and isinstance(per_rank, int):
        settings["global_batch"] = size * per_rank
    return settings


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
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
        "task": m.task.to_dict(),
        "training": prov.get("training"),
        "metrics": prov.get("metrics"),
        "data": prov.get("data"),
        "versions": prov.get("versions"),
        "created": prov.get("created"),
        "imported_from": prov.get("imported_from"),
        "started_from": prov.get("started_from"),
        "epoch": prov.get("epoch"),
        "device": prov.get("device"),
        "distributed": _distributed(prov.get("distributed")),
        "probes": len(m.probes),
        "probe_kinds": [p.kind for p in m.probes],
        "integrity": m.integrity,
        "tensors": len(model_entries),
        "parameters": sum(math.prod(e.shape) for e in model_entries),
        "file_bytes": c.file_bytes,
        "calibration": m.raw.get("calibration"),  # None: no calibration (older files, or not fitted)
        "ood": m.raw.get("ood"),  # None: no OOD threshold
    }
