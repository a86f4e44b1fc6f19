"""Where training runs: the device, the autocast precision, and whether the images fit on the device.

Usage::

    device = resolve_device("auto")                      # cuda if available, else cpu
    dtype = resolve_precision("auto", device)            # bf16 where it pays off, else None (float32)
    x_all = stage_images(train.images, device)           # None: stream batches from the host instead
"""

from __future__ import annotations

import numpy as np
import torch

from imgclf.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device, failing clearly if CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                "CUDA device requested but none is available",
                received=name,
                expected="a machine with an NVIDIA GPU",
                fix="use --device cpu or --device auto",
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(
                "CUDA device index out of range",
                received=name,
                expected=f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}",
                fix="pick an existing GPU",
            )
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None`` means plain float32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (``MemAvailable`` for the CPU); a huge number when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62  # unknown: assume it fits


def stage_images(images: np.ndarray, device: torch.device, share: float = 0.5) -> torch.Tensor | None:
    """Put a uint8 image array on ``device`` if it takes at most ``share`` of the free memory there.

    Returns ``None`` when it does not fit: ``fit`` then gathers each batch from ``images`` (typically a
    memory-mapped cache) instead, with identical results.
    """
    if images.nbytes > share * available_bytes(device):
        return None
    if isinstance(images, np.memmap) or not images.flags.writeable:
        images = np.array(images)  # read the memory map into RAM once
    return torch.from_numpy(images).to(device)
