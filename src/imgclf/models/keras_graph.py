"""``keras_graph``: a network rebuilt from a checked layer graph (how ``imgclf import-keras`` stores models).

The architecture's arguments are data: a list of layer records from the closed set in
:mod:`imgclf.models.graph_schema` (input, conv2d, batchnorm, activation, zeropad, max/avg pool, global
average pool, add, flatten, dense, dropout), and the channel order the network was trained on. Layers
compute what Keras' TensorFlow backend computes, channels-last semantics included: ``"same"`` padding
puts the odd pixel after, average pooling does not count padding, flatten reads height, width, channels.
The last layer outputs logits (imgclf applies softmax).

Usage::

    from imgclf.models import registry
    model = registry.build("keras_graph", 2, (32, 32), {"layers": layers, "input_order": "rgb"})
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.errors import UsageError
from imgclf.models.graph_schema import check_graph, infer_shapes, same_pads
from imgclf.models.registry import register

_ACT = {
    "linear": lambda x: x,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda x: torch.softmax(x, dim=1),  # Keras' last axis is the channel axis
    "elu": F.elu,
    "selu": F.selu,
    "softplus": F.softplus,
    "swish": F.silu,
}


def _pads(rec: dict[str, Any], shape: tuple[int, ...], kernel: list[int]) -> list[int]:
    """``F.pad`` order (left, right, top, bottom) for a windowed layer on an input of ``shape``."""
    if rec["padding"] == "valid":
        return [0, 0, 0, 0]
    d = rec.get("dilation", [1, 1])
    top, bottom = same_pads(shape[1], kernel[0], rec["strides"][0], d[0])
    left, right = same_pads(shape[2], kernel[1], rec["strides"][1], d[1])
    return [left, right, top, bottom]


class Input(nn.Module):
    """Reorders RGB input to BGR for networks trained on OpenCV's channel order."""

    def __init__(self, bgr: bool) -> None:
        super().__init__()
        self.bgr = bgr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1) if self.bgr else x


