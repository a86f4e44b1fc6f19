"""Progress bars on stderr, with nothing but rich: light enough for the predict path.

Usage::

    progress = bar(stderr_console(), "classifying", total=1000)
    progress.update(progress.tasks[0].id, advance=64)
    progress.stop()
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def stderr_console() -> Console:
    """A rich console on stderr (stdout carries results only)."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def bar(console: Console, description: str, total: int | None) -> Progress:
    """A started progress bar with count, elapsed and remaining time.

    stdout is never redirected: rich would otherwise route results printed while the bar is live
    into the bar's console, which is stderr.
    """
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        redirect_stdout=False,
    )
    progress.add_task(description, total=total, info="")
    progress.start()
    return progress
