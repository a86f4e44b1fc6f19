"""``small_cnn``: a small plain CNN (conv-BN-ReLU-pool blocks, global pool, dense) for quick runs and tests.

Usage::

    from imgclf.models import registry
    model = registry.build("small_cnn", num_classes=3, input_size=(32, 32), args={"widths": [8, 16]})
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.errors import UsageError
from imgclf.models.registry import check_widths, register


class SmallCNN(nn.Module):
    """A small plain CNN for quick runs: (conv3x3-BN-ReLU-maxpool) per width, global pool, dense."""

    def __init__(self, num_classes: int, input_size: tuple[int, int], widths: list[int], reg: float) -> None:
        super().__init__()
        check_widths("widths", widths)
        if len(widths) > 16 or reg < 0:
            raise UsageError(
                "small_cnn settings out of range",
                received=f"widths={widths}, reg={reg}",
                expected="at most 16 widths, reg >= 0",
                fix="use the defaults",
            )
        self.reg = reg
        layers: list[nn.Module] = []
        cin = 3
        for width in widths:
            layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            cin = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def l2_groups(self) -> list[tuple[float, list[nn.Parameter]]]:
        """All conv and dense kernels at ``reg``; biases and batch-norm parameters at 0."""
        kernels = [m.weight for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        ids = {id(p) for p in kernels}
        return [(self.reg, kernels), (0.0, [p for p in self.parameters() if id(p) not in ids])]


@register(
    "small_cnn",
    defaults={"widths": [16, 32, 64], "reg": 0.0001},
    description="small plain CNN (3 conv blocks) for quick experiments",
)
def small_cnn(num_classes: int, input_size: tuple[int, int], **args: Any) -> nn.Module:
    """A few conv-BN-ReLU-pool blocks and a linear head; fast enough for tests and smoke runs."""
    return SmallCNN(num_classes, input_size, **args)
