"""``imgclf evaluate``: a model file's classification report on a dataset split.

Usage::

    from imgclf.cli.main import build_parser
    cmd_evaluate(build_parser().parse_args(["evaluate", "--model", "m.imgclf", "--dataset", "data"]))
"""

from __future__ import annotations

import argparse
import json
import sys

from imgclf.cli.output import report_text, stdout_line

__all__ = ["cmd_evaluate"]


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
