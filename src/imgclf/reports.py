"""Reports for people and programs: the text classification report and the per-epoch history files.

Pictures (training plot, confusion matrix, montage) are :mod:`imgclf.plots`; the metrics themselves are
:mod:`imgclf.evaluation`.

Usage::

    print(format_report(evaluation.report))                 # scikit-learn's text layout
    write_history(history, "history.json", "history.csv", timings)
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from imgclf.errors import safe_text
from imgclf.fileio.writing import atomic_write_text


def format_report(report: dict[str, Any], digits: int = 4) -> str:
    """Render a report as text, character for character scikit-learn's layout.

    Control characters in class names (a newline, an ANSI escape) are escaped, so each class stays
    one row of the table on a terminal and in ``report.txt``.
    """
    rows = [k for k in report if k not in ("accuracy", "macro avg", "weighted avg")]
    names = {r: safe_text(r) for r in rows}
    width = max([len(n) for n in names.values()] + [len("weighted avg"), digits])
    keys = ("precision", "recall", "f1-score")
    head = f"{'':>{width}s} " + "".join(f" {h:>9}" for h in (*keys, "support"))
    lines = [head, ""]

    def row(name: str, r: dict[str, Any]) -> str:
        return f"{name:>{width}s} " + "".join(f" {r[k]:>9.{digits}f}" for k in keys) + f" {r['support']:>9}"

    lines += [row(names[name], report[name]) for name in rows]
    lines.append("")
    total = report["macro avg"]["support"]
    lines.append(
        f"{'accuracy':>{width}s} " + f" {'':>9}" * 2 + f" {report['accuracy']:>9.{digits}f}" + f" {total:>9}"
    )
    lines += [row(avg, report[avg]) for avg in ("macro avg", "weighted avg")]
    return "\n".join(lines) + "\n"


def write_history(
    history: Sequence[dict[str, float]],
    json_path: str,
    csv_path: str,
    timings: Sequence[dict[str, float]] = (),
) -> None:
    """Write per-epoch history as JSON (a list of records) and CSV (one row per epoch).

    The JSON holds only the deterministic history (equal between a resumed and an uninterrupted run);
    the CSV adds each epoch's wall-clock ``seconds`` from ``timings``, for people.
    """
    atomic_write_text(json_path, json.dumps(list(history), indent=2) + "\n")
    keys = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    seconds = {t["epoch"]: t["seconds"] for t in timings}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "seconds": seconds.get(row["epoch"], "")} for row in history)
    atomic_write_text(csv_path, buf.getvalue())
