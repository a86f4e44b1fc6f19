"""``imgclf predict``: classify images with a model file; optional predictions file and montage.

Imports no training or plotting code (``tests/test_reports.py`` checks it).

Usage::

    from imgclf.cli import build_parser
    cmd_predict(build_parser().parse_args(["predict", "--model", "m.imgclf", "--images", "cells/"]))
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import sys
from typing import Any

from imgclf.commands.output import stdout_line
from imgclf.errors import PartialFailure, UsageError

__all__ = ["cmd_predict"]


def _pick_images(args: argparse.Namespace) -> list[str]:
    from imgclf.data import list_images

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


def _write_predictions(path: str, preds: list, class_names: list[str]) -> None:
    from imgclf.files import atomic_write_text

    if path.lower().endswith(".jsonl"):
        lines = []
        for p in preds:
            row: dict[str, Any] = {"path": p.source}
            if p.error is None:
                row.update(label=p.label, confidence=p.confidence, probabilities=p.probabilities)
                if len(p.top_k) > 1:
                    row["top_k"] = [{"label": k, "probability": v} for k, v in p.top_k]
            else:
                row["error"] = p.error
            lines.append(json.dumps(row, ensure_ascii=False))
        atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
        return
    _check_output_format(path)
    fixed = {"path", "label", "confidence", "error"}
    columns = [c if c not in fixed else f"prob:{c}" for c in class_names]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "confidence", *columns, "error"])
    for p in preds:
        if p.error is None:
            writer.writerow(
                [p.source, p.label, repr(p.confidence), *[repr(p.probabilities[c]) for c in class_names], ""]
            )
        else:
            writer.writerow([p.source, "", "", *[""] * len(class_names), p.error])
    atomic_write_text(path, buf.getvalue())


def cmd_predict(args: argparse.Namespace) -> int:
    """``imgclf predict``: one line per image on stdout; per-image errors on stderr; exit 4 if any failed."""
    from imgclf.bundle import load
    from imgclf.errors import safe_text

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
            from imgclf.files import check_writable

            check_writable(target)
    clf = load(args.model)
    paths = _pick_images(args)
    preds = clf.predict(paths, top_k=args.top_k, batch_size=args.batch_size, errors="return")
    failed = 0
    for p in preds:
        if p.error is not None:
            failed += 1
            print(f"imgclf: error: {safe_text(p.error)}", file=sys.stderr)
            continue
        extra = "".join(f"\t{safe_text(k)}:{v:.4f}" for k, v in p.top_k[1:])
        stdout_line(f"{safe_text(p.source)}\t{safe_text(p.label)}\t{p.confidence:.4f}{extra}")
    if args.output:
        _write_predictions(args.output, preds, clf.class_names)
    if args.montage:
        _montage(args, preds, clf.class_names)
    if failed:
        raise PartialFailure(
            f"{failed} of {len(preds)} image(s) could not be classified",
            fix="see the errors above; the other images were classified",
        )
    return 0


def _montage(args: argparse.Namespace, preds: list, class_names: list[str]) -> None:
    import io as _io

    from imgclf.files import atomic_write_bytes
    from imgclf.reports import build_montage, class_colors, montage_tile

    colors = class_colors(len(class_names))
    tiles = [
        montage_tile(p.source, f"{p.label} {p.confidence:.0%}", colors[p.index])
        for p in preds
        if p.error is None
    ]
    sheet = build_montage(tiles)
    buf = _io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(args.montage, buf.getvalue())
    print(f"imgclf: wrote montage {args.montage} ({len(tiles)} tiles)", file=sys.stderr)
    if args.show:
        if (
            os.environ.get("DISPLAY")
            or os.environ.get("WAYLAND_DISPLAY")
            or sys.platform in ("darwin", "win32")
        ):
            sheet.show()
        else:
            print("imgclf: --show: no display found; open the montage file instead", file=sys.stderr)
