"""``imgclf export``: write a model file as one self-contained .onnx, kept only if it passes the parity gate.

stdout gets one result line (the file, its size, the parity figure); the exporter's own chatter goes to
stderr. A failed gate exits 8 and leaves no file.

Usage::

    imgclf export malaria.imgclf --format onnx --out malaria.onnx --parity-images malaria/testing
    imgclf export malaria.imgclf --format openvino --quantize int8 --calibration malaria
"""

from __future__ import annotations

import argparse
import os

from imgclf.cli.common import EPILOG
from imgclf.cli.output import stdout_line

EXPORT_FORMATS = ("onnx", "openvino")
DEFAULT_OPSET = 18  # equals imgclf.interop.onnx_export.DEFAULT_OPSET (a test checks): this module stays light


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf export`` on the ``sub`` parsers."""
    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a model file to ONNX or OpenVINO (kept only if it answers like the PyTorch model)",
        epilog=EPILOG,
        description="Export MODEL to ONNX: eval mode, softmax inside the graph (outputs = the probabilities "
        "predict gives), dynamic batch, one self-contained file with the class names, preprocessing and "
        "probes in its metadata. Before the file is written onnxruntime must match PyTorch within 1e-5 on "
        "the probes, generated inputs and --parity-images at batch 1 and 7, with the same top-1 class; "
        "otherwise exit 8 and no file. Use the .onnx with predict, inspect, verify, serve (no torch needed). "
        "--quantize int8 gates on top-1 agreement with fp32 (>= 99% of held-out images, test accuracy drop "
        "<= 1 point) instead; --format openvino writes NAME.xml + NAME.bin, gated again with OpenVINO.",
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
    p.add_argument(
        "--quantize",
        choices=("int8",),
        help="static int8 post-training quantization, kept only if top-1 agrees with fp32 on held-out "
        "images (see --calibration)",
    )
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help="with --quantize: the dataset the model was trained on (calibration uses its training split, "
        "the agreement gate its validation and testing splits)",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        metavar="N",
        help="with --quantize: how many training images calibrate (default: "
        "imgclf.interop.onnx_quantize.CALIBRATION_IMAGES)",
    )
    p.set_defaults(func=run)


def default_out(model: str) -> str:
    """``model.imgclf`` → ``model.onnx`` (any other name gets ``.onnx`` appended)."""
    root, ext = os.path.splitext(model)
    return (root if ext.lower() == ".imgclf" else model) + ".onnx"


def run(args: argparse.Namespace) -> int:
    """``imgclf export``: export, gate, write; one result line on stdout."""
    from imgclf.errors import safe_text
    from imgclf.interop.onnx_export import export_onnx

    if args.format == "openvino":
        return _run_openvino(args)
    out = args.out or default_out(args.model)
    if args.quantize or args.calibration or args.calibration_images is not None:
        return _run_quantized(args, out)
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


def _run_quantized(args: argparse.Namespace, out: str) -> int:
    """``--quantize int8``: the fp32 export, quantized, behind the agreement gate; one result line."""
    from imgclf.errors import UsageError, safe_text
    from imgclf.interop import onnx_quantize

    if not args.quantize or not args.calibration:
        raise UsageError(
            "--quantize and --calibration go together",
            received=f"--quantize {args.quantize}, --calibration {args.calibration}",
            expected="--quantize int8 --calibration DATASET_DIR",
            fix="the model file records the dataset's fingerprint, not its location: pass --calibration",
        )
    count = onnx_quantize.CALIBRATION_IMAGES if args.calibration_images is None else args.calibration_images
    result = onnx_quantize.export_onnx_int8(
        args.model,
        out,
        calibration=args.calibration,
        calibration_images=count,
        opset=args.opset,
        exporter=args.exporter,
        parity_images=args.parity_images,
    )
    figures = onnx_quantize.describe(result.agreement)
    stdout_line(f"{safe_text(result.path)}\t{result.file_bytes} bytes\t{figures}")
    return 0


def _run_openvino(args: argparse.Namespace) -> int:
    """``--format openvino``: the ONNX export converted to an OpenVINO IR, gated again; one result line."""
    from imgclf.errors import UsageError, safe_text
    from imgclf.interop import openvino_export

    if bool(args.quantize) != bool(args.calibration):
        raise UsageError(
            "--quantize and --calibration go together",
            received=f"--quantize {args.quantize}, --calibration {args.calibration}",
            expected="--quantize int8 --calibration DATASET_DIR, or neither",
            fix="the model file records the dataset's fingerprint, not its location: pass --calibration",
        )
    out = args.out or openvino_export.default_out(args.model, args.quantize)
    result = openvino_export.export_openvino(
        args.model,
        out,
        quantize=args.quantize,
        calibration=args.calibration,
        calibration_images=args.calibration_images,
        opset=args.opset,
        exporter=args.exporter,
        parity_images=args.parity_images,
    )
    gate = result.gate
    if result.precision == "int8":
        from imgclf.interop.onnx_quantize import describe

        figures = describe(gate) + " (OpenVINO)"
    else:
        figures = (
            f"parity max |Δp| {gate['max_abs_diff']:.3g} on {gate['inputs']} inputs at batch 1 and 7 "
            f"(tolerance {gate['tolerance']:g}, OpenVINO), top-1 identical"
        )
    files = f"{result.file_bytes} bytes (with {safe_text(result.weights)})"
    stdout_line(f"{safe_text(result.path)}\t{files}\t{figures}")
    return 0
