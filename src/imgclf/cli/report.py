"""``imgclf report``: one self-contained HTML page about a model file (and its test report with --dataset).

Usage::

    from imgclf.cli.main import main
    main(["report", "--model", "m.imgclf", "--dataset", "data", "--output", "report.html"])
"""

from __future__ import annotations

import argparse
import os
import sys

from imgclf.cli.common import EPILOG, add_cache_flags, add_max_pixels_flag, max_pixels_option
from imgclf.cli.model import _add_model_arg, _model_path
from imgclf.config import SPLITS


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf report``."""
    p = sub.add_parser(
        "report",
        parents=[common],
        help="write an HTML report about a model file",
        epilog=EPILOG,
        description="Write one self-contained HTML file (no external resource; opens offline) about "
        "MODEL: architecture, preprocessing, classes, provenance, training curves and the metrics "
        "recorded at training time. With --dataset also the split's classification report, confusion "
        "matrix, the most confidently wrong images and a reliability diagram with its calibration error.",
    )
    p.set_defaults(func=cmd_report)
    _add_model_arg(p)
    p.add_argument("--dataset", "-d", help="dataset folder to evaluate on (as `imgclf evaluate`)")
    p.add_argument(
        "--split",
        default="testing",
        choices=(*SPLITS, "all"),
        help="which split to score with --dataset (default testing)",
    )
    p.add_argument("--output", "-o", required=True, metavar="HTML", help="the HTML file to write")
    p.add_argument("--top", type=int, default=16, metavar="N", help="images in the top-losses gallery")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed)")
    add_cache_flags(p)
    add_max_pixels_flag(p)


def cmd_report(args: argparse.Namespace) -> int:
    """``imgclf report``: write the page; print its path on stdout."""
    from imgclf.cli.output import stdout_line
    from imgclf.errors import UsageError, safe_text
    from imgclf.fileio.writing import check_writable
    from imgclf.images.read import MAX_PIXELS
    from imgclf.modelfile import load
    from imgclf.report_html import render_report, write_report

    path = _model_path(args)
    if args.top < 0:
        raise UsageError(
            "--top must be 0 or more", received=str(args.top), expected=">= 0", fix="use --top 16"
        )
    check_writable(args.output)
    clf = load(path, max_pixels=max_pixels_option(args).get("max_pixels", MAX_PIXELS))
    evaluation = None
    if args.dataset:
        from imgclf.dataset_evaluation import evaluate_dataset
        from imgclf.evaluation import Evaluation

        result = evaluate_dataset(
            clf,
            args.dataset,
            split=args.split,
            skip_bad=args.skip_bad,
            cache_dir=args.cache_dir,
            use_cache=not args.no_cache,
            log=lambda m: print(f"imgclf: {safe_text(m)}", file=sys.stderr),
        )
        if not isinstance(result, Evaluation):
            raise _multi_label_report(path)
        evaluation = result
    page = render_report(clf, os.path.basename(path), evaluation, split=args.split, top_k=args.top)
    write_report(page, args.output)
    stdout_line(args.output)
    return 0


def _multi_label_report(path: str) -> Exception:
    from imgclf.errors import UsageError, safe_text

    return UsageError(
        "the HTML report's dataset section covers single-label models only",
        received=f"{safe_text(path)}, a multi-label model",
        expected="a single-label model, or no --dataset",
        fix="imgclf evaluate shows a multi-label model's per-class report, micro/macro-F1 and mAP",
    )
