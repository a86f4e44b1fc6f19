"""The DL4CV pre-activation bottleneck ResNet (``seed_resnet``), ported from Keras layer for layer.

TensorFlow's ``padding="same"``, Keras' batch-norm momentum and its per-layer L2 terms are reproduced, so
the malaria recipe trains as the original did. Importing :mod:`imgclf.models.registry` registers it.

Usage::

    from imgclf.models import registry
    model = registry.build("seed_resnet", num_classes=2, input_size=(64, 64))  # a SeedResNet
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.errors import UsageError
from imgclf.models.registry import MAX_BLOCKS, check_widths, register


def _bn(channels: int, eps: float, momentum: float) -> nn.BatchNorm2d:
    # Keras' momentum m keeps m of the old statistic; PyTorch's momentum is the share of the new one.
    return nn.BatchNorm2d(channels, eps=eps, momentum=1.0 - momentum)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's ``padding="same"``: for strided convs the extra pixel goes after."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        pad = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride=stride, padding=pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):
                k, s = self.kernel_size[0], self.stride[0]
                total = max((-(-size // s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


class PreActBottleneck(nn.Module):
    """DL4CV ``residual_module``: BN-ReLU-1x1(K/4)-BN-ReLU-3x3(K/4, stride)-BN-ReLU-1x1(K) + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, project: bool, eps: float, momentum: float) -> None:
        super().__init__()
        mid = int(cout * 0.25)
        self.bn1 = _bn(cin, eps, momentum)
        self.conv1 = SameConv2d(cin, mid, 1)
        self.bn2 = _bn(mid, eps, momentum)
        self.conv2 = SameConv2d(mid, mid, 3, stride)
        self.bn3 = _bn(mid, eps, momentum)
        self.conv3 = SameConv2d(mid, cout, 1)
        # The projection reads the first pre-activation, as in the original (``red=True``).
        self.shortcut = SameConv2d(cin, cout, 1, stride) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1 = F.relu(self.bn1(x))
        y = self.conv1(a1)
        y = self.conv2(F.relu(self.bn2(y)))
        y = self.conv3(F.relu(self.bn3(y)))
        return y + (self.shortcut(a1) if self.shortcut is not None else x)


def _check_args(
    stages: list[int],
    filters: list[int],
    reg: float,
    module_reg: float,
    bn_eps: float,
    bn_momentum: float,
    stem: str,
) -> None:
    """Refuse settings that cannot build (before any layer is made)."""
    check_widths("filters", filters, len(stages) + 1)
    if not stages or any(s < 1 for s in stages) or sum(stages) > MAX_BLOCKS:
        raise UsageError(
            "stages out of range",
            received=stages,
            expected=f"positive block counts, {MAX_BLOCKS} in all at most",
            fix="use stages like [2, 2, 3]",
        )
    if stem not in ("cifar", "tiny_imagenet"):
        raise UsageError(
            "unknown stem",
            received=repr(stem),
            expected="cifar | tiny_imagenet",
            fix="use stem 'cifar' (the recipe's) or 'tiny_imagenet'",
        )
    if not (0 < bn_eps < 1 and 0 <= bn_momentum < 1 and reg >= 0 and module_reg >= 0):
        raise UsageError(
            "batch-norm or L2 settings out of range",
            received=f"bn_eps={bn_eps}, bn_momentum={bn_momentum}, reg={reg}, module_reg={module_reg}",
            expected="0 < bn_eps < 1, 0 <= bn_momentum < 1, reg >= 0",
            fix="use the defaults",
        )


