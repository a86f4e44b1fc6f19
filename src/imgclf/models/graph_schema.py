"""The layer-graph schema behind the ``keras_graph`` architecture: a closed set of layer types as data.

A graph is a list of layer records in topological order; each names its type, its settings and the
indices of the earlier layers it reads. :func:`check_graph` accepts exactly the keys and value types
below (anything else is refused before a module is built), and :func:`infer_shapes` computes every
layer's output shape, which sizes the weights and settles TensorFlow's ``"same"`` padding.

Usage::

    layers = check_graph(args["layers"])
    shapes = infer_shapes(layers, (64, 64))   # [(3, 64, 64), (8, 64, 64), ..., (2,)]
"""

from __future__ import annotations

from typing import Any

from imgclf.errors import UsageError
from imgclf.models.registry import MAX_WIDTH

MAX_LAYERS = 2048
MAX_KERNEL = 64
MAX_PAD = 1024
MAX_UNITS_IN = 1 << 24
ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax", "elu", "selu", "softplus", "swish")
PADDINGS = ("same", "valid")

_PAIR = "pair"  # [int, int] in [1, MAX_KERNEL]
# type -> {key: kind}; every record also has "name" (str), "type" and "inbound" (list of int).
SCHEMA: dict[str, dict[str, Any]] = {
    "input": {},
    "conv2d": {
        "filters": "width",
        "kernel": _PAIR,
        "strides": _PAIR,
        "dilation": _PAIR,
        "padding": PADDINGS,
        "bias": bool,
        "activation": ACTIVATIONS,
    },
    "batchnorm": {"eps": float, "momentum": float},
    "activation": {"activation": ACTIVATIONS},
    "zeropad": {"padding": "pads"},
    "maxpool": {"pool": _PAIR, "strides": _PAIR, "padding": PADDINGS},
    "avgpool": {"pool": _PAIR, "strides": _PAIR, "padding": PADDINGS},
    "global_avgpool": {"keepdims": bool},
    "add": {},
    "flatten": {},
    "dense": {"units": "width", "bias": bool, "activation": ACTIVATIONS},
    "dropout": {},
}

Shape = tuple[int, ...]


