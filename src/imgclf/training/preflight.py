"""Start-up checks that fail before epoch 1: a finished model in the way, disk space, decoding memory.

Usage::

    refuse_overwrite(model_path, force=False)
    check_free_space(model_path, run_dir, *estimate_bytes(config, num_classes, n_files))
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from imgclf.config import TrainConfig
from imgclf.errors import OutOfMemory, StorageError, UsageError
from imgclf.models import registry
from imgclf.training.checkpoint import KEEP_NEWEST


def refuse_overwrite(model_path: str, *, force: bool) -> None:
    """Refuse to replace an existing model file by a new training unless ``force``.

    A finished model is often the only copy of hours of training; the message names the file and its
    test accuracy (read from the header only: nothing is built).

    Raises:
        UsageError: If ``model_path`` exists and ``force`` is false.
    """
    if force or not os.path.lexists(model_path):
        return
    from imgclf.errors import ModelFileError
    from imgclf.modelfile import inspect

    try:
        metrics = inspect(model_path).get("metrics") or {}
        wanted = ("testing_accuracy", "validation_accuracy")
        scores = [f"{k} {v:.4f}" for k, v in metrics.items() if k in wanted]
        what = "an imgclf model" + (f" ({', '.join(scores)})" if scores else "")
    except ModelFileError:
        what = "a file that is not a readable imgclf model"
    raise UsageError(
        "the model file already exists",
        received=f"{model_path}: {what}",
        expected="a new model file path",
        fix="choose another --model, or pass --force (alias --exist-ok) to replace it",
    )


def estimate_bytes(config: TrainConfig, num_classes: int, n_files: int) -> tuple[int, int]:
    """Disk space the run needs: ``(model file, run folder)`` in bytes, with some margin.

    The run folder holds up to ``KEEP_NEWEST + 1`` checkpoints plus one being written; each has the
    weights, the optimizer's velocities and (``keep=best``) the best weights.
    """
    model = registry.build_meta(config.arch, num_classes, config.preprocess.size, config.arch_args)
    weights = sum(t.numel() * 4 for t in model.state_dict().values())  # saved as float32
    velocity = sum(p.numel() * 4 for p in model.parameters())
    checkpoint = weights + velocity + (weights if config.keep == "best" else 0) + (256 << 10)
    model_file = weights + (1 << 20)
    run = (KEEP_NEWEST + 2) * checkpoint + (4 << 20) + 300 * n_files
    return int(model_file * 1.1), int(run * 1.1)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def check_free_space(model_path: str, run_dir: str, model_bytes: int, run_bytes: int) -> None:
    """Fail before training if the disk(s) for the model file and run folder lack the space needed.

    Raises:
        StorageError: With the free and the needed space.
    """
    model_dir = os.path.dirname(os.path.abspath(model_path))
    needs: dict[int, list[Any]] = {}
    for folder, need, what in ((model_dir, model_bytes, "model file"), (run_dir, run_bytes, "checkpoints")):
        dev = os.stat(folder).st_dev
        entry = needs.setdefault(dev, [folder, 0, []])
        entry[1] += need
        entry[2].append(f"{what} {_mb(need)}")
    for folder, need, parts in needs.values():
        free = shutil.disk_usage(folder).free
        if free < need:
            raise StorageError(
                "not enough free disk space for this training",
                received=f"{_mb(free)} free on the disk of {folder}",
                expected=f"at least {_mb(need)} ({' + '.join(parts)} and reports)",
                fix="free some space, or put --model / --run-dir on another disk",
            )


def check_memory_for_decoding(config: TrainConfig, split_sizes: list[int], available: int) -> None:
    """Fail before decoding if the decoded images cannot fit in memory (decoding without the cache).

    Each split's images stay in memory as (N, H, W, 3) uint8, and the split being decoded also passes
    through a shared buffer of the same size.

    Raises:
        OutOfMemory: With the needed and the available memory.
    """
    h, w = config.preprocess.height, config.preprocess.width
    need = h * w * 3 * (sum(split_sizes) + max(split_sizes, default=0))
    if need > available:
        raise OutOfMemory(
            "not enough memory for the decoded images",
            received=f"{sum(split_sizes)} images of {h}x{w} need {_mb(need)}, {_mb(available)} available",
            expected="decoded images that fit in memory",
            fix="drop --no-cache (the cache streams from disk), or use a smaller --size",
        )
