"""How imgclf tells people what is happening: one-line messages (``Log``) and progress bars on stderr.

The library never prints and does not use :mod:`logging`: functions that have something to say
(warnings about skipped files, notes about a resumed run) take a ``log`` callable, ``quiet`` by default;
the CLI passes one that writes the line to stderr, so stdout carries results only. Progress bars need
nothing but rich, imported when a bar is made: light enough for the predict path.

Usage::

    def scan(folder: str, log: Log = quiet) -> None:   # a function with something to say takes a log
        log("warning: skipped a.png: not an image")
    progress = bar(stderr_console(), "classifying", total=1000)
    progress.update(progress.tasks[0].id, advance=64)
    progress.stop()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

Log = Callable[[str], None]
"""Receives one human-readable line (``"warning: ..."``, ``"note: ..."``), without a newline."""


def quiet(message: str) -> None:
    """The default ``Log``: drop the message."""


def stderr_console() -> Console:
    """A rich console on stderr (stdout carries results only)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def bar(console: Console, description: str, total: int | None) -> Progress:
    """A started progress bar with count, elapsed and remaining time.

    stdout is never redirected: rich would otherwise route results printed while the bar is live
    into the bar's console, which is stderr.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

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


def bar_factory(console: Console) -> Callable[[str, int], Callable[[int], None]]:
    """``factory(description, total)`` → a callback ``advance(n)`` driving a new bar, stopped when full."""

    def factory(description: str, total: int) -> Callable[[int], None]:
        progress = bar(console, description, total)
        task = progress.tasks[0].id
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            progress.update(task, advance=n)
            if done[0] >= total:
                progress.stop()

        return advance

    return factory
