"""A model's tensors: what ``save`` takes from a model, and how ``load`` puts a file's tensors back.

Saving takes the unwrapped model's state as contiguous float32 CPU tensors. Loading builds the
registered architecture on the meta device (no memory, no initialisation), checks the file's tensors
against it name by name (missing, unexpected, shape, dtype, class count), checks every weight is finite
and assigns them strictly. Nothing is imported by a name from the file: only registered architectures.

Usage::

    tensors = from_model(model)                    # {"model.<key>": tensor}
    problems = compare(signature(meta_model(arch, classes, size, args)), shapes_and_dtypes)
    model = build_from(container, manifest)
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from imgclf.errors import UsageError
from imgclf.modelfile.checks import FIX, invalid
from imgclf.modelfile.format import DTYPES, Container
from imgclf.modelfile.manifest import Manifest
from imgclf.models import registry

Signature = dict[str, tuple[tuple[int, ...], str]]
"""Tensor name -> (shape, safetensors dtype name)."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP (``module``) and ``torch.compile`` (``_orig_mod``) wrappers."""
    for attr in ("_orig_mod", "module"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), torch.nn.Module):
            model = getattr(model, attr)
    return model


def copy_to_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 CPU copy of ``model`` (used by the training pipeline before evaluation)."""
    return copy.deepcopy(unwrap(model)).to("cpu", torch.float32)


def dtype_name(t: torch.Tensor) -> str:
    """The safetensors dtype name of a tensor ("F32", "I64", ...)."""
    for name, (dtype, _) in DTYPES.items():
        if t.dtype == dtype:
            return name
    raise UsageError(
        "cannot save tensor dtype",
        received=str(t.dtype),
        expected="float or integer tensors",
        fix="convert the model to float32",
    )


def from_model(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, floats as float32, whatever device, precision or layout training used."""
    out = {}
    for key, value in unwrap(model).state_dict().items():
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


def compare(expected: Signature, got: Signature) -> list[str]:
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


def meta_model(arch: str, classes: int, size: tuple[int, int], args: dict[str, Any]) -> torch.nn.Module:
    """The architecture on the meta device: the weights come from the file."""
    return registry.build_meta(arch, classes, size, args)


def signature(model: torch.nn.Module, prefix: str = "model.") -> Signature:
    return {prefix + k: (tuple(v.shape), dtype_name(v)) for k, v in model.state_dict().items()}


def _class_count_hint(m: Manifest, got: Signature) -> int | None:
    """If the file's tensors fit the architecture with another class count, return that count."""
    want = signature(meta_model(m.arch, len(m.class_names), m.preprocess.size, m.arch_args))
    for name, (shape, _) in got.items():
        if name in want and want[name][0] != shape and want[name][0][:1] == (len(m.class_names),) and shape:
            k = shape[0]
            if 2 <= k <= registry.MAX_CLASSES:
                try:
                    other = signature(meta_model(m.arch, k, m.preprocess.size, m.arch_args))
                except UsageError:
                    return None
                return k if other == got else None
    return None


def _all_finite(t: torch.Tensor) -> bool:
    # numpy's single-threaded check is much faster than torch.isfinite(...).all() on small tensors.
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


def _library_note(m: Manifest) -> str:
    """For a model built by another library: which version made the file and which one is installed."""
    made = m.arch_args.get("timm_version")
    if made is None:
        return ""
    from imgclf.models.timm_backbone import installed_version

    return f" (the file was made with timm {made or '?'}, timm {installed_version()} is installed)"


def build_from(c: Container, m: Manifest) -> torch.nn.Module:
    """Build the registered architecture on the meta device and load the file's weights strictly."""
    try:
        model = meta_model(m.arch, len(m.class_names), m.preprocess.size, m.arch_args)
    except UsageError as exc:
        raise invalid(
            c.path,
            f"cannot build the architecture: {exc.problem}",
            received=exc.received,
            expected=exc.expected,
            fix=exc.fix or FIX,
        ) from None
    got = {n: (e.shape, e.dtype) for n, e in c.entries.items() if n.startswith("model.")}
    problems = compare(signature(model), got)
    if problems:
        k = _class_count_hint(m, got)
        if k is not None:
            raise invalid(c.path, f"class count mismatch: manifest {len(m.class_names)}, weights {k}")
        raise invalid(
            c.path, "weights do not match the architecture: " + "; ".join(problems[:6]) + _library_note(m)
        )
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
