"""``imgclf demo`` and ``imgclf demo-data``: the whole recipe on synthetic data, or just the data.

The demo calls the library (:func:`imgclf.cli.train.train_and_report` → :func:`imgclf.train`) with the
recipe's :class:`imgclf.TrainConfig`; it never builds an argument list to re-parse.

Usage::

    from imgclf.cli.main import main
    main(["demo", "--output", "demo-output", "--epochs", "2"])
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from imgclf.cli.common import EPILOG
from imgclf.cli.output import stdout_line
from imgclf.errors import ImgclfError


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf demo`` and ``imgclf demo-data``."""
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the whole recipe on built-in demo data",
        epilog=EPILOG,
        description="Generate demo data, train the seed recipe, save, then in a second process "
        "load the file, write a labelled montage and print the classification report.",
    )
    p.set_defaults(func=cmd_demo)
    p.add_argument(
        "--output",
        "-o",
        "--out",
        dest="out",
        default="demo-output",
        help="output folder (default demo-output; --out is the old spelling)",
    )
    p.add_argument("--epochs", type=int, help="epochs (default: the recipe's, see imgclf train --help)")
    p.add_argument("--scale", type=float, default=1.0, help="demo dataset size multiplier (default 1)")
    p.add_argument("--seed", type=int, help="seed (default: the recipe's)")

    p = sub.add_parser(
        "demo-data",
        parents=[common],
        help="write the synthetic demo dataset",
        epilog=EPILOG,
        description="Write OUT/{training,validation,testing}/{Parasitized,Uninfected}/ with "
        "synthetic cell images (175/185, 18/22, 50/50 at scale 1).",
    )
    p.set_defaults(func=cmd_demo_data)
    p.add_argument("out_positional", nargs="?", metavar="OUT", help="output folder (same as --output)")
    p.add_argument("--output", "-o", dest="out", metavar="DIR", help="output folder (new or empty)")
    p.add_argument("--scale", type=float, default=1.0, help="size multiplier (default 1)")
    p.add_argument("--seed", type=int, default=42, help="seed (default 42)")


def cmd_demo_data(args: argparse.Namespace) -> int:
    """``imgclf demo-data``: write the synthetic dataset and print its counts."""
    from imgclf.data.synthetic import write_demo_dataset
    from imgclf.errors import UsageError

    given = [o for o in (args.out, args.out_positional) if o]
    if len(given) != 1:
        raise UsageError(
            "imgclf demo-data needs one output folder",
            received=" and ".join(given) or "none",
            expected="--output DIR (or the folder as the only argument)",
            fix="e.g. imgclf demo-data --output malaria",
        )
    counts = write_demo_dataset(given[0], scale=args.scale, seed=args.seed)
    stdout_line(json.dumps(counts))
    return 0


def _require_packages() -> None:
    """The demo trains and plots: without torch or matplotlib, say which install provides it first.

    Raises:
        UsageError: If torch (the torch-free runtime install) or matplotlib is not installed.
    """
    import importlib.util

    from imgclf.errors import missing_package_error

    try:
        found = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        missing = ModuleNotFoundError("No module named 'torch'", name="torch")
        raise missing_package_error(missing, "imgclf demo") or missing
    from imgclf.plots import require_matplotlib

    require_matplotlib("imgclf demo (it draws the training plot)", "pip install matplotlib")


def cmd_demo(args: argparse.Namespace) -> int:
    """``imgclf demo``: data → train → (new process) predict montage + evaluate."""
    from imgclf.cli.train import train_and_report
    from imgclf.config import RunOptions, TrainConfig
    from imgclf.data.synthetic import write_demo_dataset
    from imgclf.progress import stderr_console

    _require_packages()  # before writing the demo data, not after
    config = TrainConfig()
    changes = {name: getattr(args, name) for name in ("epochs", "seed") if getattr(args, name) is not None}
    config = config.replace(**changes) if changes else config
    console = stderr_console()
    data = os.path.join(args.out, "data")
    model = os.path.join(args.out, "malaria.imgclf")
    if not os.path.isdir(os.path.join(data, "training")):
        console.print(f"[1/3] writing demo data to {data}", markup=False)
        write_demo_dataset(data, scale=args.scale, seed=config.seed)
    else:
        console.print(f"[1/3] reusing demo data in {data}", markup=False)
    console.print(
        "[2/3] training the recipe (seed_resnet, 64x64, SGD with time decay, augmentation)", markup=False
    )
    # The demo owns its output folder: a second `make demo` replaces the previous demo model.
    options = RunOptions(plot_path=os.path.join(args.out, "plot.png"), force=True)
    code = train_and_report(data, model, config, options)
    if code:
        return code
    console.print(
        "[3/3] loading the model file in a new process: montage and classification report", markup=False
    )
    montage = os.path.join(args.out, "montage.png")
    base = [sys.executable, "-m", "imgclf"]
    steps = [
        base
        + [
            "predict",
            "--model",
            model,
            "--images",
            os.path.join(data, "testing"),
            "--sample",
            "16",
            "--seed",
            str(config.seed),
            "--montage",
            montage,
            "--output",
            os.path.join(args.out, "predictions.csv"),
        ],
        base + ["evaluate", "--model", model, "--dataset", data],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, check=False)
        if proc.returncode:
            raise ImgclfError(
                f"demo step failed with exit code {proc.returncode}",
                received=" ".join(cmd[3:5]),
                fix="run the step by hand with --debug",
            )
    return 0
