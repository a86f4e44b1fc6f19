"""``imgclf evaluate``: a model file's classification report on a dataset split.

Usage::

    from imgclf.cli.main import main
    main(["evaluate", "--model", "m.imgclf", "--dataset", "data"])
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from imgclf.cli.common import (
    EPILOG,
    add_cache_flags,
    add_max_pixels_flag,
    add_threads_flag,
    choose_threads,
    err,
    inference_threads,
    max_pixels_option,
)
from imgclf.cli.output import report_text, stdout_line
from imgclf.config import SPLITS


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf evaluate``."""
    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="evaluate a model file on a dataset",
        epilog=EPILOG,
        description="Print the classification report of MODEL on a dataset's testing split. A flat "
        "folder of class folders is split again exactly as training split it (seed, fractions and data "
        "fingerprint are in the model file), so only images the model did not train on are scored; a "
        "changed folder is refused (--split all scores every image, for a folder the model never saw).",
    )
    p.set_defaults(func=cmd_evaluate)
    p.add_argument("--model", "-m", required=True, help="model file")
    p.add_argument("--dataset", "-d", required=True, help="dataset folder, or a labels .csv")
    p.add_argument(
        "--split",
        default="testing",
        choices=(*SPLITS, "all"),
        help="which split to score (default testing); 'all' scores every image of the folder",
    )
    p.add_argument(
        "--output", "-o", metavar="JSON", help="also write report, confusion matrix, misclassified"
    )
    p.add_argument("--confusion-plot", metavar="PNG", help="write a confusion-matrix plot")
    p.add_argument("--report", metavar="HTML", help="also write the HTML report (as imgclf report)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed)")
    p.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average over flipped and rotated views"
    )
    add_cache_flags(p)
    add_max_pixels_flag(p)
    add_threads_flag(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _bar_factory():  # noqa: ANN202 - a progress factory, see evaluate_dataset
    """Progress bars on stderr when it is a terminal (decoding, then classifying); else none."""
    if not sys.stderr.isatty():
        return None
    from imgclf.progress import bar_factory, stderr_console

    return bar_factory(stderr_console())


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``imgclf evaluate``: classification report on stdout (text or ``--json``)."""
    from imgclf.dataset_evaluation import evaluate_dataset
    from imgclf.errors import safe_text
    from imgclf.fileio.writing import atomic_write_text
    from imgclf.loading import load  # .imgclf, .onnx (onnxruntime, no torch) or OpenVINO .xml

    for target in (args.output, args.confusion_plot, args.report):
        if target:
            from imgclf.fileio.writing import check_writable

            check_writable(target)
    if args.confusion_plot:
        from imgclf.plots import require_matplotlib

        require_matplotlib("--confusion-plot", "pip install matplotlib, or drop --confusion-plot")
    threads, why = choose_threads(args.threads)
    clf = load(args.model, threads=threads, **max_pixels_option(args))
    clf.tta = args.tta
    with inference_threads(threads, why):
        ev = evaluate_dataset(
            clf,
            args.dataset,
            split=args.split,
            skip_bad=args.skip_bad,
            cache_dir=args.cache_dir,
            use_cache=not args.no_cache,
            log=lambda m: print(f"imgclf: {safe_text(m)}", file=sys.stderr),
            progress=_bar_factory(),
        )
    if args.json:
        stdout_line(json.dumps(ev.to_dict(), indent=2))
    else:
        stdout_line(report_text(ev.report))
        stdout_line("\n" + "\n".join(ev.summary_lines()))
    from imgclf.evaluation import Evaluation

    if args.output:
        atomic_write_text(args.output, json.dumps(ev.to_dict(), indent=2) + "\n")
    if args.confusion_plot and not isinstance(ev, Evaluation):
        err("note: no confusion matrix for a multi-label model (see the per-class report)")
    elif args.confusion_plot and isinstance(ev, Evaluation):
        from imgclf.plots import plot_confusion

        name = os.path.basename(args.model)
        title = f"{name} on {args.split}: accuracy {ev.accuracy:.4f} ({len(ev.paths)} images)"
        plot_confusion(ev.confusion, ev.class_names, args.confusion_plot, title=title)
    if args.report and not isinstance(ev, Evaluation):
        err("note: no HTML report for a multi-label model (its metrics are above)")
    elif args.report and isinstance(ev, Evaluation):
        from imgclf.report_html import render_report, write_report

        write_report(render_report(clf, os.path.basename(args.model), ev, split=args.split), args.report)
    return 0
