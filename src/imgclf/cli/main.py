"""The ``imgclf`` command line: builds the parser from the command modules and runs one command.

stdout carries results only (reports, predictions, JSON); progress, warnings and errors go to stderr.
Every failure is one line on stderr and a documented exit code (see :mod:`imgclf.errors`); ``--debug``
shows the traceback. Each command family lives in its own module of :mod:`imgclf.cli`, which owns its
parser (``add_parser``) and its handler (``set_defaults(func=...)``); their top levels import nothing
heavy, so ``--help``, ``--version`` and usage errors answer without importing torch.

Usage::

    imgclf train --dataset malaria --model malaria.imgclf --plot plot.png
    imgclf predict --model malaria.imgclf --images malaria/testing --sample 16 --montage montage.png
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence

from imgclf._version import __version__
from imgclf.cli import (
    cache,
    calibrate,
    demo,
    evaluate,
    export,
    import_keras,
    model,
    predict,
    report,
    serve,
    train,
)
from imgclf.cli.common import EPILOG, Parser, err
from imgclf.cli.output import discard_stdout, stdout_error
from imgclf.errors import EXIT_CODES, ImgclfError, Terminated, limit_error, missing_package_error
from imgclf.world import note_alike_error, reports_alike_errors, wait_for_quiet_peers

# Each module registers its commands with add_parser(sub, common); the order is --help's order.
COMMAND_MODULES = (
    train, predict, evaluate, report, calibrate, model, export, serve, import_keras, demo, cache,
)  # fmt: skip
# Commands that run models: the allocator tuning pays off there (see imgclf.cli.allocator).
HEAVY_COMMANDS = ("train", "predict", "evaluate", "report", "calibrate", "verify", "demo", "serve", "export")


def build_parser() -> Parser:
    """The argument parser for all commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    parser = Parser(
        prog="imgclf",
        parents=[common],
        epilog=EPILOG,
        description="Train image classifiers from a folder of images, save one safe "
        "self-describing file, classify anywhere exactly as evaluation did.",
    )
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.add_parser(sub, common)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; an unknown flag is reported by the command's own parser, with a suggestion."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imgclf`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = parse(argv)
    args.argv = argv  # the command line as given: `imgclf train --nproc N` starts workers with it
    debug = debug or getattr(args, "debug", False)
    if args.command in HEAVY_COMMANDS:
        from imgclf.cli.allocator import tune_allocator

        tune_allocator()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings API
        err(f"warning: {message}")

    previous_showwarning = warnings.showwarning
    warnings.showwarning = show
    previous_sigterm = _catch_sigterm()
    try:
        return args.func(args)
    except ImgclfError as exc:
        if getattr(exc, "alike_on_every_rank", False):
            if not reports_alike_errors():
                note_alike_error()
                return 0  # rank 0 reports it for the whole launch; torchrun's summary then names rank 0 only
            wait_for_quiet_peers()
        if debug:
            traceback.print_exc()
        err(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): cleanups have run on the way out
        if debug:
            traceback.print_exc()
        if isinstance(exc, Terminated):
            err("terminated (SIGTERM)")
            return EXIT_CODES["sigterm"]
        err("interrupted")
        return EXIT_CODES["sigint"]
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`): not an error worth a traceback.
        discard_stdout()
        return 0
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback only with --debug
        if debug:
            traceback.print_exc()
        known = limit_error(exc) or missing_package_error(exc, f"imgclf {args.command}")
        if known is not None:  # a machine limit or an optional package not installed, not a bug
            err(f"error: {known}")
            return known.exit_code
        err(
            f"internal error: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback; please report it)"
        )
        return EXIT_CODES["internal"]
    finally:
        warnings.showwarning = previous_showwarning  # main() may be called in-process: leave no global change
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _catch_sigterm() -> object:
    """Make SIGTERM raise :class:`Terminated` (as Ctrl-C raises KeyboardInterrupt); return the old handler.

    By default SIGTERM kills the process on the spot, leaving locks, cache and output temporaries behind.
    Python installs handlers only in the main thread; elsewhere this does nothing (returns None).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def run() -> None:
    """Entry point of the ``imgclf`` console script and ``python -m imgclf``: :func:`main`, then exit.

    The process ends with ``os._exit`` once stdout and stderr are flushed: with torch loaded, Python's
    interpreter teardown takes 0.3-1 s (measured) and does nothing a finished command needs — every
    file it wrote is closed and fsynced, worker processes are joined, locks are released.
    """
    if sys.stderr is None:  # started with stderr closed (2>&-): messages go nowhere, never to stdout
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    code = main()
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # reader gone, or closed: nothing to deliver
        pass
    except OSError as exc:  # e.g. > /dev/full: the results were lost, so the command failed
        err(f"error: {stdout_error(exc)}")
        code = code or stdout_error(exc).exit_code
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
