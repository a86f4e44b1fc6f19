"""``imgclf predict``: classify images with a model file; optional predictions file and montage.

Imports no training or plotting code (``tests/test_reports.py`` checks it).

Usage::

    from imgclf.cli.main import main
    main(["predict", "--model", "m.imgclf", "--images", "cells/"])
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import sys
from collections.abc import Iterable
from typing import Any

from imgclf.cli.common import (
    EPILOG,
    add_max_pixels_flag,
    add_threads_flag,
    choose_threads,
    inference_threads,
    max_pixels_option,
)
from imgclf.cli.output import discard_stdout, stdout_line
from imgclf.cli.predict_shards import add_shard_flags
from imgclf.errors import PartialFailure, UsageError

MONTAGE_TILES = 16  # the recipe's 4 x 4 sheet


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf predict``."""
    p = sub.add_parser(
        "predict",
        parents=[common],
        help="classify images with a model file",
        epilog=EPILOG,
        description="Classify image files and folders (recursive). Labels and preprocessing come "
        "from the model file. stdout: path, label, confidence per image (tab-separated). "
        "Sharded: under torchrun (one share per rank) or with --shard I/N the input list is split into "
        "contiguous shares; the parts are merged in input order into --output, and a re-run redoes only "
        "the shares without a finished part (see docs/distributed.md).",
    )
    p.set_defaults(func=cmd_predict)
    p.add_argument("--model", "-m", required=True, help="model file (.imgclf, or .onnx from imgclf export)")
    p.add_argument("--images", "-i", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--sample", type=int, metavar="N", help="classify N images picked at random (seeded)")
    p.add_argument("--seed", type=int, default=42, help="seed for --sample (default 42)")
    p.add_argument("--montage", metavar="PNG", help="write a labelled montage (4 tiles of 128x128 per row)")
    p.add_argument("--show", action="store_true", help="open the montage when a display exists")
    p.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average over flipped and rotated views"
    )
    p.add_argument("--explain", metavar="DIR", help="write a Grad-CAM overlay PNG per image into DIR")
    p.add_argument("--output", "-o", metavar="FILE", help="write predictions to .csv or .jsonl")
    p.add_argument(
        "--json", action="store_true", help="stdout: one JSON object per image (JSON Lines), as in .jsonl"
    )
    p.add_argument("--top-k", type=int, default=1, help="list the K most probable classes (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        help="torch models on the CPU: bf16 autocast where the CPU has AMX or AVX-512 BF16 and the "
        "file's probes keep their top-1 class (auto), or always fp32 / bf16; shown on stderr "
        "(default: $IMGCLF_PRECISION, else auto)",
    )
    add_max_pixels_flag(p)
    add_threads_flag(p)
    add_shard_flags(p)


def _pick_images(args: argparse.Namespace) -> list[str]:
    from imgclf.data.listing import list_images

    missing = [p for p in args.images if not os.path.exists(p)]
    if missing:  # a mistyped path is a usage error, not an image that failed to decode
        raise UsageError(
            f"--images names {len(missing)} path(s) that do not exist",
            received=", ".join(missing[:3]) + (f", ... ({len(missing) - 3} more)" * (len(missing) > 3)),
            expected="existing image files or folders",
            fix="check the --images paths",
        )
    paths = list_images(args.images)
    if not paths:
        raise UsageError(
            "no images found",
            received=" ".join(args.images),
            expected="image files or folders",
            fix="check the --images paths",
        )
    if args.sample is not None:
        if args.sample < 1:
            raise UsageError(
                "--sample must be positive", received=args.sample, expected=">= 1", fix="use --sample 16"
            )
        paths = sorted(paths)
        paths = random.Random(args.seed).sample(paths, min(args.sample, len(paths)))
    return paths


def _check_output_format(path: str) -> None:
    if not path.lower().endswith((".csv", ".jsonl")):
        raise UsageError(
            "unknown --output format",
            received=path,
            expected="a .csv or .jsonl file name",
            fix="use --output preds.csv or --output preds.jsonl",
        )


