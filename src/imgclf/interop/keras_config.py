"""Turn a Keras model config (JSON data) into ``keras_graph`` layer records, refusing anything unknown.

Sequential and functional models of Keras 2 (tf.keras) and Keras 3 are read; only the closed set of
layer types in :data:`SUPPORTED` is translated, each setting checked (channels-last only, no groups, no
custom activations). A Lambda layer, a custom object, a nested model or a shared layer is refused with
one line naming it. The final softmax is dropped (imgclf applies softmax to the logits), and layers
that do not lead to the output are left out.

Usage::

    graph = translate(source.config, path)
    graph.layers       # keras_graph records (see imgclf.models.graph_schema)
    graph.keras_names  # index -> Keras layer name; graph.input_size -> (H, W) or None
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imgclf.errors import ModelFileError
from imgclf.interop.keras_zip import refused
from imgclf.models.graph_schema import ACTIVATIONS

SUPPORTED = (
    "InputLayer", "Conv2D", "BatchNormalization", "Activation", "ZeroPadding2D", "MaxPooling2D",
    "AveragePooling2D", "GlobalAveragePooling2D", "Add", "Flatten", "Dense", "Dropout",
)  # fmt: skip
_ALIASES = {"Convolution2D": "Conv2D", "MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D",
            "GlobalAvgPool2D": "GlobalAveragePooling2D"}  # fmt: skip
_TYPES = {"Conv2D": "conv2d", "BatchNormalization": "batchnorm", "Activation": "activation",
          "ZeroPadding2D": "zeropad", "MaxPooling2D": "maxpool", "AveragePooling2D": "avgpool",
          "GlobalAveragePooling2D": "global_avgpool", "Add": "add", "Flatten": "flatten", "Dense": "dense",
          "Dropout": "dropout", "InputLayer": "input"}  # fmt: skip


@dataclass
class KerasLayer:
    """One layer of the Keras config: name, class, config and the names of the layers it reads."""

    name: str
    class_name: str
    config: dict[str, Any]
    inbound: list[str]


@dataclass
class Graph:
    """The translated graph: the records, the Keras layers they came from (same order), the input size."""

    layers: list[dict[str, Any]]
    keras_names: list[str]
    keras_layers: list[KerasLayer]
    input_size: tuple[int, int] | None


def _pair(path: str, layer: str, key: str, value: Any, default: Any = None) -> list[int]:
    value = default if value is None else value
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)):
        raise refused(path, f"layer {layer!r}: {key} is not an integer pair", repr(value)[:60])
    return value


def _activation(path: str, layer: str, value: Any) -> str:
    name = (
        {"silu": "swish", None: "linear"}.get(value, value) if isinstance(value, (str, type(None))) else None
    )
    if name not in ACTIVATIONS:
        raise refused(
            path,
            f"layer {layer!r} uses activation {str(value)[:60]!r}, which imgclf does not support",
            fix="supported activations: " + ", ".join(ACTIVATIONS),
        )
    return name


def _check_common(path: str, layer: KerasLayer) -> None:
    c = layer.config
    if c.get("data_format") not in (None, "channels_last"):
        raise refused(path, f"layer {layer.name!r} is channels-first", fix="rebuild the model channels-last")
    for key, ok in (("groups", (None, 1)), ("lora_rank", (None,)), ("renorm", (None, False)),
                    ("virtual_batch_size", (None,)), ("adjustment", (None,))):  # fmt: skip
        if c.get(key) not in ok:
            raise refused(
                path, f"layer {layer.name!r} uses {key}={c.get(key)!r}, which imgclf does not support"
            )


def _record(path: str, layer: KerasLayer) -> dict[str, Any]:
    """The keras_graph record (without inbound) for one supported Keras layer."""
    c, kind, name = layer.config, _TYPES[layer.class_name], layer.name
    _check_common(path, layer)
    rec: dict[str, Any] = {"name": name, "type": kind}
    if kind == "conv2d":
        rec.update(
            filters=c.get("filters"), kernel=_pair(path, name, "kernel_size", c.get("kernel_size")),
            strides=_pair(path, name, "strides", c.get("strides"), 1),
            dilation=_pair(path, name, "dilation_rate", c.get("dilation_rate"), 1),
            padding=str(c.get("padding", "valid")).lower(), bias=c.get("use_bias", True) is not False,
            activation=_activation(path, name, c.get("activation")),
        )  # fmt: skip
    elif kind == "dense":
        rec.update(
            units=c.get("units"), bias=c.get("use_bias", True) is not False,
            activation=_activation(path, name, c.get("activation")),
        )  # fmt: skip
    elif kind == "batchnorm":
        eps, mom = c.get("epsilon", 1e-3), c.get("momentum", 0.99)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (eps, mom)):
            raise refused(path, f"layer {name!r}: epsilon and momentum must be numbers")
        rec.update(eps=float(eps), momentum=float(mom))
    elif kind == "activation":
        rec["activation"] = _activation(path, name, c.get("activation"))
    elif kind == "zeropad":
        pad = c.get("padding", 1)
        rows, cols = (pad, pad) if not isinstance(pad, list) or len(pad) != 2 else pad
        rec["padding"] = _pair(path, name, "padding", rows) + _pair(path, name, "padding", cols)
    elif kind in ("maxpool", "avgpool"):
        pool = _pair(path, name, "pool_size", c.get("pool_size"), 2)
        rec.update(
            pool=pool, strides=_pair(path, name, "strides", c.get("strides"), pool),
            padding=str(c.get("padding", "valid")).lower(),
        )  # fmt: skip
    elif kind == "global_avgpool":
        rec["keepdims"] = c.get("keepdims", False) is True
    return rec


def _history(args: Any, out: list[tuple[str, int, int]]) -> None:
    """Collect ``keras_history`` triples from a Keras 3 node's (nested) call arguments."""
    if isinstance(args, dict):
        if args.get("class_name") == "__keras_tensor__":
            hist = args.get("config", {}).get("keras_history")
            if isinstance(hist, list) and len(hist) == 3:
                out.append(tuple(hist))  # type: ignore[arg-type]
            return
        for v in args.values():
            _history(v, out)
    elif isinstance(args, list):
        for v in args:
            _history(v, out)