def _stages(
    stages: list[int], filters: list[int], bn_eps: float, bn_momentum: float, size: tuple[int, int]
) -> tuple[nn.Sequential, int, tuple[int, int]]:
    """The residual stages (the first block of each projects; later stages stride 2), the channels they
    end with and the feature map size ``(h, w)`` after them."""
    h, w = size
    blocks: list[nn.Module] = []
    cin = filters[0]
    for i, count in enumerate(stages):
        stride = 1 if i == 0 else 2
        blocks.append(PreActBottleneck(cin, filters[i + 1], stride, True, bn_eps, bn_momentum))
        blocks += [
            PreActBottleneck(filters[i + 1], filters[i + 1], 1, False, bn_eps, bn_momentum)
            for _ in range(count - 1)
        ]
        cin = filters[i + 1]
        if stride == 2:
            h, w = -(-h // 2), -(-w // 2)
    return nn.Sequential(*blocks), cin, (h, w)


class SeedResNet(nn.Module):
    """Port of DL4CV's pre-activation bottleneck ``ResNet.build`` (Keras, channels-last)."""

    def __init__(
        self,
        num_classes: int,
        input_size: tuple[int, int],
        stages: list[int],
        filters: list[int],
        reg: float,
        module_reg: float,
        bn_eps: float,
        bn_momentum: float,
        stem: str,
    ) -> None:
        super().__init__()
        _check_args(stages, filters, reg, module_reg, bn_eps, bn_momentum, stem)
        self.reg, self.module_reg = reg, module_reg
        self.input_bn = _bn(3, bn_eps, bn_momentum)
        h, w = input_size
        if stem == "cifar":
            self.stem = SameConv2d(3, filters[0], 3)
        else:
            self.stem = nn.Sequential(
                SameConv2d(3, filters[0], 5),
                _bn(filters[0], bn_eps, bn_momentum),
                nn.ReLU(),
                nn.ZeroPad2d(1),
                nn.MaxPool2d(3, stride=2),
            )
            h, w = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
        self.blocks, cin, (h, w) = _stages(stages, filters, bn_eps, bn_momentum, (h, w))
        self.final_bn = _bn(cin, bn_eps, bn_momentum)
        self.pool = nn.AvgPool2d(8)
        ph, pw = h // 8, w // 8
        if ph < 1 or pw < 1:
            raise UsageError(
                "input too small for seed_resnet",
                received=f"{input_size[0]}x{input_size[1]}",
                expected="at least 8x8 pixels after the strided stages (32x32 input)",
                fix="use --size 64 (the recipe's) or larger",
            )
        self.head = nn.Linear(cin * ph * pw, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)  # Keras' glorot_uniform default
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.input_bn(x))
        x = self.blocks(x)
        x = self.pool(F.relu(self.final_bn(x)))
        return self.head(torch.flatten(x, 1))

    def l2_groups(self) -> list[tuple[float, list[nn.Parameter]]]:
        """Stem conv and dense kernel at ``reg``; residual-module convs at ``module_reg``; rest 0."""
        stem = [m.weight for m in self.stem.modules() if isinstance(m, nn.Conv2d)]
        modules = [m.weight for m in self.blocks.modules() if isinstance(m, nn.Conv2d)]
        chosen = {id(p) for p in stem + modules + [self.head.weight]}
        rest = [p for p in self.parameters() if id(p) not in chosen]
        return [(self.reg, stem + [self.head.weight]), (self.module_reg, modules), (0.0, rest)]


@register(
    "seed_resnet",
    defaults={
        "stages": [2, 2, 3],
        "filters": [32, 64, 128, 256],
        "reg": 0.0005,
        "module_reg": 0.0001,
        "bn_eps": 2e-5,
        "bn_momentum": 0.9,
        "stem": "cifar",
    },
    description="DL4CV pre-activation bottleneck ResNet, as the malaria recipe builds it",
)
def seed_resnet(num_classes: int, input_size: tuple[int, int], **args: Any) -> nn.Module:
    """``ResNet.build(64, 64, 3, classes, (2, 2, 3), (32, 64, 128, 256), reg=0.0005)``.

    ``bn_momentum`` is in Keras terms (0.9 keeps 90 % of the running statistic). As in the original,
    ``reg`` applies to the stem conv and the dense kernel only; ``build()`` does not pass it down, so
    the residual modules keep their own default of 1e-4 (``module_reg``).
    """
    return SeedResNet(num_classes, input_size, **args)
