"""What every command writes to stdout: result lines and the classification report.

Usage::

    stdout_line(report_text(evaluation.report))
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any


def stdout_line(text: str = "") -> None:
    """Write one result line to stdout and flush it (progress and errors go to stderr).

    Raises:
        BrokenPipeError: If the reader is gone (``| head``) or stdout is closed (``>&-``): not an error,
            the CLI exits quietly (or, with an ``--output`` file, keeps writing that).
        StorageError: If writing fails otherwise (``> /dev/full``: disk full), exit code 5.
    """
    if sys.stdout is None:
        raise BrokenPipeError(errno.EPIPE, "stdout is closed")
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: the stream object was closed
        raise stdout_error(exc) from None


def stdout_error(exc: Exception) -> Exception:
    """The one-line error for results that cannot be written to stdout."""
    from imgclf.errors import StorageError

    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return StorageError(
        "cannot write results to stdout",
        received=f"<stdout> ({reason})",
        expected="a writable stdout",
        fix="check where stdout goes (a full disk?), or use --output where the command has it",
    )


def discard_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so later writes and the final flush cannot fail."""
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(fd, 1)
    finally:
        os.close(fd)


def report_text(report: dict[str, Any]) -> str:
    """The classification report for stdout, control characters in class names escaped line by line."""
    from imgclf.errors import safe_text
    from imgclf.reports import format_report

    return "\n".join(safe_text(line) for line in format_report(report).rstrip("\n").split("\n"))
