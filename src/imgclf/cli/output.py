"""What every command writes to stdout: result lines and the classification report.

Usage::

    stdout_line(report_text(evaluation.report))
"""

from __future__ import annotations

import sys
from typing import Any


def stdout_line(text: str = "") -> None:
    """Write one result line to stdout and flush it (progress and errors go to stderr)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def report_text(report: dict[str, Any]) -> str:
    """The classification report for stdout, control characters in class names escaped line by line."""
    from imgclf.errors import safe_text
    from imgclf.reports import format_report

    return "\n".join(safe_text(line) for line in format_report(report).rstrip("\n").split("\n"))
