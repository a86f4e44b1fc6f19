"""Import a Keras classifier: read the file as data, rebuild it as ``keras_graph``, convert the weights.

Steps: :func:`~imgclf.interop.keras_reader.read_keras` (bounded, no TensorFlow, nothing executed) →
:func:`~imgclf.interop.keras_config.translate` (closed set of layer types) → build the registered
``keras_graph`` architecture → convert each layer's weights (convolution kernels HWIO → OIHW, dense
kernels transposed, batch-norm gamma/beta/statistics; optimizer weights are never read) → a
:class:`~imgclf.classifier.Classifier` with the preprocessing the Keras recipe trained with and the
source file's name, digest and Keras version in its provenance. Saving is the caller's (``imgclf.save``).

Usage::

    result = import_keras("malaria.h5", ["Parasitized", "Uninfected"])
    imgclf.save(result.classifier, "malaria.imgclf")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from imgclf.classifier import Classifier
from imgclf.config import PreprocessSpec
from imgclf.errors import UsageError
from imgclf.interop.keras_config import Graph, translate
from imgclf.interop.keras_reader import KerasSource, read_keras
from imgclf.interop.keras_zip import refused
from imgclf.models import registry
from imgclf.models.graph_schema import check_graph, infer_shapes

ARCH = "keras_graph"
KERAS_RESCALE = 1.0 / 255.0  # the recipe's ImageDataGenerator(rescale=1 / 255.0)


@dataclass
class ImportResult:
    """What :func:`import_keras` made: the classifier, where it came from and what the user should know."""

    classifier: Classifier
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _conv(roles: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {"weight": roles["kernel"].transpose(3, 2, 0, 1)}  # Keras HWIO -> PyTorch OIHW
    if "bias" in roles:
        out["bias"] = roles["bias"]
    return out


def _dense(roles: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {"weight": roles["kernel"].T}  # Keras (in, out) -> PyTorch (out, in)
    if "bias" in roles:
        out["bias"] = roles["bias"]
    return out


def _batchnorm(roles: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    mean = roles["moving_mean"]
    return {  # center=False / scale=False layers have no beta / gamma: the identity values
        "weight": roles.get("gamma", np.ones_like(mean)),
        "bias": roles.get("beta", np.zeros_like(mean)),
        "running_mean": mean,
        "running_var": roles["moving_variance"],
    }


_CONVERT = {"conv2d": _conv, "dense": _dense, "batchnorm": _batchnorm}


def convert_weights(
    path: str, graph: Graph, arrays: dict[str, dict[str, np.ndarray]], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """The state dict for ``model`` (a built keras_graph) from the Keras layers' arrays, shapes checked.

    Raises:
        ModelFileError: A layer's weights are missing, extra or of the wrong shape.
    """
    want = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for i, rec in enumerate(graph.layers):
        convert = _CONVERT.get(rec["type"])
        if convert is None:
            continue
        name = graph.keras_names[i]
        roles = arrays.get(name)
        try:
            converted = convert(roles or {})
        except KeyError as exc:
            raise refused(
                path, f"layer {name!r} has no {exc.args[0]!r} weight", sorted(roles or {})
            ) from None
        except ValueError:  # a kernel with the wrong number of axes
            shapes = {k: list(v.shape) for k, v in (roles or {}).items()}
            raise refused(path, f"layer {name!r} has weights of the wrong shape", shapes) from None
        for key, value in converted.items():
            full = f"layers.{i}.{key}"
            if full not in want or tuple(want[full].shape) != value.shape:
                shape = tuple(want[full].shape) if full in want else None
                raise refused(path, f"layer {name!r}: {key} has shape {list(value.shape)}, expected {shape}")
            if not np.isfinite(value).all():
                raise refused(path, f"layer {name!r}: {key} holds NaN or infinite values")
            state[full] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if rec["type"] == "batchnorm":
            state[f"layers.{i}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(want) - set(state))
    if missing:
        raise refused(path, "the weights do not cover the model", missing[:3])
    return state


def _check_bn_axes(path: str, graph: Graph, shapes: list[tuple[int, ...]]) -> None:
    """Batch norm must normalise the channel axis (Keras' last axis), whatever the input rank."""
    for i, rec in enumerate(graph.layers):
        if rec["type"] != "batchnorm":
            continue
        axis = graph.keras_layers[i].config.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        rank = len(shapes[rec["inbound"][0]]) + 1  # with the batch axis
        if axis not in (-1, rank - 1):
            raise refused(path, f"layer {rec['name']!r} normalises axis {axis!r}, not the channels")


def _spec(size: tuple[int, int], interpolation: str, scale: float, mean: tuple[float, ...]) -> PreprocessSpec:
    # Keras recipes subtract a pixel mean before rescaling: (p - m) * s == p * s - m * s.
    shifted = tuple(float(m) * scale for m in mean)
    return PreprocessSpec(size[0], size[1], interpolation, scale, shifted, (1.0, 1.0, 1.0)).validated()


def _build(path: str, classes: int, size: tuple[int, int], args: dict) -> torch.nn.Module:
    try:
        return registry.build(ARCH, classes, size, args)
    except UsageError as exc:
        raise refused(path, f"the model cannot be rebuilt: {exc.problem}", exc.received) from None


def import_keras(
    path: str | os.PathLike,
    class_names: list[str],
    *,
    interpolation: str = "nearest",
    channel_order: str = "rgb",
    scale: float = KERAS_RESCALE,
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> ImportResult:
    """Read a Keras ``.h5``/``.keras`` classifier and return it as an imgclf :class:`Classifier`.

    Args:
        path: The Keras file.
        class_names: Class names in the model's output order (Keras: sorted folder names).
        interpolation: How the recipe resized images (``flow_from_directory``: ``nearest``).
        channel_order: ``rgb`` (Keras' ``load_img``) or ``bgr`` (images read with OpenCV).
        scale: The rescale factor applied to 0-255 pixels.
        mean: Per-channel pixel mean (R, G, B, in 0-255 units) subtracted before rescaling.

    Raises:
        ModelFileError: The file is broken, hostile or uses something imgclf does not import (exit 3).
        UsageError: Class names that do not fit the model, or bad preprocessing settings (exit 2).
    """
    path = os.fspath(path)
    source = read_keras(path)
    try:
        return _import(source, path, class_names, interpolation, channel_order, scale, mean)
    finally:
        source.h5.close()


def _import(
    source: KerasSource,
    path: str,
    class_names: list[str],
    interpolation: str,
    channel_order: str,
    scale: float,
    mean: tuple[float, float, float],
) -> ImportResult:
    graph = translate(source.config, path)
    if graph.input_size is None:
        raise refused(
            path, "the model input has no fixed height and width", fix="save a model built with a fixed size"
        )
    spec = _spec(graph.input_size, interpolation, scale, mean)
    args = {"layers": graph.layers, "input_order": channel_order}
    try:
        shapes = infer_shapes(check_graph(graph.layers), graph.input_size)
    except UsageError as exc:
        raise refused(path, f"the model cannot be rebuilt: {exc.problem}", exc.received) from None
    if shapes[-1] != (len(class_names),):
        raise UsageError(
            "the class names do not match the model's outputs",
            received=f"{len(class_names)} names ({', '.join(class_names[:4])})",
            expected=f"{shapes[-1][0]} names, in the model's output order",
            fix="give --classes with one name per output, or --classes-from the training folder",
        )
    model = _build(path, len(class_names), graph.input_size, args)
    _check_bn_axes(path, graph, shapes)
    every = _all_layers(source.config)
    arrays = source.weights(every)
    model.load_state_dict(convert_weights(path, graph, arrays, model), strict=True)
    about = {
        "format": "keras",
        "file": os.path.basename(path),
        "sha256": source.sha256,
        "keras_version": source.keras_version,
        "layout": source.layout,
        "layers": len(graph.layers),
    }
    notes = [
        f"resize: {interpolation}"
        + (" (Keras' flow_from_directory / load_img default)" if interpolation == "nearest" else ""),
        f"channel order the network was trained on: {channel_order}",
    ]
    provenance = {"imported_from": about, "preprocessing": "; ".join(notes)}
    manifest = {"provenance": provenance}
    clf = Classifier(model, class_names, spec, ARCH, registry.resolve_args(ARCH, args), manifest=manifest)
    return ImportResult(clf, about, notes)


def _all_layers(config: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every layer of the config in order (Keras 3 names weight groups by their order)."""
    out = []
    for e in config["config"].get("layers", []):
        name = e.get("name", e.get("config", {}).get("name"))
        out.append((str(name), str(e.get("class_name")), e.get("config", {})))
    return out
