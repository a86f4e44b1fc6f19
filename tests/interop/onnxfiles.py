"""Helpers for the ONNX tests: a model file, demo images and the model's .onnx, built once per module.

Usage::

    pair = export_pair(tmp_path_factory.mktemp("onnx"), "small_cnn")
    pair.imgclf, pair.onnx, pair.images
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import onnx

from helpers import make_classifier

SIZE = 32  # small inputs keep the exports and the round trips fast

# Builder arguments for architectures whose defaults do not build a network (keras_graph is data: a layer
# list). This one has TensorFlow's asymmetric "same" padding at stride 2, which ONNX must reproduce.
_CONV = {"type": "conv2d", "filters": 4, "kernel": [3, 3], "strides": [2, 2], "dilation": [1, 1],
         "padding": "same", "bias": True, "activation": "relu"}  # fmt: skip
ARCH_ARGS = {
    "keras_graph": {
        "layers": [
            {"name": "in", "type": "input", "inbound": []},
            {"name": "c", **_CONV, "inbound": [0]},
            {"name": "bn", "type": "batchnorm", "eps": 2e-5, "momentum": 0.9, "inbound": [1]},
            {
                "name": "p",
                "type": "avgpool",
                "pool": [3, 3],
                "strides": [2, 2],
                "padding": "same",
                "inbound": [2],
            },
            {"name": "f", "type": "flatten", "inbound": [3]},
            {"name": "d", "type": "dense", "units": 2, "bias": True, "activation": "linear", "inbound": [4]},
        ]
    }
}


def demo_images(folder: Path) -> Path:
    """A dozen demo-dataset images (PNG and JPEG, with and without alpha) under ``folder``."""
    from imgclf.data.synthetic import write_demo_dataset

    if not folder.exists():
        write_demo_dataset(folder, scale=0.02, seed=3)
    return folder


def export_pair(base: Path, arch: str, *, parity_images: bool = True) -> SimpleNamespace:
    """Save a randomly initialised ``arch`` (registry defaults, or ``ARCH_ARGS``) as .imgclf; export it."""
    import imgclf
    from imgclf.interop.onnx_export import export_onnx

    images = demo_images(base / "demo")
    model_path = base / f"{arch}.imgclf"
    imgclf.save(make_classifier(arch=arch, args=ARCH_ARGS.get(arch, {}), size=SIZE, seed=5), model_path)
    out = base / f"{arch}.onnx"
    result = export_onnx(model_path, out, parity_images=images if parity_images else None)
    paths = sorted(str(p) for p in images.rglob("*") if p.is_file())
    return SimpleNamespace(imgclf=model_path, onnx=out, result=result, images=images, paths=paths)


def without_metadata(src: Path, dst: Path) -> Path:
    """Write ``src`` with every ``metadata_props`` entry removed: a plain ONNX model."""
    model = onnx.load_model(str(src))
    del model.metadata_props[:]
    dst.write_bytes(model.SerializeToString())
    return dst
