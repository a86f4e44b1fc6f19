"""``imgclf calibrate``: fit a model file's temperature on a dataset split and store it in the file.

Usage::

    from imgclf.cli.main import main
    main(["calibrate", "--model", "m.imgclf", "--dataset", "data", "--output", "calibrated.imgclf"])
"""

from __future__ import annotations

import argparse
import sys

from imgclf.cli.common import EPILOG, add_cache_flags
from imgclf.cli.model import _add_model_arg, _model_path
from imgclf.config import SPLITS


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf calibrate``."""
    p = sub.add_parser(
        "calibrate",
        parents=[common],
        help="fit a model file's confidence calibration (temperature scaling)",
        epilog=EPILOG,
        description="Fit one temperature that divides MODEL's logits so its confidence matches how often "
        "it is right on a held-out split (default validation), and store it in the model file; predict, "
        "evaluate, serve and ONNX export then apply it. The winning class never changes. Prints the "
        "expected calibration error before and after, on that split.",
    )
    p.set_defaults(func=cmd_calibrate)
    _add_model_arg(p)
    p.add_argument("--dataset", "-d", required=True, help="dataset folder (as `imgclf evaluate`)")
    p.add_argument(
        "--split",
        default="validation",
        choices=(*SPLITS, "all"),
        help="the held-out split to fit on (default validation; never the split you report on)",
    )
    p.add_argument(
        "--output", "-o", metavar="FILE", help="write the calibrated model here (default: in place)"
    )
    add_cache_flags(p)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``imgclf calibrate``: one result line on stdout (temperature, ECE before and after)."""
    import numpy as np

    from imgclf.calibration import calibration_block
    from imgclf.cli.output import stdout_line
    from imgclf.dataset_evaluation import evaluate_dataset
    from imgclf.errors import safe_text
    from imgclf.fileio.writing import check_writable
    from imgclf.modelfile import load, save

    path = _model_path(args)
    out = args.output or path
    check_writable(out)
    clf = load(path)
    previous = clf.manifest.pop("calibration", None)  # fit on the raw network's scores
    ev = evaluate_dataset(
        clf,
        args.dataset,
        split=args.split,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        log=lambda m: print(f"imgclf: {safe_text(m)}", file=sys.stderr),
    )
    # log-probabilities are the logits up to a per-image constant, which the softmax ignores
    logits = np.log(np.clip(ev.probabilities.astype(np.float64), np.finfo(np.float32).tiny, 1.0))
    block = calibration_block(logits, ev.labels, args.split)
    clf.manifest["calibration"] = block
    save(clf, out)
    was = f" (was {previous['temperature']:.4f})" if previous else ""
    stdout_line(
        f"temperature {block['temperature']:.4f}{was}; expected calibration error on {len(ev.labels)} "
        f"{args.split} images {block['ece_before']:.4f} -> {block['ece_after']:.4f}; wrote {out}"
    )
    return 0
