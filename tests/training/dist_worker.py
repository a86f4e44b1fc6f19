"""A training worker for the multi-process tests, run by ``python -m torch.distributed.run`` (or alone).

It trains ``DATASET`` into ``MODEL`` with a tiny recipe (``--arch nobn``: a CNN without batch norm,
registered here, whose maths do not depend on how a batch is split; or ``small_cnn``). With
``--kill-at EPOCH:STEP`` rank ``--kill-rank`` SIGKILLs itself after that step of the first attempt
(``TORCHELASTIC_RESTART_COUNT`` 0), as a crash would.

Usage::

    python -m torch.distributed.run --standalone --nproc-per-node 2 dist_worker.py DATASET MODEL --arch nobn
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import torch
from torch import nn

from imgclf.config import PreprocessSpec, TrainConfig
from imgclf.models.registry import register
from imgclf.training.distributed import DistOptions, restart_count
from imgclf.training.loop import Callback
from imgclf.training.pipeline import train
from imgclf.world import World


class NoBatchNorm(nn.Module):
    """conv-ReLU-pool twice, global pool, dense: no batch statistics, no dropout."""

    def __init__(self, num_classes: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        convs = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1)]
        self.features = nn.Sequential(*convs, nn.ReLU())
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


@register("nobn", defaults={}, description="test model without batch norm")
def nobn(num_classes: int, input_size: tuple[int, int], **args: Any) -> nn.Module:
    return NoBatchNorm(num_classes, input_size)


class KillAt(Callback):
    """SIGKILL this process after step ``step`` of epoch ``epoch`` (first attempt only)."""

    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step, self.current = epoch, step, 0

    def on_epoch_begin(self, epoch: int, steps: int) -> None:
        self.current = epoch

    def on_step_end(self, step: int, steps: int, loss: float | None) -> None:
        if (self.current, step) == (self.epoch, self.step):
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset")
    p.add_argument("model")
    p.add_argument("--arch", default="nobn")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--kill-at", default=None)
    p.add_argument("--kill-rank", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--per-rank-bn", action="store_true", help="each rank's own batch-norm statistics")
    args = p.parse_args()
    torch.set_num_threads(1)
    config = TrainConfig(
        arch=args.arch,
        arch_args={"widths": [4, 8]} if args.arch == "small_cnn" else {},
        epochs=args.epochs,
        batch_size=8,
        preprocess=PreprocessSpec(height=args.size, width=args.size),
        precision="fp32",
        device="cpu",
        seed=3,
    )
    callbacks = []
    if args.kill_at and restart_count() == 0 and World.from_env().rank == args.kill_rank:
        epoch, step = map(int, args.kill_at.split(":"))
        callbacks.append(KillAt(epoch, step))
    options = DistOptions(timeout_s=args.timeout, sync_bn=not args.per_rank_bn)
    train(args.dataset, args.model, config, callbacks=callbacks, distributed=options)


if __name__ == "__main__":
    main()
