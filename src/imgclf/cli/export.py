"""``imgclf export``: write a model file as one self-contained .onnx, kept only if it passes the parity gate.

stdout gets one result line (the file, its size, the parity figure); the exporter's own chatter goes to
stderr. A failed gate exits 8 and leaves no file.

Usage::

    imgclf export malaria.imgclf --format onnx --out malaria.onnx --parity-images malaria/testing
"""

from __future__ import annotations

import argparse
import os

from imgclf.cli.common import EPILOG
from imgclf.cli.output import stdout_line

EXPORT_FORMATS = ("onnx",)
DEFAULT_OPSET = 18  # equals imgclf.interop.onnx_export.DEFAULT_OPSET (a test checks): this module stays light


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf export`` on the ``sub`` parsers."""
    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a model file to ONNX (kept only if it answers like the PyTorch model)",
        epilog=EPILOG,
        description="Export MODEL to ONNX: eval mode, softmax inside the graph (outputs = the probabilities "
        "predict gives), dynamic batch, one self-contained file with the class names, preprocessing and "
        "probes in its metadata. Before the file is written onnxruntime must match PyTorch within 1e-5 on "
        "the probes, generated inputs and --parity-images at batch 1 and 7, with the same top-1 class; "
        "otherwise exit 8 and no file. Use the .onnx with predict, inspect, verify, serve (no torch needed).",
    )
    p.add_argument("model", help="the .imgclf model file")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="export format (default onnx)")
    p.add_argument("--out", "-o", help="output file (default: MODEL with the extension .onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument(
        "--exporter",
        choices=("torchscript", "dynamo"),
        default="torchscript",
        help="torch.onnx exporter: torchscript (fast, default) or dynamo (torch.export based, slower)",
    )
    p.add_argument("--parity-images", metavar="DIR", help="also check parity on the images in DIR")
    p.set_defaults(func=run)


def default_out(model: str) -> str:
    """``model.imgclf`` → ``model.onnx`` (any other name gets ``.onnx`` appended)."""
    root, ext = os.path.splitext(model)
    return (root if ext.lower() == ".imgclf" else model) + ".onnx"


def run(args: argparse.Namespace) -> int:
    """``imgclf export``: export, gate, write; one result line on stdout."""
    from imgclf.errors import safe_text
    from imgclf.interop.onnx_export import export_onnx

    out = args.out or default_out(args.model)
    result = export_onnx(
        args.model, out, opset=args.opset, exporter=args.exporter, parity_images=args.parity_images
    )
    parity = result.parity
    stdout_line(
        f"{safe_text(result.path)}\t{result.file_bytes} bytes\topset {result.opset}\tparity max |Δp| "
        f"{parity['max_abs_diff']:.3g} on {parity['inputs']} inputs at batch 1 and 7 (tolerance "
        f"{parity['tolerance']:g}), top-1 identical"
    )
    return 0
