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


def bar(console: Console, description: str, total: int | None) -> Progress | LineProgress:
    """A started progress bar with count, elapsed and remaining time.

    On a terminal: a rich bar. Elsewhere (a log file, CI, ``nohup``), where a bar's redraws would pile
    up in the file: a :class:`LineProgress`, plain lines every tenth of the work or every
    ``LINE_EVERY_S`` seconds. Both answer ``tasks[0].id``, ``update(...)`` and ``stop()``.

    stdout is never redirected: rich would otherwise route results printed while the bar is live
    into the bar's console, which is stderr.
    """
    if not console.is_terminal:
        return LineProgress(console, description, total)
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


LINE_EVERY_S = 30.0
"""Longest quiet time of a :class:`LineProgress` between lines while work advances."""
LINE_STEPS = 10
"""A :class:`LineProgress` writes a line each time another 1/LINE_STEPS of the work is done."""


class LineProgress:
    """Progress as plain lines, for a stderr that is not a terminal: ``epoch 1/25: 120/1200 (10%) ...``.

    A line is written each time another tenth of the work is done, or when ``LINE_EVERY_S`` seconds
    passed since the last line and the work advanced; ``stop()`` writes the last state if no line
    showed it. No cursor movement, no colours, no bar glyphs: a log reads as a log.

    Args:
        console: Where the lines go (printed without markup or highlighting).
        description: What is counted ("epoch   1/25", "decoding training").
        total: Units of work, or ``None`` when unknown (then only the time rule applies).
        clock: Seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        console: Console,
        description: str,
        total: int | None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time
        from types import SimpleNamespace

        self.console = console
        self.description = description.strip()
        self.total = total
        self.clock = clock or time.monotonic
        self.tasks = [SimpleNamespace(id=0)]
        self.completed = 0
        self.info = ""
        self.started = self.last_time = self.clock()
        self.shown = 0  # the completed count the last line showed (none yet: nothing done)
        self.stopped = False

    def update(
        self, task_id: object = 0, *, advance: float | None = None, completed: float | None = None,
        info: str | None = None, **_: object,
    ) -> None:  # fmt: skip
        """Advance (``advance``) or set (``completed``) the count; maybe write a line."""
        if completed is not None:
            self.completed = int(completed)
        if advance is not None:
            self.completed += int(advance)
        if info is not None:
            self.info = info
        now = self.clock()
        if self.completed == self.shown:
            return
        if self._step(self.completed) > self._step(self.shown) or now - self.last_time >= LINE_EVERY_S:
            self._line(now)

    def stop(self) -> None:
        """Write the final state unless the last line showed it."""
        if not self.stopped and self.completed != self.shown:
            self._line(self.clock())
        self.stopped = True

    def _step(self, count: int) -> int:
        """Which tenth of the work ``count`` reached (0 when the total is unknown)."""
        if not self.total:
            return 0
        return max(0, min(count, self.total)) * LINE_STEPS // self.total

    def _line(self, now: float) -> None:
        done = f"{self.completed}/{self.total}" if self.total else f"{self.completed}"
        share = f" ({100 * self.completed // self.total}%)" if self.total else ""
        info = f", {self.info}" if self.info else ""
        elapsed = int(now - self.started)
        text = f"{self.description}: {done}{share}{info}, {elapsed // 60}:{elapsed % 60:02d} elapsed"
        self.console.print(text, markup=False, highlight=False)
        self.shown, self.last_time = self.completed, now


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
