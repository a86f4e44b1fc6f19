"""Batch-norm statistics under several processes, run by ``python -m torch.distributed.run`` (2 ranks).

A small network with batch norm takes a few training steps on fixed global batches whose two halves
(one per rank) have different means, then the epoch-end synchronisation (``Group.average_buffers``) runs
and rank 0 writes the evaluation-mode logits on fixed probe inputs and the model's state to ``OUT``
(safetensors). :func:`train_and_judge` with ``group=None`` is the single-process run on the same batches.

Usage::

    python -m torch.distributed.run --standalone --nproc-per-node 2 bn_worker.py OUT [--per-rank-bn]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from imgclf.models import registry
from imgclf.training.distributed import DistOptions, Group, start_group
from imgclf.world import World

SIZE, BATCH, STEPS = 16, 8, 3


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``STEPS`` global batches; rows of the first half are brighter than those of the second."""
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(STEPS):
        x = torch.rand(BATCH, 3, SIZE, SIZE, generator=g)
        x[: BATCH // 2] += 1.0
        out.append((x, torch.randint(0, 2, (BATCH,), generator=g)))
    return out


def probes() -> torch.Tensor:
    return torch.rand(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6)) * 2


def train_and_judge(group: Group | None) -> dict[str, torch.Tensor]:
    """Train on :func:`batches` (this rank's rows of each), synchronise, and judge in evaluation mode."""
    torch.manual_seed(0)
    model = registry.build("small_cnn", 2, (SIZE, SIZE), {"widths": [4, 8]})
    net = group.wrap(model) if group is not None else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches():
        rows = group.local(torch.arange(BATCH)) if group is not None else torch.arange(BATCH)
        loss = F.cross_entropy(net(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if group is not None:  # what fit does at the end of every epoch
        group.average_buffers(model)
        group.unwrap()
    model.eval()
    with torch.no_grad():
        logits = model(probes())
    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    plain = all(type(m) is torch.nn.BatchNorm2d for m in layers)
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    return {"logits": logits, "plain_bn": torch.tensor(plain), **state}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--per-rank-bn", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    world = World.from_env()
    group = start_group(world, torch.device("cpu"), DistOptions(timeout_s=60, sync_bn=not args.per_rank_bn))
    try:
        result = train_and_judge(group)
    finally:
        if group is not None:
            group.close()
    if world.is_main:
        save_file(result, args.out)


if __name__ == "__main__":
    main()
