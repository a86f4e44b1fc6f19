"""``imgclf import-keras``: turn a Keras ``.h5``/``.keras`` classifier into one imgclf model file.

No TensorFlow needed: the file is read as data (see :mod:`imgclf.interop.keras_import`). The preprocessing
the Keras recipe trained with (nearest resize, rescale 1/255, optional mean and BGR order) and the class
names are written into the model file, so ``imgclf predict`` reproduces Keras' outputs.

Usage::

    imgclf import-keras malaria.h5 --classes-from malaria/training --out malaria.imgclf
    imgclf predict --model malaria.imgclf --images cell.png
"""

from __future__ import annotations

import argparse
import json
import os

EPILOG = """exit codes: 0 ok, 2 usage (class names, options), 3 the Keras file is broken, hostile or uses
something imgclf does not import (nothing is written), 5 the output cannot be written, 7 bad --classes-from"""


def _scale(text: str) -> float:
    num, sep, den = text.partition("/")
    try:
        value = float(num) / float(den) if sep else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"expected a number or a fraction like 1/255, got {text!r}"
        ) from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``import-keras`` to the command line (light: argparse only)."""
    p = sub.add_parser(
        "import-keras",
        parents=[common],
        help="import a Keras .h5/.keras classifier into one imgclf model file (no TensorFlow needed)",
        description="Read MODEL (Keras 2 or 3, .h5 or .keras) as data, never running code from it, and"
        " write an imgclf model file with the preprocessing the Keras recipe trained with and the class"
        " names. Supported layers: InputLayer, Conv2D, BatchNormalization, Activation, ZeroPadding2D,"
        " MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Add, Flatten, Dense, Dropout.",
        epilog=EPILOG,
    )
    p.add_argument("keras_model", metavar="MODEL", help="the Keras file (.h5 or .keras)")
    names = p.add_mutually_exclusive_group(required=True)
    names.add_argument("--classes", help="class names in the model's output order, comma-separated")
    names.add_argument(
        "--classes-from",
        metavar="DATASET_DIR",
        help="read class names from a dataset folder (sorted folder names: Keras' flow_from_directory order)",
    )
    p.add_argument("--out", "-o", help="output model file (default: MODEL with .imgclf)")
    p.add_argument(
        "--interpolation",
        choices=("nearest", "bilinear"),
        default="nearest",
        help="how training resized images (default nearest: flow_from_directory / load_img)",
    )
    p.add_argument(
        "--channel-order",
        choices=("rgb", "bgr"),
        default="rgb",
        help="channel order the network was trained on (default rgb; bgr for OpenCV-read images)",
    )
    p.add_argument("--scale", type=_scale, default=1 / 255, help="rescale factor (default 1/255)")
    p.add_argument(
        "--mean-json",
        metavar="F",
        help='per-channel mean subtracted before rescaling, a JSON file {"R": r, "G": g, "B": b} (0-255)',
    )
    p.set_defaults(func=run)


def _mean(path: str | None) -> tuple[float, float, float]:
    from imgclf.errors import UsageError

    if path is None:
        return (0.0, 0.0, 0.0)
    problem = None
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(65536))
        values = tuple(data[k] for k in ("R", "G", "B"))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 255 for v in values):
            problem = "values must be numbers in [0, 255]"
    except OSError as exc:
        problem = f"cannot read it ({exc.strerror or exc})"
    except (ValueError, KeyError, TypeError):
        problem = "not a JSON object with keys R, G and B"
    if problem:
        raise UsageError(
            f"bad --mean-json file: {problem}",
            received=path,
            expected='a JSON object like {"R": 124.96, "G": 115.97, "B": 106.13}',
            fix="write the training mean per channel (0-255 pixel units) to the file",
        )
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _class_names(args: argparse.Namespace) -> list[str]:
    from imgclf.errors import UsageError

    if args.classes_from:
        from imgclf.data.folders import scan_dataset

        return list(scan_dataset(args.classes_from).class_names)
    names = [n.strip() for n in args.classes.split(",")]
    if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
        raise UsageError(
            "--classes needs two or more distinct, non-empty names",
            received=repr(args.classes)[:100],
            expected="names in the model's output order, like Parasitized,Uninfected",
            fix="list every class once, separated by commas",
        )
    return names


def run(args: argparse.Namespace) -> int:
    """Import ``args.keras_model`` and save it; print where it went and how it preprocesses."""
    from imgclf.cli.output import stdout_line
    from imgclf.errors import safe_text
    from imgclf.fileio.writing import check_writable
    from imgclf.interop.keras_import import import_keras
    from imgclf.modelfile import save

    out = args.out or os.path.splitext(args.keras_model)[0] + ".imgclf"
    names = _class_names(args)
    mean = _mean(args.mean_json)
    check_writable(out, "output model file")
    result = import_keras(
        args.keras_model,
        names,
        interpolation=args.interpolation,
        channel_order=args.channel_order,
        scale=args.scale,
        mean=mean,
    )
    save(result.classifier, out)
    spec = result.classifier.preprocess
    src = result.source
    stdout_line(
        f"imported {safe_text(src['file'])} (Keras {src['keras_version'] or 'unknown'}, {src['layout']})"
    )
    stdout_line(
        f"wrote {safe_text(out)}: keras_graph, {src['layers']} layers, classes {safe_text(', '.join(names))}"
    )
    stdout_line(
        f"preprocessing: {spec.height}x{spec.width}, {'; '.join(result.notes)}, rescale {spec.rescale:g}"
        + (f", mean {list(mean)} (0-255)" if any(mean) else "")
    )
    return 0
