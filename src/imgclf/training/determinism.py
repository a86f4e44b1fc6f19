"""Reproducibility: PyTorch's deterministic-algorithms switch, and the global RNG states as plain data.

CPU training in imgclf is deterministic by construction (seeded generators for init, order and
augmentation; fixed summation order for a fixed thread count). On a GPU, ``--deterministic`` also asks
PyTorch for deterministic kernels; an operation without one fails with a one-line error naming it.

The global random states (Python, NumPy, torch CPU and CUDA) are captured as JSON-able data and uint8
tensors, never pickled, so a checkpoint can restore them exactly.

Usage::

    with deterministic_algorithms(config.deterministic, device):
        train()
    data, tensors = capture_rng()          # JSON-able dict, {"rng.torch": uint8 tensor, ...}
    restore_rng(data, tensors, log=print)
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from imgclf.errors import UsageError
from imgclf.progress import Log


def nondeterministic_op_error(exc: BaseException, device: torch.device | str) -> UsageError | None:
    """Turn PyTorch's "X does not have a deterministic implementation" error into a one-line UsageError.

    Returns ``None`` for any other error (to be re-raised unchanged).
    """
    text = str(exc)
    marker = " does not have a deterministic implementation"
    if marker not in text:
        return None
    op = text.split(marker, 1)[0].strip().splitlines()[-1].strip() or "an operation"
    return UsageError(
        f"--deterministic: operation {op!r} has no deterministic implementation on {device}",
        received=f"{op} during training",
        expected="operations with deterministic kernels only",
        fix="train without --deterministic (results then vary slightly between GPU runs), or on the CPU",
    )


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device | str = "cpu") -> Iterator[None]:
    """Within the block, make PyTorch use deterministic algorithms (and say which op has none).

    Restores the previous global settings afterwards, so a library caller's process is left as it was.
    CPU training is deterministic anyway; on a GPU this also pins cuBLAS' workspace and cuDNN.
    """
    if not enabled:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    # cuBLAS reads this when it creates its handle (first matmul), which happens inside the block.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    except RuntimeError as exc:
        error = nondeterministic_op_error(exc, device)
        if error is None:
            raise
        raise error from None
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The global random states: Python and NumPy as JSON-able data, torch CPU/CUDA as uint8 tensors.

    CUDA states are captured only where CUDA is already initialised (capturing must not start it).
    """
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    data = {
        "python": {"version": version, "state": list(mt), "gauss_next": gauss},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s.cpu()
    return data, tensors


def restore_rng(data: dict[str, Any], tensors: dict[str, torch.Tensor], log: Log) -> None:
    """Set the global random states captured by :func:`capture_rng`.

    Raises:
        KeyError, TypeError, ValueError: If ``data`` is malformed (callers report the checkpoint).
    """
    py = data["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss_next"]))
    npd = data["numpy"]
    np.random.set_state(
        {
            "bit_generator": str(npd["bit_generator"]),
            "state": {"key": np.asarray(npd["key"], dtype=np.uint32), "pos": int(npd["pos"])},
            "has_gauss": int(npd["has_gauss"]),
            "gauss": float(npd["gauss"]),
        }
    )
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors, key=_cuda_index) if k.startswith("rng.cuda.")]
    if not cuda:
        return
    if not torch.cuda.is_available() or torch.cuda.device_count() != len(cuda):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        log(
            f"warning: the checkpoint has CUDA random states for {len(cuda)} GPU(s), this machine has "
            f"{have}; they are not restored (results may differ from an uninterrupted run)"
        )
        return
    torch.cuda.set_rng_state_all(cuda)


def _cuda_index(name: str) -> int:
    tail = name.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else -1
