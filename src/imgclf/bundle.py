"""The model file: save, load, verify and inspect one safetensors file with a JSON manifest.

Loading is parse → validate everything → build from the registry → strict weight load. Nothing in a
file can make imgclf run code: no pickle, no imports by name, only registered architectures. See
``docs/format.md`` for the specification; :mod:`imgclf.container` reads the bytes, :mod:`imgclf.manifest`
checks the manifest, :mod:`imgclf.probes` runs the self-checks.

Usage::

    imgclf.save(classifier, "model.imgclf")
    clf = imgclf.load("model.imgclf")
    report = verify("model.imgclf"); assert report.ok
    summary = inspect("model.imgclf")            # dict, without building the model
"""

from __future__ import annotations

import copy
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from imgclf import architectures, probes
from imgclf.classifier import Classifier
from imgclf.container import DTYPES, Container, invalid, read_container
from imgclf.errors import ModelFileError, UsageError
from imgclf.files import atomic_write_bytes
from imgclf.images import DECODE_RULE
from imgclf.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_KEY,
    MAX_PROBES,
    MAX_PROVENANCE_BYTES,
    Manifest,
    canonical_json,
    container_digest,
    manifest_digest,
    parse,
    tensors_digest,
    validate,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_KEY",
    "MAX_PROBE_BYTES",
    "MAX_EXTRA_PROBES",
    "save",
    "serialize",
    "load",
    "verify",
    "inspect",
    "VerifyReport",
    "canonical_json",
    "tensors_digest",
    "versions",
]

MAX_PROBE_BYTES = 8 * 1024 * 1024
SYNTHETIC_PROBES = 4
MAX_EXTRA_PROBES = MAX_PROBES - SYNTHETIC_PROBES
PROBE_TOLERANCE = probes.TOLERANCE


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


def _finite(obj: Any) -> Any:
    """Replace non-finite floats by ``None`` so provenance always serialises as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP (``module``) and ``torch.compile`` (``_orig_mod``) wrappers."""
    for attr in ("_orig_mod", "module"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), torch.nn.Module):
            model = getattr(model, attr)
    return model


def _copy_to_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 CPU copy of ``model`` (used by the training pipeline before evaluation)."""
    return copy.deepcopy(_unwrap(model)).to("cpu", torch.float32)


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


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, floats as float32, whatever device, precision or layout training used."""
    out = {}
    for key, value in _unwrap(model).state_dict().items():
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.to(torch.float32)
            if not bool(torch.isfinite(value).all()):
                raise UsageError(
                    "cannot save a model with NaN or infinite weights",
                    received=f"tensor {key!r}",
                    expected="finite weights",
                    fix="training diverged: lower the learning rate or keep the best epoch (--keep best)",
                )
        out[f"model.{key}"] = value.contiguous()
    return out


def _compare(
    expected: dict[str, tuple[tuple[int, ...], str]], got: dict[str, tuple[tuple[int, ...], str]]
) -> list[str]:
    """Differences between the architecture's tensors and the file's, as short phrases (capped)."""
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    problems = []
    if missing:
        problems.append(
            f"missing tensors {missing[:5]}{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}"
        )
    if extra:
        problems.append(
            f"unexpected tensors {extra[:5]}{f' and {len(extra) - 5} more' if len(extra) > 5 else ''}"
        )
    for name in sorted(set(expected) & set(got)):
        (want_shape, want_dtype), (got_shape, got_dtype) = expected[name], got[name]
        if want_shape != got_shape:
            problems.append(f"tensor {name!r} has shape {list(got_shape)}, expected {list(want_shape)}")
        elif want_dtype != got_dtype:
            problems.append(f"tensor {name!r} has dtype {got_dtype}, expected {want_dtype}")
    return problems


def _meta_model(arch: str, classes: int, size: tuple[int, int], args: dict[str, Any]) -> torch.nn.Module:
    with torch.device("meta"):  # no memory, no initialisation: the weights come from the file
        return architectures.build(arch, classes, size, args)


def _signature(model: torch.nn.Module, prefix: str = "model.") -> dict[str, tuple[tuple[int, ...], str]]:
    return {prefix + k: (tuple(v.shape), _dtype_name(v)) for k, v in model.state_dict().items()}


def _class_count_hint(m: Manifest, got: dict[str, tuple[tuple[int, ...], str]]) -> int | None:
    """If the file's tensors fit the architecture with another class count, return that count."""
    want = _signature(_meta_model(m.arch, len(m.class_names), m.preprocess.size, m.arch_args))
    for name, (shape, _) in got.items():
        if name in want and want[name][0] != shape and want[name][0][:1] == (len(m.class_names),) and shape:
            k = shape[0]
            if 2 <= k <= architectures.MAX_CLASSES:
                try:
                    other = _signature(_meta_model(m.arch, k, m.preprocess.size, m.arch_args))
                except UsageError:
                    return None
                return k if other == got else None
    return None