def _bad(index: int, record: Any, problem: str, expected: str) -> UsageError:
    name = record.get("name") if isinstance(record, dict) else None
    return UsageError(
        f"keras_graph layer {index} ({str(name)[:60]!r}): {problem}",
        received=repr(record)[:200],
        expected=expected,
        fix="import the model again with imgclf import-keras",
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_value(i: int, rec: dict, key: str, kind: Any) -> None:
    v = rec[key]
    if kind == "width":
        ok = _is_int(v) and 1 <= v <= MAX_WIDTH
        want = f"an integer in [1, {MAX_WIDTH}]"
    elif kind == _PAIR:
        ok = isinstance(v, list) and len(v) == 2 and all(_is_int(x) and 1 <= x <= MAX_KERNEL for x in v)
        want = f"two integers in [1, {MAX_KERNEL}]"
    elif kind == "pads":
        ok = isinstance(v, list) and len(v) == 4 and all(_is_int(x) and 0 <= x <= MAX_PAD for x in v)
        want = f"[top, bottom, left, right], integers in [0, {MAX_PAD}]"
    elif kind is bool:
        ok, want = isinstance(v, bool), "true or false"
    elif kind is float:
        ok = isinstance(v, float) and 0.0 <= v < 1.0 and (key != "eps" or v > 0.0)
        want = "a number in (0, 1)" if key == "eps" else "a number in [0, 1)"
    else:
        ok, want = v in kind, " | ".join(kind)
    if not ok:
        raise _bad(i, rec, f"bad {key!r}", want)


def check_graph(layers: Any) -> list[dict[str, Any]]:
    """Check a layer list against :data:`SCHEMA`: exact keys, value types and ranges, wiring.

    The first layer is the only ``input``; every other layer reads earlier layers only (``add`` two or
    more, the rest exactly one); every layer but the last is read by a later one; the last is the output.

    Raises:
        UsageError: Naming the first layer that breaks a rule.
    """
    if not isinstance(layers, list) or not 2 <= len(layers) <= MAX_LAYERS:
        raise UsageError(
            "keras_graph needs a list of layers",
            received=repr(layers)[:100],
            expected=f"2 to {MAX_LAYERS} layer records",
            fix="import the model again with imgclf import-keras",
        )
    used = [False] * len(layers)
    for i, rec in enumerate(layers):
        if not isinstance(rec, dict) or rec.get("type") not in SCHEMA:
            raise _bad(i, rec, "unknown layer type", " | ".join(SCHEMA))
        kinds = SCHEMA[rec["type"]]
        if set(rec) != {"name", "type", "inbound", *kinds}:
            raise _bad(i, rec, "wrong keys", ", ".join(["name", "type", "inbound", *kinds]))
        name = rec["name"]
        if not isinstance(name, str) or not 1 <= len(name) <= 256 or not name.isprintable():
            raise _bad(i, rec, "bad name", "1 to 256 printable characters")
        for key, kind in kinds.items():
            _check_value(i, rec, key, kind)
        inbound = rec["inbound"]
        count = 0 if rec["type"] == "input" else (2 if rec["type"] == "add" else 1)
        if (
            not isinstance(inbound, list)
            or not all(_is_int(j) and 0 <= j < i for j in inbound)
            or (len(inbound) < count if rec["type"] == "add" else len(inbound) != count)
            or (rec["type"] == "input") != (i == 0)
        ):
            raise _bad(i, rec, "bad wiring", "the first layer alone is the input; others read earlier layers")
        for j in inbound:
            used[j] = True
    unused = [layers[i]["name"] for i in range(len(layers) - 1) if not used[i]]
    if unused:
        raise _bad(len(layers) - 1, layers[-1], f"layers {unused[:3]} feed nothing", "one connected graph")
    return layers


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's ``"same"`` padding of one axis: the odd pixel goes after (bottom/right)."""
    span = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def _window_out(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    return (size - ((kernel - 1) * dilation + 1)) // stride + 1


def _out_shape(rec: dict[str, Any], ins: list[Shape], i: int) -> Shape:
    kind, x = rec["type"], ins[0] if ins else ()
    if kind in ("conv2d", "maxpool", "avgpool", "zeropad", "global_avgpool") and len(x) != 3:
        raise _bad(i, rec, f"needs a feature map, got shape {list(x)}", "a (channels, height, width) input")
    if kind == "conv2d" or kind.endswith("pool") and kind != "global_avgpool":
        k, s = rec.get("kernel") or rec["pool"], rec["strides"]
        d = rec.get("dilation", [1, 1])
        hw = [_window_out(x[a + 1], k[a], s[a], d[a], rec["padding"]) for a in (0, 1)]
        if min(hw) < 1:
            raise _bad(
                i, rec, f"window larger than its input {list(x)}", "a smaller kernel or a larger image"
            )
        return (rec["filters"] if kind == "conv2d" else x[0], hw[0], hw[1])
    if kind == "zeropad":
        t, b, left, r = rec["padding"]
        return (x[0], x[1] + t + b, x[2] + left + r)
    if kind == "global_avgpool":
        return (x[0], 1, 1) if rec["keepdims"] else (x[0],)
    if kind == "add":
        if any(s != x for s in ins):
            raise _bad(i, rec, f"adds different shapes {[list(s) for s in ins]}", "equal shapes")
        return x
    if kind == "flatten":
        n = 1
        for v in x:
            n *= v
        return (n,)
    if kind == "dense":
        if len(x) != 1 or x[0] > MAX_UNITS_IN:
            raise _bad(
                i, rec, f"needs a flat input, got shape {list(x)}", f"(features,) up to {MAX_UNITS_IN}"
            )
        return (rec["units"],)
    return x  # batchnorm, activation, dropout


def infer_shapes(layers: list[dict[str, Any]], input_size: tuple[int, int]) -> list[Shape]:
    """Output shape of every layer (``(C, H, W)`` or ``(features,)``) for an RGB input of ``input_size``."""
    shapes: list[Shape] = []
    for i, rec in enumerate(layers):
        if rec["type"] == "input":
            shapes.append((3, *input_size))
            continue
        shapes.append(_out_shape(rec, [shapes[j] for j in rec["inbound"]], i))
    return shapes