def json_row(p: Any) -> str:
    """One prediction as a JSON object on one line (the .jsonl row, and ``--json``'s stdout line)."""
    row: dict[str, Any] = {"path": p.source}
    if p.error is None:
        row.update(label=p.label, confidence=p.confidence, probabilities=p.probabilities)
        if p.labels is not None:  # multi-label: the classes over their thresholds ([]: none of them)
            row["labels"] = p.labels
        if len(p.top_k) > 1:
            row["top_k"] = [{"label": k, "probability": v} for k, v in p.top_k]
        if getattr(p, "unlike_training_data", None) is not None:
            row["unlike_training_data"] = p.unlike_training_data
    else:
        row["error"] = p.error
    return json.dumps(row, ensure_ascii=False)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A text cell a spreadsheet will not run: OWASP's rule, a leading ``'`` before ``= + - @ TAB CR``.

    File and class names are untrusted (``=HYPERLINK(...)``, ``=1+1.png``); JSONL output stays raw.
    """
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class _PredictionsFile:
    """``--output`` rows (CSV or JSONL), one per image, written to ``fh`` as results arrive."""

    def __init__(self, fh: Any, path: str, class_names: list[str], ood: bool = False) -> None:
        self.class_names = class_names
        self.ood = ood  # the model file has an out-of-distribution threshold: one more column
        self.jsonl = path.lower().endswith(".jsonl")
        self._fh = fh
        if not self.jsonl:
            fixed = {"path", "label", "confidence", "error"}
            columns = [csv_cell(c) if c not in fixed else f"prob:{c}" for c in class_names]
            # RFC 4180 line ends: the writer then quotes a CR or LF in a cell instead of splitting the row.
            self._csv = csv.writer(fh, lineterminator="\r\n")
            extra = ["unlike_training_data"] if ood else []
            self._csv.writerow(["path", "label", "confidence", *columns, *extra, "error"])

    def write(self, p: Any) -> None:
        if self.jsonl:
            self._fh.write(json_row(p) + "\n")
        elif p.error is None:
            probs = [repr(p.probabilities[c]) for c in self.class_names]
            flag = [str(bool(getattr(p, "unlike_training_data", False))).lower()] if self.ood else []
            self._csv.writerow([csv_cell(p.source), csv_cell(p.label), repr(p.confidence), *probs, *flag, ""])
        else:
            empty = [""] * (len(self.class_names) + self.ood)
            self._csv.writerow([csv_cell(p.source), "", "", *empty, csv_cell(p.error)])


class _StdoutResults:
    """Result lines for stdout; once its reader is gone, either stop (raise) or, while an ``--output``
    file is being written, keep classifying for that file (a closed stdout is not its error)."""

    def __init__(self, *, keep_going: bool) -> None:
        self.keep_going = keep_going
        self.open = True

    def __call__(self, line: str) -> None:
        if not self.open:
            return
        try:
            stdout_line(line)
        except BrokenPipeError:
            if not self.keep_going:
                raise
            discard_stdout()
            self.open = False


def cmd_predict(args: argparse.Namespace) -> int:
    """``imgclf predict``: one line per image on stdout; per-image errors on stderr; exit 4 if any failed.

    Under torchrun or with ``--shard``, :mod:`imgclf.cli.predict_shards` splits the work and merges it.
    """
    from imgclf.loading import load  # .imgclf or .onnx (onnxruntime, no torch)
    from imgclf.world import World

    _check_options(args)
    world = World.from_env()
    if args.tta and (args.shard is not None or world.distributed):
        raise UsageError(
            "--tta does not combine with a sharded run",
            received="--tta with --shard or torchrun",
            expected="one process",
            fix="drop --tta, or predict without sharding",
        )
    if getattr(args, "explain", None):
        from imgclf.cli.explain import check_explain

        check_explain(args.model, args.explain, args.shard is not None or world.distributed)
    if args.shard is not None or world.distributed:
        from imgclf.cli.predict_shards import run_sharded

        return run_sharded(args, world, pick=_pick_images, report=report_predictions)
    threads, why = choose_threads(args.threads)
    clf = load(args.model, threads=threads, **max_pixels_option(args))
    if args.tta:
        if getattr(clf, "model", None) is None:
            raise UsageError(
                "--tta needs the .imgclf model file",
                received=args.model,
                expected="an .imgclf file",
                fix="pass the .imgclf the .onnx was exported from, or drop --tta",
            )
        clf.tta = True
    from imgclf.precision import setup_precision

    setup_precision(clf, args.precision, args.model)
    paths = _pick_images(args)
    with inference_threads(threads, why):
        predictions = clf.iter_predict(paths, top_k=args.top_k, batch_size=args.batch_size, errors="return")
        args.has_ood = isinstance(getattr(clf, "manifest", {}).get("ood"), dict)
        if getattr(args, "explain", None):
            from imgclf.cli.explain import with_overlays

            args.overlays = {}
            predictions = with_overlays(clf, predictions, args.explain, args.overlays)
        return report_predictions(args, clf.class_names, predictions, len(paths))


def _check_options(args: argparse.Namespace) -> None:
    if args.top_k < 1 or args.batch_size < 1:
        raise UsageError(
            "--top-k and --batch-size must be positive",
            received=f"{args.top_k}, {args.batch_size}",
            expected=">= 1",
            fix="use positive numbers",
        )
    if args.output:
        _check_output_format(args.output)  # before any work, not after classifying everything
    for target in (args.output, args.montage):
        if target:
            from imgclf.fileio.writing import check_writable

            check_writable(target)


def report_predictions(
    args: argparse.Namespace, class_names: list[str], predictions: Iterable[Any], count: int
) -> int:
    """Write ``predictions`` (in input order) to stdout, ``--output`` and ``--montage``; 4 if any failed.

    The one place results leave ``predict``, so a sharded run's merge prints and writes exactly what a
    single process would.

    Args:
        args: The parsed ``predict`` flags.
        class_names: The model's class names (CSV columns).
        predictions: Objects with a :class:`imgclf.Prediction`'s attributes.
        count: How many there will be (for the progress bar).

    Raises:
        PartialFailure: If some images could not be classified (after every output is written).
    """
    from imgclf.errors import safe_text

    failed = total = unlike = 0
    tiles: list[Any] = []
    with contextlib.ExitStack() as stack:
        out = None
        if args.output:  # appears atomically once every image is done; an interrupted run leaves none
            from imgclf.fileio.writing import atomic_open

            fh = stack.enter_context(atomic_open(args.output, "w"))
            out = _PredictionsFile(fh, args.output, class_names, ood=bool(getattr(args, "has_ood", False)))
        # Results stream to stdout batch by batch; a bar is shown only when they go to a file or a pipe.
        progress = None
        if count > args.batch_size and sys.stderr.isatty() and not sys.stdout.isatty():
            from imgclf.progress import bar, stderr_console

            progress = bar(stderr_console(), "classifying", count)
            stack.callback(progress.stop)
        show = _StdoutResults(keep_going=out is not None)
        for p in predictions:
            total += 1
            if out is not None:
                out.write(p)
            if progress is not None:
                progress.update(progress.tasks[0].id, advance=1)
            if args.json:
                stdout_line(json_row(p))
            if p.error is not None:
                failed += 1
                print(f"imgclf: error: {safe_text(p.error)}", file=sys.stderr)
                continue
            flagged = bool(getattr(p, "unlike_training_data", False))
            unlike += flagged
            if not args.json:
                extra = "".join(f"\t{safe_text(k)}:{v:.4f}" for k, v in p.top_k[1:])
                mark = "\tunlike_training_data" if flagged else ""
                show(f"{safe_text(p.source)}\t{safe_text(p.label)}\t{p.confidence:.4f}{extra}{mark}")
            if args.montage and len(tiles) < MONTAGE_TILES:
                tiles.append(_tile(p, class_names, getattr(args, "overlays", {}).get(p.source), flagged))
    if getattr(args, "has_ood", False):
        print(
            f"imgclf: {unlike} of {total - failed} image(s) unlike the training data "
            "(beyond the model's out-of-distribution threshold: their labels are guesses)",
            file=sys.stderr,
        )
    if args.montage:
        _montage(args, tiles, total - failed)
    if failed:
        raise PartialFailure(
            f"{failed} of {total} image(s) could not be classified",
            fix="see the errors above; the other images were classified",
        )
    return 0


def _tile(p: Any, class_names: list[str], overlay: str | None = None, unlike: bool = False) -> Any:
    from imgclf.plots import class_colors, montage_tile

    # An image in a class folder (a dataset's testing/<class>/x.png) has a known true class.
    true = os.path.basename(os.path.dirname(os.path.abspath(str(p.source))))
    wrong = true if true in class_names and true != p.label else None
    color = class_colors(len(class_names))[p.index]
    if p.labels is not None:  # multi-label: the label set ("none" when empty); a folder is no truth
        return montage_tile(overlay or p.source, tile_caption(p, unlike), color)
    return montage_tile(overlay or p.source, tile_caption(p, unlike), color, true_if_wrong=wrong)


def tile_caption(p: Any, unlike: bool = False) -> str:
    """A montage tile's text: ``label 97%``, or a multi-label answer's set (``cat|dog``, ``none``), marked
    when the image is unlike the training data."""
    text = str(p.label) if p.labels is not None else f"{p.label} {p.confidence:.0%}"
    return text + (" (unlike training)" if unlike else "")


def _montage(args: argparse.Namespace, tiles: list, classified: int) -> None:
    from imgclf.plots import build_montage, save_png

    sheet = build_montage(tiles)
    save_png(sheet, args.montage)
    more = (
        f"; the first {len(tiles)} of {classified} images, use --sample to pick"
        if classified > len(tiles)
        else ""
    )
    print(f"imgclf: wrote montage {args.montage} ({len(tiles)} tiles{more})", file=sys.stderr)
    if args.show:
        if (
            os.environ.get("DISPLAY")
            or os.environ.get("WAYLAND_DISPLAY")
            or sys.platform in ("darwin", "win32")
        ):
            sheet.show()
        else:
            print("imgclf: --show: no display found; open the montage file instead", file=sys.stderr)
