"""The ``imgclf`` command line: a thin layer over the library.

stdout carries results only (reports, predictions, JSON); progress, warnings and errors go to stderr.
Every failure is one line on stderr and a documented exit code (see :mod:`imgclf.errors`); ``--debug``
shows the traceback.

Usage::

    imgclf train --dataset malaria --model malaria.imgclf --plot plot.png
    imgclf predict --model malaria.imgclf --images malaria/testing --sample 16 --montage montage.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from types import ModuleType

from imgclf._version import __version__
from imgclf.errors import EXIT_CODES, ImgclfError, safe_text

__all__ = ["main", "run", "build_parser"]

EPILOG = """exit codes: 0 ok, 1 internal error, 2 usage, 3 invalid model file, 4 invalid image (or some images
failed), 5 I/O or disk, 6 resume refused, 7 invalid dataset, 130 interrupted (Ctrl-C), 143 terminated"""

TRAIN_EPILOG = """checkpoints and resuming:
  After every epoch a checkpoint goes to RUN/checkpoints/ (the newest two and the best epoch's are kept).
  Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and exits 130 / 143; a second Ctrl-C
  aborts at once (files are written atomically: nothing is corrupted). Then, or after a crash or kill -9:
    imgclf train --resume malaria-run              # dataset, model and recipe come from malaria-run/run.json
    imgclf train --resume malaria-run --epochs 40  # train longer (the learning-rate decay stays the run's)
  On the CPU a resumed run ends bitwise identical to an uninterrupted one. A damaged newest checkpoint is
  set aside with a warning and the one before it is used. A changed dataset, class set or recipe is refused
  with a diff (exit 6); --force continues anyway. A run folder is locked by one training at a time (exit 5).
  Free disk space for the model and the checkpoints is checked before the first epoch (exit 5)."""


def _err(text: str) -> None:
    print(f"imgclf: {safe_text(text)}", file=sys.stderr, flush=True)


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    return parts[0], parts[1]


def _kv(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _probe_count(text: str) -> int:
    from imgclf.modelfile import MAX_EXTRA_PROBES

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_EXTRA_PROBES:
        raise argparse.ArgumentTypeError(f"expected 0 to {MAX_EXTRA_PROBES}, got {value}")
    return value


def _add_train(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from imgclf.config import INTERPOLATIONS
    from imgclf.models import registry

    p = sub.add_parser(
        "train",
        parents=[common],
        help="train a classifier on a dataset folder, save one file",
        description="Train on DATASET (ROOT/{training,validation,testing}/<class>/ or ROOT/<class>/)"
        " and save one model file. Defaults reproduce the DL4CV malaria recipe: seed_resnet, 25"
        " epochs, batch 32, SGD lr 0.1 momentum 0.9 with Keras time decay lr/epochs, 64x64,"
        " rescale 1/255, rotation 20, zoom/shift 0.05, shear 0.05 degrees, horizontal flip.",
        epilog=TRAIN_EPILOG + "\n\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", "-d", help="dataset folder (required unless --resume)")
    p.add_argument("--model", "-m", help="output model file, e.g. malaria.imgclf (required unless --resume)")
    p.add_argument("--plot", "-p", help="training-curve plot (default RUN_DIR/plot.png)")
    p.add_argument("--config", help="JSON file with TrainConfig settings; flags override it")
    g = p.add_argument_group("recipe")
    g.add_argument("--arch", choices=registry.names(), help="architecture (default seed_resnet)")
    g.add_argument(
        "--arch-arg",
        action="append",
        type=_kv,
        default=[],
        metavar="KEY=VALUE",
        help="architecture argument, e.g. --arch-arg stem=tiny_imagenet (repeatable)",
    )
    g.add_argument("--epochs", type=int, help="epochs (default 25)")
    g.add_argument("--batch-size", type=int, help="batch size (default 32)")
    g.add_argument("--lr", type=float, help="initial learning rate (default 0.1)")
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    g.add_argument("--decay", type=float, help="Keras time decay (default lr/epochs)")
    g.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing (default 0)")
    g.add_argument("--seed", type=int, help="random seed (default 42)")
    g.add_argument("--size", type=_size, help="input size N or HxW (default 64)")
    g.add_argument(
        "--interpolation",
        choices=INTERPOLATIONS,
        help="resize filter (default bilinear; nearest = Keras flow_from_directory)",
    )
    g.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    g.add_argument("--rotation", type=float, help="max rotation in degrees (default 20)")
    g.add_argument("--zoom", type=float, help="zoom range (default 0.05)")
    g.add_argument("--shift", type=float, help="width and height shift fraction (default 0.05)")
    g.add_argument("--shear", type=float, help="shear in degrees, Keras' meaning (default 0.05)")
    g.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    _add_recipe_flags(g)
    g.add_argument(
        "--val-split", type=float, help="validation share when there is no validation folder (0.1)"
    )
    g.add_argument("--test-split", type=float, help="testing share when there is no testing folder (0.2)")
    r = p.add_argument_group("run")
    r.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    r.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        help="auto: bf16 autocast where the hardware supports it natively, else float32",
    )
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile")
    r.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory layout (default on)",
    )
    r.add_argument("--eval-batch-size", type=int, help="batch size for evaluation (default 256)")
    r.add_argument("--skip-bad", action="store_true", help="train without unreadable images (listed)")
    _add_cache_flags(r)
    r.add_argument(
        "--probes-from",
        type=_probe_count,
        metavar="N",
        help="also store N validation images as self-check probes (default: synthetic only)",
    )
    _add_checkpoint_flags(p)


def _add_recipe_flags(g: argparse._ActionsContainer) -> None:
    from imgclf.config import RECIPES, SCHEDULES

    g.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        help="preset: seed (the tutorial's, default) or stable (cosine schedule with warm-up, Nesterov, "
        "label smoothing 0.1, weight averaging; converges reliably on small real datasets); "
        "the flags above and below override single values",
    )
    g.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (seed: time_decay)")
    g.add_argument("--warmup", type=float, metavar="EPOCHS", help="cosine warm-up in epochs (stable: 1)")
    g.add_argument(
        "--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum"
    )
    g.add_argument("--clip-norm", type=float, help="clip the gradients' global L2 norm (default off)")
    g.add_argument(
        "--ema", type=float, metavar="DECAY", help="weight-average decay per step, 0 = off (stable: 0.998)"
    )


def _add_checkpoint_flags(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("checkpoints, resuming, best weights, determinism")
    c.add_argument(
        "--run-dir",
        metavar="DIR",
        help="run folder: lock, run.json, checkpoints/, history, reports (default MODEL-run/ beside MODEL)",
    )
    c.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its newest intact checkpoint; dataset, model and recipe come "
        "from DIR/run.json (flags given must match the recipe, except --epochs and --device/--precision/"
        "--eval-batch-size/--compile/--channels-last/--deterministic)",
    )
    c.add_argument(
        "--force",
        action="store_true",
        help="with --resume: continue although the dataset or recipe changed (warns; no exact resume); "
        "without: start over in a run folder holding an unfinished run (deletes its checkpoints)",
    )
    c.add_argument(
        "--keep",
        choices=("last", "best"),
        help="weights in the model file: best epoch by --monitor (default) or last epoch (the recipe's)",
    )
    c.add_argument(
        "--monitor",
        choices=("val_loss", "val_accuracy"),
        help="metric for --keep best and --patience (default val_loss)",
    )
    c.add_argument("--patience", type=int, metavar="N", help="stop after N epochs without improvement")
    c.add_argument(
        "--deterministic",
        action="store_true",
        help="on a GPU, use PyTorch's deterministic algorithms (an op without one is an error naming it); "
        "CPU runs are deterministic anyway",
    )


def _add_cache_flags(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="decode-once cache of preprocessed images (default $IMGCLF_CACHE_DIR or ~/.cache/imgclf)",
    )
    group.add_argument("--no-cache", action="store_true", help="decode into memory only; no cache files")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    parser = argparse.ArgumentParser(
        prog="imgclf",
        parents=[common],
        epilog=EPILOG,
        description="Train image classifiers from a folder of images, save one safe "
        "self-describing file, classify anywhere exactly as evaluation did.",
    )
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(sub, common)

    p = sub.add_parser(
        "predict",
        parents=[common],
        help="classify images with a model file",
        epilog=EPILOG,
        description="Classify image files and folders (recursive). Labels and preprocessing come "
        "from the model file. stdout: path, label, confidence per image (tab-separated).",
    )
    p.add_argument("--model", "-m", required=True, help="model file")
    p.add_argument("--images", "-i", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--sample", type=int, metavar="N", help="classify N images picked at random (seeded)")
    p.add_argument("--seed", type=int, default=42, help="seed for --sample (default 42)")
    p.add_argument("--montage", metavar="PNG", help="write a labelled montage (4 tiles of 128x128 per row)")
    p.add_argument("--show", action="store_true", help="open the montage when a display exists")
    p.add_argument("--output", "-o", metavar="FILE", help="write predictions to .csv or .jsonl")
    p.add_argument("--top-k", type=int, default=1, help="list the K most probable classes (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")

    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="evaluate a model file on a dataset",
        epilog=EPILOG,
        description="Print the classification report of MODEL on a dataset's testing split (or "
        "on every image of a flat folder of class folders).",
    )
    p.add_argument("--model", "-m", required=True, help="model file")
    p.add_argument("--dataset", "-d", required=True, help="dataset folder")
    p.add_argument("--split", default="testing", choices=("training", "validation", "testing"))
    p.add_argument(
        "--output", "-o", metavar="JSON", help="also write report, confusion matrix, misclassified"
    )
    p.add_argument("--confusion-plot", metavar="PNG", help="write a confusion-matrix plot")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed)")
    _add_cache_flags(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser(
        "inspect",
        parents=[common],
        help="show what a model file holds",
        epilog=EPILOG,
        description="Print a model file's manifest without building the model.",
    )
    p.add_argument("model", help="model file")
    p.add_argument("--json", action="store_true", help="machine-readable JSON")

    p = sub.add_parser(
        "verify",
        parents=[common],
        help="re-run a model file's self-check probes",
        epilog=EPILOG,
        description="Check digests, build the model and re-run the probe images stored at save "
        "time; report any drift in preprocessing or outputs. Exit 0 if all checks pass, else 3.",
    )
    p.add_argument("model", help="model file")

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the whole recipe on built-in demo data",
        epilog=EPILOG,
        description="Generate demo data, train the seed recipe, save, then in a second process "
        "load the file, write a labelled montage and print the classification report.",
    )
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--epochs", type=int, default=25, help="epochs (default 25)")
    p.add_argument("--scale", type=float, default=1.0, help="demo dataset size multiplier (default 1)")
    p.add_argument("--seed", type=int, default=42, help="seed (default 42)")

    p = sub.add_parser(
        "demo-data",
        parents=[common],
        help="write the synthetic demo dataset",
        epilog=EPILOG,
        description="Write OUT/{training,validation,testing}/{Parasitized,Uninfected}/ with "
        "synthetic cell images (175/185, 18/22, 50/50 at scale 1).",
    )
    p.add_argument("out", help="output folder (new or empty)")
    p.add_argument("--scale", type=float, default=1.0, help="size multiplier (default 1)")
    p.add_argument("--seed", type=int, default=42, help="seed (default 42)")
    return parser


# Command -> its module in imgclf.cli. Only that module is imported, so `imgclf predict` never
# loads the train command's module (nor anything it imports).
COMMAND_MODULES = {
    "train": "train",
    "predict": "predict",
    "evaluate": "evaluate",
    "inspect": "model",
    "verify": "model",
    "demo": "demo",
    "demo-data": "demo",
}


def _command_module(name: str) -> ModuleType:
    # Static imports only: the package's safety test forbids importing modules by a computed name.
    if name == "train":
        from imgclf.cli import train as module
    elif name == "predict":
        from imgclf.cli import predict as module
    elif name == "evaluate":
        from imgclf.cli import evaluate as module
    elif name == "model":
        from imgclf.cli import model as module
    elif name == "demo":
        from imgclf.cli import demo as module
    else:  # pragma: no cover - COMMAND_MODULES names only the modules above
        raise ValueError(f"no command module {name!r}")
    return module


def _run(args: argparse.Namespace) -> int:
    module = _command_module(COMMAND_MODULES[args.command])
    handler = getattr(module, "cmd_" + args.command.replace("-", "_"))
    return handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imgclf`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = debug or getattr(args, "debug", False)
    if args.command in ("train", "predict", "evaluate", "verify", "demo"):
        from imgclf.cli.allocator import tune_allocator

        tune_allocator()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings API
        _err(f"warning: {message}")

    previous_showwarning = warnings.showwarning
    warnings.showwarning = show
    try:
        return _run(args)
    except ImgclfError as exc:
        if debug:
            traceback.print_exc()
        _err(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        _err("interrupted")
        return EXIT_CODES["sigint"]
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback only with --debug
        if debug:
            traceback.print_exc()
        _err(
            f"internal error: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback; please report it)"
        )
        return EXIT_CODES["internal"]
    finally:
        warnings.showwarning = previous_showwarning  # main() may be called in-process: leave no global change


def run() -> None:
    """Entry point of the ``imgclf`` console script and ``python -m imgclf``: :func:`main`, then exit.

    The process ends with ``os._exit`` once stdout and stderr are flushed: with torch loaded, Python's
    interpreter teardown takes 0.3-1 s (measured) and does nothing a finished command needs — every
    file it wrote is closed and fsynced, worker processes are joined, locks are released.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):  # reader gone, or closed: nothing to deliver
            stream.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