def _inbound(path: str, entry: dict[str, Any]) -> list[str]:
    nodes = entry.get("inbound_nodes") or []
    if not isinstance(nodes, list) or len(nodes) > 1:
        raise refused(path, f"layer {str(entry.get('name'))[:60]!r} is shared (called more than once)")
    if not nodes:
        return []
    refs: list[tuple[str, int, int]] = []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        _history(node.get("args", []), refs)
        kwargs = node.get("kwargs") or {}
        if not isinstance(kwargs, dict) or any(k != "training" and v is not None for k, v in kwargs.items()):
            raise refused(path, f"layer {str(entry.get('name'))[:60]!r} is called with {str(kwargs)[:60]}")
    elif isinstance(node, list):  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
        refs = [tuple(r[:3]) for r in node if isinstance(r, list) and len(r) >= 3]  # type: ignore[misc]
    if not refs or any(not isinstance(n, str) or ni != 0 or ti != 0 for n, ni, ti in refs):
        raise refused(path, f"layer {str(entry.get('name'))[:60]!r} has inputs imgclf cannot follow")
    return [n for n, _, _ in refs]


def _layers(path: str, model: dict[str, Any]) -> tuple[list[KerasLayer], str]:
    """The model's layers with their inputs, and the output layer's name."""
    cls, cfg = model.get("class_name"), model["config"]
    entries = cfg.get("layers")
    if not isinstance(entries, list) or not entries:
        raise refused(path, "the model config has no layers")
    out: list[KerasLayer] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("config"), dict):
            raise refused(path, f"layer {i} of the model config is not an object")
        name = e.get("name", e["config"].get("name"))
        kind = _ALIASES.get(e.get("class_name"), e.get("class_name"))
        if kind not in SUPPORTED or not isinstance(name, str):
            raise refused(
                path,
                f"layer {str(name)[:60]!r} of type {str(kind)[:60]!r} is not supported",
                fix="imgclf imports only these layer types: " + ", ".join(SUPPORTED),
            )
        out.append(KerasLayer(name, kind, e["config"], []))
    if cls == "Sequential":
        if out[0].class_name != "InputLayer":
            shape = out[0].config.get("batch_input_shape") or cfg.get("build_input_shape")
            out.insert(0, KerasLayer("input", "InputLayer", {"batch_input_shape": shape}, []))
        for prev, layer in zip(out, out[1:], strict=False):
            layer.inbound = [prev.name]
        return out, out[-1].name
    if cls not in ("Functional", "Model"):
        raise refused(
            path,
            f"model class {str(cls)[:60]!r} is not supported",
            fix="use a Sequential or functional model",
        )
    for layer, e in zip(out, entries, strict=True):
        layer.inbound = _inbound(path, e)
    outputs = cfg.get("output_layers")
    outputs = outputs[0] if isinstance(outputs, list) and len(outputs) == 1 else outputs
    if not (isinstance(outputs, list) and len(outputs) == 3 and isinstance(outputs[0], str)):
        raise refused(path, "the model must have exactly one output", repr(cfg.get("output_layers"))[:80])
    return out, outputs[0]


