"""Parity figures of the ONNX export for every registered architecture (or for given model files).

For each model: export (the gate runs: probes, generated inputs, demo images at batch 1 and 7), then an
independent check — the .imgclf through PyTorch and the .onnx through onnxruntime on the demo images
and the stored probes at batch 1 and 7: max |Δp| and top-1 agreement.

Usage::

    python benchmarks/onnx_parity.py                     # random-weight models, 64x64, 2 classes
    python benchmarks/onnx_parity.py malaria.imgclf      # your own model files
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import imgclf
from imgclf.config import PreprocessSpec
from imgclf.data.synthetic import write_demo_dataset
from imgclf.errors import UsageError
from imgclf.interop.onnx_export import export_onnx
from imgclf.modelfile.format import read_container
from imgclf.modelfile.manifest import parse
from imgclf.models import registry


def random_model(arch: str, path: Path) -> Path:
    """A randomly initialised ``arch`` with non-trivial batch-norm statistics, saved to ``path``."""
    torch.manual_seed(0)
    net = registry.build(arch, 2, (64, 64), {})
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    imgclf.save(imgclf.Classifier(net, ["Parasitized", "Uninfected"], PreprocessSpec(), arch, {}), path)
    return path


def check(model: Path, onnx_path: Path, images: list[str]) -> str:
    """Independent round trip: max |Δp| and top-1 agreement at batch 1 and 7."""
    a, b = imgclf.load(model), imgclf.load(onnx_path)
    c = read_container(model)
    probes = np.stack([c.tensor(p.input_tensor).numpy() for p in parse(c).probes])
    worst, flips = 0.0, 0
    for bs in (1, 7):
        for want, got in (
            (a.predict_proba(images, batch_size=bs), b.predict_proba(images, batch_size=bs)),
            (a.predict_proba_uint8(probes, batch_size=bs), b.predict_proba_uint8(probes, batch_size=bs)),
        ):
            worst = max(worst, float(np.abs(got - want).max()))
            flips += int((got.argmax(1) != want.argmax(1)).sum())
    return f"round trip max |Δp| {worst:.3g}, top-1 differs on {flips} of {2 * (len(images) + len(probes))}"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_demo_dataset(folder / "demo", scale=0.2, seed=11)
        images = sorted(str(p) for p in (folder / "demo").rglob("*") if p.is_file())
        models = [Path(p) for p in sys.argv[1:]]
        for arch in registry.names() if not models else ():
            try:
                models.append(random_model(arch, folder / f"{arch}.imgclf"))
            except UsageError as exc:  # e.g. keras_graph: its layers are data, pass an imported model file
                print(f"{arch}: skipped, its default arguments build no network ({exc.problem})")
        print(f"{len(images)} demo images; onnxruntime CPU, default graph optimisations")
        for model in models:
            start = time.perf_counter()
            out = folder / (model.stem + ".onnx")
            result = export_onnx(model, out, parity_images=folder / "demo")
            p = result.parity
            print(
                f"{model.stem}: gate max |Δp| {p['max_abs_diff']:.3g} on {p['inputs']} inputs "
                f"(worst: {p['worst_input'].replace(tmp, '')}), export {time.perf_counter() - start:.0f} s; "
                + check(model, out, images)
            )


if __name__ == "__main__":
    main()
