"""Which precision a torch model predicts in on this CPU: fp32, or bf16 autocast where it is native.

``auto`` picks bf16 only when the CPU computes it natively (AMX or AVX-512 BF16, as torch's CPU
capability checks or the ``/proc/cpuinfo`` flags report) *and* the model's top-1 class under bf16
autocast equals the fp32 one on every probe image stored in its file (the self-check images); else fp32.
``bf16`` forces autocast (emulated, so slow, on CPUs without it); ``fp32`` never uses it. The network is
already channels-last (:class:`imgclf.Classifier`), the layout oneDNN's bf16 kernels want.

Usage::

    choice = choose_precision(clf, "auto", probe_inputs("malaria.imgclf"))
    apply_precision(clf, choice)
    print(choice.describe())        # e.g. "bf16 (CPU has AVX-512 BF16; ...)"
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_PRECISION = "auto"
PRECISION_ENV = "IMGCLF_PRECISION"  # the default where --precision is not given (tests pin fp32)
BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX-512 BF16"}
CPUINFO = "/proc/cpuinfo"
MAX_CPUINFO_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision chosen (``fp32`` or ``bf16``) and why, in words."""

    precision: str
    reason: str

    def describe(self) -> str:
        """``"bf16 (why)"``: the line ``predict`` shows on stderr."""
        return f"{self.precision} ({self.reason})"


def _cpuinfo_flags() -> set[str]:
    """The CPU flags of the first processor in ``CPUINFO`` (empty where there is none)."""
    try:
        with open(CPUINFO, "rb") as fh:
            text = fh.read(MAX_CPUINFO_BYTES).decode("ascii", "replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bf16() -> str | None:
    """How this CPU computes bf16 natively (``"AMX"``, ``"AVX-512 BF16"``), or None if it does not."""
    import torch

    cpu: Any = getattr(torch, "cpu", None)
    try:  # torch's own view: what oneDNN will use
        if cpu is not None and cpu._is_amx_tile_supported():
            return "AMX"
        if cpu is not None and cpu._is_avx512_bf16_supported():
            return "AVX-512 BF16"
    except (AttributeError, RuntimeError):
        pass
    flags = _cpuinfo_flags()
    for flag, name in BF16_FLAGS.items():
        if flag in flags and torch.backends.mkldnn.is_available():
            return name
    return None


def probe_inputs(path: str | os.PathLike) -> np.ndarray:
    """The preprocessed uint8 probe images (N, H, W, 3) stored in an .imgclf file (N may be 0)."""
    from imgclf.modelfile.format import read_container
    from imgclf.modelfile.manifest import parse

    c = read_container(path)
    arrays = [c.tensor(p.input_tensor).numpy() for p in parse(c).probes]
    return np.stack(arrays) if arrays else np.zeros((0, 0, 0, 3), dtype=np.uint8)


def default_precision() -> str:
    """``$IMGCLF_PRECISION`` if set, else ``DEFAULT_PRECISION``.

    Raises:
        UsageError: If the variable holds an unknown precision.
    """
    value = os.environ.get(PRECISION_ENV, "").strip()
    if value and value not in PRECISIONS:
        raise UsageError(
            f"unknown precision in ${PRECISION_ENV}",
            received=repr(value),
            expected=" | ".join(PRECISIONS),
            fix=f"unset {PRECISION_ENV} or set it to auto",
        )
    return value or DEFAULT_PRECISION


def check_precision(precision: object) -> str:
    """``precision`` if it is one of ``PRECISIONS``.

    Raises:
        UsageError: Otherwise.
    """
    if precision not in PRECISIONS:
        raise UsageError(
            "unknown precision", received=repr(precision), expected=" | ".join(PRECISIONS), fix="use auto"
        )
    return str(precision)


def choose_precision(
    clf: Any, requested: str, probes: np.ndarray | Callable[[], np.ndarray]
) -> PrecisionChoice:
    """Decide fp32 or bf16 for ``clf`` (a torch :class:`imgclf.Classifier`) as described above.

    Args:
        clf: The classifier (its device decides: bf16 autocast here is for the CPU).
        requested: ``auto``, ``fp32`` or ``bf16``.
        probes: The file's probe images, uint8 (N, H, W, 3), for ``auto``'s agreement check (or a
            function giving them, called only when the check runs).

    Raises:
        UsageError: On an unknown ``requested``, or ``bf16`` for a model that is not a torch model on the CPU.
    """
    requested = check_precision(requested)
    if requested == "fp32":
        return PrecisionChoice("fp32", "requested")
    on_cpu = getattr(clf, "model", None) is not None and str(getattr(clf, "device", "cpu")) == "cpu"
    if not on_cpu:
        if requested == "bf16":
            raise UsageError(
                "--precision bf16 applies to an .imgclf model on the CPU",
                received=f"{type(clf).__name__} on {getattr(clf, 'device', 'cpu')}",
                expected="an .imgclf file predicted on the CPU",
                fix="use --precision auto (an exported model runs in the precision it was exported in)",
            )
        return PrecisionChoice(
            "fp32", "an exported model runs as exported" if clf.model is None else "not on the CPU"
        )
    native = native_bf16()
    if requested == "bf16":
        how = f"CPU has {native}" if native else "CPU has no native bf16: emulated, slow"
        return PrecisionChoice("bf16", f"requested; {how}")
    if native is None:
        return PrecisionChoice("fp32", "CPU has neither AMX nor AVX-512 BF16")
    if callable(probes):
        probes = probes()
    if len(probes) == 0:
        return PrecisionChoice("fp32", "the model file has no probe images to check bf16 against")
    import torch

    from imgclf.classifier import predict_logits

    fp32 = predict_logits(clf.model, probes, clf.preprocess).argmax(1)
    bf16 = predict_logits(clf.model, probes, clf.preprocess, autocast_dtype=torch.bfloat16).argmax(1)
    differ = int((fp32 != bf16).sum())
    if differ:
        return PrecisionChoice(
            "fp32", f"CPU has {native}, but bf16 changes the top-1 class on {differ} of {len(probes)} probes"
        )
    return PrecisionChoice("bf16", f"CPU has {native}; top-1 agrees with fp32 on all {len(probes)} probes")


def apply_precision(clf: Any, choice: PrecisionChoice) -> None:
    """Make ``clf`` predict in ``choice``'s precision (bf16: autocast around the channels-last network)."""
    if getattr(clf, "model", None) is None:
        return
    import torch

    clf.autocast_dtype = torch.bfloat16 if choice.precision == "bf16" else None


def setup_precision(
    clf: Any, requested: str | None, path: str | os.PathLike, *, show: bool = True
) -> PrecisionChoice:
    """Choose and apply the precision for ``clf`` loaded from ``path``; say which on stderr (``show``).

    Args:
        clf: The loaded classifier.
        requested: ``auto``, ``fp32``, ``bf16``, or None for :func:`default_precision`.
        path: The model file (its probes decide ``auto``).
        show: Print the choice to stderr, unless fp32 was asked for or the model is an exported one
            (it runs as exported: there is no choice).

    Raises:
        UsageError: As :func:`choose_precision`.
    """
    requested = check_precision(default_precision() if requested is None else requested)
    choice = choose_precision(clf, requested, lambda: probe_inputs(path))
    apply_precision(clf, choice)
    if show and requested != "fp32" and getattr(clf, "model", None) is not None:
        print(f"imgclf: precision {choice.describe()}", file=sys.stderr)
    return choice