def _all_finite(t: torch.Tensor) -> bool:
    # numpy is ~100x faster than torch.isfinite on these small dtype-views of byte buffers.
    if t.dtype in (torch.float32, torch.float64, torch.float16):
        return bool(np.isfinite(t.numpy()).all())
    return bool(torch.isfinite(t).all())


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """A 4-D float32 weight in the channels-last layout the classifier runs in, copied by numpy.

    torch's own layout copy is threaded and, on small VMs, waiting for its pool costs more than the
    copy; numpy does it in one thread in well under a millisecond. Values are unchanged (a copy).
    """
    if t.dim() != 4 or t.dtype != torch.float32 or t.numel() == 0:
        return t
    return torch.from_numpy(np.ascontiguousarray(t.numpy().transpose(0, 2, 3, 1))).permute(0, 3, 1, 2)


def _build(c: Container, m: Manifest) -> torch.nn.Module:
    """Build the registered architecture on the meta device and load the file's weights strictly."""
    try:
        model = _meta_model(m.arch, len(m.class_names), m.preprocess.size, m.arch_args)
    except UsageError as exc:
        raise invalid(
            c.path,
            f"cannot build the architecture: {exc.problem}",
            received=exc.received,
            expected=exc.expected,
        ) from None
    got = {n: (e.shape, e.dtype) for n, e in c.entries.items() if n.startswith("model.")}
    problems = _compare(_signature(model), got)
    if problems:
        k = _class_count_hint(m, got)
        if k is not None:
            raise invalid(c.path, f"class count mismatch: manifest {len(m.class_names)}, weights {k}")
        raise invalid(c.path, "weights do not match the architecture: " + "; ".join(problems[:6]))
    state = {}
    for name in got:
        t = c.take(name)
        if t.is_floating_point() and not _all_finite(t):
            raise invalid(
                c.path,
                f"tensor {name!r} contains NaN or infinite values",
                fix="use an intact model file; retrain if the training diverged",
            )
        state[name[len("model.") :]] = _channels_last(t)
    model.load_state_dict(state, strict=True, assign=True)
    return model


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


def load(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> Classifier:
    """Load a model file: validate everything, build the registered architecture, load weights strictly.

    Args:
        path: The model file.
        device: Where the returned classifier runs.

    Raises:
        ModelFileError: If the file is missing, foreign, corrupt, tampered with or inconsistent.
    """
    c, m = _open_validated(path)
    model = _build(c, m)
    manifest = {k: v for k, v in m.raw.items() if k != "integrity"}
    return Classifier(
        model, m.class_names, m.preprocess, m.arch, m.arch_args, manifest=manifest, device=device
    )


def _fit_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """Drop the oldest history records if provenance would exceed the format's cap (never the rest)."""
    history = provenance.get("history")
    if isinstance(history, list):
        dropped = 0
        while history and len(canonical_json(provenance)) > MAX_PROVENANCE_BYTES:
            cut = max(1, len(history) // 10)
            history, dropped = history[cut:], dropped + cut
            provenance = {**provenance, "history": history, "history_omitted": dropped}
    return provenance


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
    weights = _weights(classifier.model)
    spec = classifier.preprocess
    arch_args = architectures.resolve_args(classifier.arch, classifier.arch_args)
    fresh = _meta_model(classifier.arch, len(classifier.class_names), spec.size, arch_args)
    problems = _compare(_signature(fresh), {k: (tuple(v.shape), _dtype_name(v)) for k, v in weights.items()})
    if problems:
        raise UsageError(
            "cannot save: the model does not match its architecture",
            received="; ".join(problems[:4]),
            expected=f"{classifier.arch} with {len(classifier.class_names)} classes",
            fix="save the model built for these class names and architecture args",
        )
    # Probes run on a model rebuilt from exactly the tensors being saved: what load() will produce.
    fresh.load_state_dict({k[len("model.") :]: v for k, v in weights.items()}, strict=True, assign=True)
    rebuilt = Classifier(fresh, classifier.class_names, spec, classifier.arch, arch_args)
    images, kinds = _probe_images(extra_probes)
    records = probes.compute(rebuilt, images, kinds)
    tensors = dict(weights)
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
            {"kind": r.kind, "input_sha256": r.input_sha256, "probabilities": r.probabilities}
            for r in records
        ],
        "provenance": _fit_provenance(provenance),
    }
    items = [(k, _dtype_name(v), tuple(v.shape), v.numpy().tobytes()) for k, v in tensors.items()]
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


def verify(path: str | os.PathLike, *, tolerance: float = PROBE_TOLERANCE) -> VerifyReport:
    """Load the file and re-run its probes; report preprocessing or model-output drift precisely.

    Raises:
        ModelFileError: If the file does not even load (see :func:`load`).
    """
    c, m = _open_validated(path)
    report = VerifyReport(os.fspath(path))
    report.checks.append(("structure and digests", True, "header, manifest and tensor digests match"))
    model = _build(c, m)
    detail = f"{m.arch}, {len(m.class_names)} classes, all weights finite"
    report.checks.append(("architecture and weights", True, detail))
    clf = Classifier(model, m.class_names, m.preprocess, m.arch, m.arch_args)
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
        "epoch": prov.get("epoch"),
        "device": prov.get("device"),
        "probes": len(m.probes),
        "probe_kinds": [p.kind for p in m.probes],
        "integrity": m.integrity,
        "tensors": len(model_entries),
        "parameters": sum(math.prod(e.shape) for e in model_entries),
        "file_bytes": c.file_bytes,
    }