def _input_size(path: str, layer: KerasLayer) -> tuple[int, int] | None:
    shape = layer.config.get("batch_shape") or layer.config.get("batch_input_shape")
    if not isinstance(shape, list) or len(shape) != 4 or shape[3] != 3:
        raise refused(path, "the model input is not an RGB image (height, width, 3)", repr(shape)[:60])
    h, w = shape[1], shape[2]
    if h is None or w is None:
        return None
    if not (type(h) is int and type(w) is int and h > 0 and w > 0):
        raise refused(path, "the model input size is not two positive integers", repr(shape)[:60])
    return (h, w)


def translate(model: dict[str, Any], path: str) -> Graph:
    """Translate a Keras model config into keras_graph records (see the module docstring).

    Raises:
        ModelFileError: A layer type or setting outside the supported set, or a graph imgclf cannot follow.
    """
    try:
        return _translate(model, path)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise refused(path, "malformed model config", f"{type(exc).__name__}: {exc}"[:150]) from None


def _translate(model: dict[str, Any], path: str) -> Graph:
    layers, output = _layers(path, model)
    by_name = {layer.name: layer for layer in layers}
    if len(by_name) != len(layers):
        raise refused(path, "two layers share a name")
    order: list[str] = []
    state: dict[str, int] = {}
    stack = [(output, False)]
    while stack:  # depth-first from the output: a topological order of the layers it needs
        name, done = stack.pop()
        if name not in by_name:
            raise refused(path, f"a layer reads {name[:60]!r}, which is not in the model")
        if done:
            state[name] = 2
            order.append(name)
        elif state.get(name) != 2:
            if state.get(name) == 1:
                raise refused(path, f"the graph has a cycle through {name[:60]!r}")
            state[name] = 1
            stack.append((name, True))
            stack.extend((n, False) for n in reversed(by_name[name].inbound) if state.get(n) != 2)
    chosen = [by_name[n] for n in order]
    inputs = [layer for layer in chosen if layer.class_name == "InputLayer"]
    if len(inputs) != 1 or chosen[0] is not inputs[0]:
        raise refused(path, "the model must have exactly one image input")
    last = chosen[-1]
    if last.class_name == "Activation" and last.config.get("activation") == "softmax":
        chosen.pop()  # imgclf applies softmax to the logits itself
    elif last.class_name == "Dense" and last.config.get("activation") == "softmax":
        last = KerasLayer(last.name, last.class_name, {**last.config, "activation": "linear"}, last.inbound)
        chosen[-1] = last
    else:
        raise refused(path, "the model's output is not a softmax over the classes", last.name,
                      "imgclf imports classifiers whose last layer is a softmax")  # fmt: skip
    index = {layer.name: i for i, layer in enumerate(chosen)}
    records = []
    for layer in chosen:
        rec = (
            _record(path, layer)
            if layer.class_name != "InputLayer"
            else {"name": layer.name, "type": "input"}
        )
        rec["inbound"] = [index[n] for n in layer.inbound]
        records.append(rec)
    return Graph(records, [layer.name for layer in chosen], chosen, _input_size(path, chosen[0]))
