"""SGD with momentum as Keras runs it, the recipe's optimizer: ``v = m·v − lr·g``, then ``w = w + v``.

With ``nesterov=True`` the step looks ahead as Keras' Nesterov form does: ``w = w + m·v − lr·g``.

PyTorch's SGD keeps ``b = m·b + g`` and steps ``w = w − lr·b``: the same while the learning rate is
constant, not under the recipe's time decay, where Keras' velocity keeps the learning rates of the steps
that built it. L2 regularisation enters the gradient (``g + weight_decay·w``) before the momentum, as a
Keras kernel regulariser's term in the loss does. Not building on ``torch.optim`` also spares every
training run the import of ``torch._dynamo`` that its constructor triggers (its cost: docs/performance.md).

Usage::

    opt = KerasSGD([{"params": convs, "weight_decay": 2e-4}, {"params": rest}], lr=0.1, momentum=0.9)
    loss.backward()
    opt.step()
    opt.zero_grad()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

_KEY = "velocity"


class KerasSGD:
    """Keras' SGD (momentum, optionally Nesterov) with per-group L2 weight decay.

    Args:
        groups: Parameter groups: dicts with ``params`` and optionally ``weight_decay`` (default 0) and
            ``lr_scale`` (default 1: the factor the training loop applies to the schedule's rate).
        lr: Learning rate; callers change ``param_groups[i]["lr"]`` between steps for a schedule.
        momentum: Momentum ``m`` in ``[0, 1)``.
        nesterov: Use Nesterov momentum.

    Attributes:
        param_groups: ``{"params", "lr", "momentum", "weight_decay", "lr_scale"}`` per group.
        state: Per parameter, ``{"velocity": tensor}`` once it has taken a step.
    """

    def __init__(
        self, groups: Iterable[dict[str, Any]], lr: float, momentum: float, nesterov: bool = False
    ) -> None:
        self.nesterov = nesterov
        self.param_groups: list[dict[str, Any]] = [
            {
                "params": list(g["params"]),
                "lr": float(lr),
                "momentum": float(momentum),
                "weight_decay": float(g.get("weight_decay", 0.0)),
                "lr_scale": float(g.get("lr_scale", 1.0)),  # the schedule's lr times this (fine-tuning)
            }
            for g in groups
        ]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's gradient."""
        for p in self._params():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if not group["momentum"]:
                torch._foreach_add_(params, grads, alpha=-group["lr"])
                continue
            velocity = []
            for p in params:
                slot = self.state.setdefault(p, {})
                if _KEY not in slot:
                    slot[_KEY] = torch.zeros_like(p, memory_format=torch.preserve_format)
                velocity.append(slot[_KEY])
            torch._foreach_mul_(velocity, group["momentum"])
            torch._foreach_add_(velocity, grads, alpha=-group["lr"])
            if self.nesterov:
                torch._foreach_add_(params, velocity, alpha=group["momentum"])
                torch._foreach_add_(params, grads, alpha=-group["lr"])
            else:
                torch._foreach_add_(params, velocity)

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {"velocity": tensor}}, "param_groups": [...]}`` (indices over all groups)."""
        index = {p: i for i, p in enumerate(self._params())}
        return {
            "state": {index[p]: dict(slot) for p, slot in self.state.items() if p in index},
            "param_groups": [
                {**{k: v for k, v in g.items() if k != "params"}, "params": [index[p] for p in g["params"]]}
                for g in self.param_groups
            ],
        }

    def load_state(self, saved: dict[int, dict[str, torch.Tensor]]) -> None:
        """Take per-parameter state (as in :meth:`state_dict`'s ``state``); hyper-parameters stay.

        Each velocity is copied into the parameter's own memory layout (e.g. channels-last), as an
        uninterrupted run would have it.

        Raises:
            ValueError: An index outside the parameters, an unknown key, or a shape that differs.
        """
        params = self._params()
        state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        for i, slot in saved.items():
            if not 0 <= int(i) < len(params):
                raise ValueError(f"optimizer state for parameter {i}, the model has {len(params)}")
            p = params[int(i)]
            for key, value in slot.items():
                if key != _KEY or not isinstance(value, torch.Tensor) or value.shape != p.shape:
                    got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise ValueError(
                        f"optimizer state {i}.{key} ({got}) does not fit parameter {tuple(p.shape)}"
                    )
                state.setdefault(p, {})[key] = torch.empty_like(p).copy_(value)
        self.state = state