class Conv(nn.Conv2d):
    """Conv2D: TensorFlow padding (asymmetric on strided or even kernels), then its activation."""

    def __init__(self, rec: dict[str, Any], shape: tuple[int, ...]) -> None:
        super().__init__(
            shape[0], rec["filters"], tuple(rec["kernel"]), stride=tuple(rec["strides"]),
            dilation=tuple(rec["dilation"]), bias=rec["bias"],
        )  # fmt: skip
        self.pads = _pads(rec, shape, rec["kernel"])
        self.act = rec["activation"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        return _ACT[self.act](super().forward(x))


class Pool(nn.Module):
    """Max or average pooling; ``"same"`` pads with -inf (max) or averages real pixels only (average)."""

    def __init__(self, rec: dict[str, Any], shape: tuple[int, ...]) -> None:
        super().__init__()
        self.kind, self.pool, self.strides = rec["type"], tuple(rec["pool"]), tuple(rec["strides"])
        self.pads = _pads(rec, shape, rec["pool"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "maxpool":
            if any(self.pads):
                x = F.pad(x, self.pads, value=float("-inf"))
            return F.max_pool2d(x, self.pool, self.strides)
        if not any(self.pads):
            return F.avg_pool2d(x, self.pool, self.strides)
        total = F.avg_pool2d(F.pad(x, self.pads), self.pool, self.strides, divisor_override=1)
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        count = F.avg_pool2d(F.pad(ones, self.pads), self.pool, self.strides, divisor_override=1)
        return total / count


class Op(nn.Module):
    """A layer without weights: activation, zero padding, global average pool, add, flatten, dropout."""

    def __init__(self, rec: dict[str, Any]) -> None:
        super().__init__()
        self.kind = rec["type"]
        self.act = rec.get("activation", "linear")
        pads = rec.get("padding", [0, 0, 0, 0])
        self.pads = [pads[2], pads[3], pads[0], pads[1]] if self.kind == "zeropad" else []
        self.keepdims = rec.get("keepdims", False)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        x = xs[0]
        if self.kind == "activation":
            return _ACT[self.act](x)
        if self.kind == "zeropad":
            return F.pad(x, self.pads)
        if self.kind == "global_avgpool":
            return x.mean(dim=(2, 3), keepdim=self.keepdims)
        if self.kind == "add":
            for other in xs[1:]:
                x = x + other
            return x
        if self.kind == "flatten" and x.dim() == 4:
            return x.permute(0, 2, 3, 1).flatten(1)  # Keras flattens height, width, channels
        return x  # dropout (inference), flatten of a flat input


class Dense(nn.Linear):
    """Dense: a linear layer followed by its activation."""

    def __init__(self, rec: dict[str, Any], features: int) -> None:
        super().__init__(features, rec["units"], bias=rec["bias"])
        self.act = rec["activation"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ACT[self.act](super().forward(x))


def _module(rec: dict[str, Any], shape: tuple[int, ...], bgr: bool) -> nn.Module:
    kind = rec["type"]
    if kind == "input":
        return Input(bgr)
    if kind == "conv2d":
        return Conv(rec, shape)
    if kind in ("maxpool", "avgpool"):
        return Pool(rec, shape)
    if kind == "dense":
        return Dense(rec, shape[0])
    if kind == "batchnorm":
        # Keras' momentum m keeps m of the old statistic; PyTorch's momentum is the share of the new one.
        bn = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return bn(shape[0], eps=rec["eps"], momentum=1.0 - rec["momentum"])
    return Op(rec)


class KerasGraphNet(nn.Module):
    """Runs the layer graph: layer ``i`` reads the outputs of ``layers[i]["inbound"]``."""

    def __init__(self, num_classes: int, input_size: tuple[int, int], layers: Any, input_order: str) -> None:
        super().__init__()
        if input_order not in ("rgb", "bgr"):
            raise UsageError(
                "unknown keras_graph input_order",
                received=repr(input_order)[:50],
                expected="rgb | bgr",
                fix="use rgb unless the network was trained on OpenCV (BGR) images",
            )
        graph = check_graph(layers)
        shapes = infer_shapes(graph, input_size)
        last = graph[-1]
        if shapes[-1] != (num_classes,) or last.get("activation") == "softmax":
            raise UsageError(
                "keras_graph's last layer must output one logit per class",
                received=f"{last['type']} with output shape {list(shapes[-1])}, "
                f"activation {last.get('activation', 'linear')}",
                expected=f"shape [{num_classes}] and no softmax (imgclf applies it)",
                fix="check the class names against the model's output size",
            )
        self.inbound = [list(rec["inbound"]) for rec in graph]
        self.layers = nn.ModuleList(
            _module(rec, shapes[rec["inbound"][0]] if rec["inbound"] else (), input_order == "bgr")
            for rec in graph
        )
        # After its last reader runs, an output is dropped, so memory follows the live tensors only.
        self.last_use = {j: i for i, ins in enumerate(self.inbound) for j in ins}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: dict[int, torch.Tensor] = {}
        for i, (layer, ins) in enumerate(zip(self.layers, self.inbound, strict=True)):
            outs[i] = layer(*[outs[j] for j in ins]) if ins else layer(x)
            for j in ins:
                if self.last_use[j] == i:
                    del outs[j]
        return outs[len(self.layers) - 1]


@register(
    "keras_graph",
    defaults={"layers": [], "input_order": "rgb"},
    description="a network imported from Keras (imgclf import-keras): a checked layer graph",
)
def keras_graph(num_classes: int, input_size: tuple[int, int], **args: Any) -> nn.Module:
    """Build the layer graph in ``args["layers"]`` (see :mod:`imgclf.models.graph_schema`)."""
    return KerasGraphNet(num_classes, input_size, **args)
