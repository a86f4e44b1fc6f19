"""``imgclf evaluate``: a model file's classification report on a dataset split.

Usage::

    from imgclf.cli.main import main
    main(["evaluate", "--model", "m.imgclf", "--dataset", "data"])
"""

from __future__ import annotations

import argparse
import json
import sys

from imgclf.cli.common import EPILOG, add_cache_flags
from imgclf.cli.output import report_text, stdout_line


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf evaluate``."""
    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="evaluate a model file on a dataset",
        epilog=EPILOG,
        description="Print the classification report of MODEL on a dataset's testing split (or "
        "on every image of a flat folder of class folders).",
    )
    p.set_defaults(func=cmd_evaluate)
    p.add_argument("--model", "-m", required=True, help="model file")
    p.add_argument("--dataset", "-d", required=True, help="dataset folder")
    p.add_argument(
        "--split",
        default="testing",
        choices=("training", "validation", "testing"),
        help="which split to score (default testing)",
    )
    p.add_argument(
        "--output", "-o", metavar="JSON", help="also write report, confusion matrix, misclassified"
    )
    p.add_argument("--confusion-plot", metavar="PNG", help="write a confusion-matrix plot")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed)")
    add_cache_flags(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``imgclf evaluate``: classification report on stdout (text or ``--json``)."""
    from imgclf.errors import safe_text
    from imgclf.evaluation import evaluate_dataset
    from imgclf.fileio import atomic_write_text
    from imgclf.modelfile import load

    for target in (args.output, args.confusion_plot):
        if target:
            from imgclf.fileio import check_writable

            check_writable(target)
    if args.confusion_plot:
        from imgclf.plots import require_matplotlib

        require_matplotlib("--confusion-plot", "pip install 'imgclf[plots]', or drop --confusion-plot")
    clf = load(args.model)
    ev = evaluate_dataset(
        clf,
        args.dataset,
        split=args.split,
        skip_bad=args.skip_bad,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        log=lambda m: print(f"imgclf: {safe_text(m)}", file=sys.stderr),
    )
    if args.json:
        stdout_line(json.dumps(ev.to_dict(), indent=2))
    else:
        stdout_line(report_text(ev.report))
    if args.output:
        atomic_write_text(args.output, json.dumps(ev.to_dict(), indent=2) + "\n")
    if args.confusion_plot:
        from imgclf.plots import plot_confusion

        plot_confusion(ev.confusion, ev.class_names, args.confusion_plot)
    return 0
