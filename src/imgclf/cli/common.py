"""What every command's parser shares: the one-line error parser, argument types, shared flag groups.

Usage::

    parser = Parser(prog="imgclf")
    parser.add_argument("--size", type=image_size)
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import sys
from collections.abc import Iterator
from typing import NoReturn

EPILOG = """exit codes: 0 ok, 1 internal error, 2 usage, 3 invalid model file, 4 invalid image (or some images
failed), 5 I/O or disk, 6 resume refused, 7 invalid dataset, 8 export failed, 9 out of memory,
10 distributed run failed (a rank did not join or answer), 130 interrupted (Ctrl-C), 143 terminated"""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line with a hint, and that never guesses abbreviations.

    argparse prints the whole usage block (20 lines for ``train``) before a usage error and silently
    accepts ``--mod`` for ``--model``; the README promises one line, so here: ``imgclf train: error:
    unrecognized arguments: --datset (did you mean --dataset?); see imgclf train --help``.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._seen: list[str] = []

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's signature
        """Remember the words this parser was given, so a usage error can point at a mistyped flag."""
        self._seen = [str(a) for a in (sys.argv[1:] if args is None else args)]
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """Print one line to stderr and exit 2."""
        self.exit(2, f"{self.prog}: error: {message}{self.suggest(message)}; see {self.prog} --help\n")

    def suggest(self, message: str) -> str:
        """ " (did you mean --x?)" for the first unknown flag in an argparse message, if one is close.

        argparse reports a missing required flag before an unknown one (``--mdoel x`` gives "the
        following arguments are required: --model"), so then the words given are searched instead.
        """
        known = [s for action in self._actions for s in action.option_strings]
        if "unrecognized arguments:" in message:
            words = message.split("unrecognized arguments:", 1)[1].split()
            prefix = ""
        elif "arguments are required" in message:
            words = [w for w in self._seen if w.startswith("-") and w.split("=", 1)[0] not in known]
            prefix = "unrecognized {word}: "
        else:
            return ""
        for word in words:
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                return f" ({prefix.format(word=word)}did you mean {close[0]}?)"
        return ""


def image_size(text: str) -> tuple[int, int]:
    """``N`` or ``HxW`` → ``(height, width)``."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    return parts[0], parts[1]


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (``widths=[8,16]``), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
    except RecursionError:
        raise argparse.ArgumentTypeError(f"{key}: JSON value nested too deeply") from None


def add_max_pixels_flag(group: argparse._ActionsContainer) -> None:
    """``--max-pixels N``: refuse images with more pixels (bounds decoding memory; can only lower the cap)."""
    group.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="refuse images with more than N pixels before decoding them (default and upper bound: "
        "imgclf's built-in cap; decoding costs about 10 bytes per pixel)",
    )


def max_pixels_option(args: argparse.Namespace) -> dict[str, int]:
    """``{"max_pixels": N}`` when ``--max-pixels`` was given, else ``{}`` (the library's default)."""
    return {} if getattr(args, "max_pixels", None) is None else {"max_pixels": args.max_pixels}


def add_cache_flags(group: argparse._ActionsContainer) -> None:
    """``--cache-dir`` and ``--no-cache`` (train and evaluate decode through the cache)."""
    group.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="decode-once cache of preprocessed images (default $IMGCLF_CACHE_DIR or ~/.cache/imgclf)",
    )
    group.add_argument("--no-cache", action="store_true", help="decode into memory only; no cache files")


def err(text: str) -> None:
    """One line on stderr, control characters escaped; never on stdout, even when stderr is closed."""
    from imgclf.errors import safe_text

    if sys.stderr is None:  # print(file=None) would write to stdout
        return
    try:
        print(f"imgclf: {safe_text(text)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr unwritable (2>/dev/full, closed): the exit code still tells


THREADS_ENV = "IMGCLF_THREADS"
"""Environment variable read when ``--threads`` is not given (a number, or ``auto``)."""


def threads_value(text: str) -> int | str:
    """``--threads``: a positive number, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}")
    return value


def add_threads_flag(group: argparse._ActionsContainer) -> None:
    """``--threads N|auto``: intra-op threads of the inference runtime (torch or onnxruntime)."""
    group.add_argument(
        "--threads",
        type=threads_value,
        metavar="N|auto",
        help=f"threads for the model's arithmetic (default ${THREADS_ENV}, else OMP_NUM_THREADS, else "
        "auto: the usable cores less the other work running on them, at least 1; see docs/performance.md)",
    )


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def busy_cores() -> float:
    """How many cores other work keeps busy now: the smaller of the 1-minute load average and the count
    of runnable tasks besides this one.

    The load average alone would count this command's own previous runs (a loop of ``imgclf predict``
    would throttle itself); the instantaneous count alone is a noisy sample. 0 where neither is known.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            running = int(fh.read().split()[3].split("/")[0]) - 1  # "R/T": R runnable, this one included
    except (OSError, ValueError, IndexError):
        return load
    return max(0.0, min(load, float(running)))


def choose_threads(requested: int | str | None = None) -> tuple[int, str]:
    """``(threads, why)``: the inference thread count and where it came from, for the run's settings line.

    Order: ``requested`` (``--threads``), then ``$IMGCLF_THREADS``, then ``OMP_NUM_THREADS``, then auto.
    Auto takes the usable cores less the cores other work keeps busy (rounded), at least 1: on an idle
    machine every core; on a busy one fewer threads, because torch's OpenMP threads spin-wait for each
    other and an oversubscribed core makes every thread wait for the slowest (measured in
    docs/performance.md).

    Raises:
        UsageError: If ``$IMGCLF_THREADS`` is neither a positive number nor ``auto``.
    """
    source = "--threads"
    if requested is None and os.environ.get(THREADS_ENV, "").strip():
        source = f"${THREADS_ENV}"
        try:
            requested = threads_value(os.environ[THREADS_ENV])
        except argparse.ArgumentTypeError as exc:
            from imgclf.errors import UsageError

            raise UsageError(
                f"${THREADS_ENV} is not a thread count", received=os.environ[THREADS_ENV],
                expected="a positive number or 'auto'", fix=f"set {THREADS_ENV}=auto or unset it",
            ) from exc  # fmt: skip
    if requested is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        n = int(os.environ["OMP_NUM_THREADS"])
        if n >= 1:
            return n, "OMP_NUM_THREADS"
    if isinstance(requested, int):
        return requested, source
    cores, busy = usable_cores(), busy_cores()
    threads = max(1, min(cores, int(cores - busy + 0.5)))
    return threads, f"auto: {cores} usable cores, {busy:.1f} busy with other work"


@contextlib.contextmanager
def inference_threads(threads: int, why: str) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (when torch is loaded), then restore them;
    on a terminal, say the setting on stderr (pipes and logs stay as they were: results and errors).

    An .onnx gets its threads at load time (``load(..., threads=)``); this sets torch's, which is global.
    """
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None and before != threads:
        torch.set_num_threads(threads)
    if sys.stderr is not None and sys.stderr.isatty():
        err(f"inference threads: {threads} ({why}; --threads N to choose)")
    try:
        yield
    finally:
        if torch is not None and before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)
