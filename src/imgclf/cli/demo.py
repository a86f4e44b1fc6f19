"""``imgclf demo`` and ``imgclf demo-data``: the whole recipe on synthetic data, or just the data.

Usage::

    from imgclf.cli.main import build_parser
    cmd_demo(build_parser().parse_args(["demo", "--out", "demo-output", "--epochs", "2"]))
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from imgclf.cli.output import stdout_line
from imgclf.cli.train import cmd_train
from imgclf.errors import ImgclfError

__all__ = ["cmd_demo", "cmd_demo_data", "build_train_args"]


def cmd_demo_data(args: argparse.Namespace) -> int:
    """``imgclf demo-data``: write the synthetic dataset and print its counts."""
    from imgclf.data.synthetic import write_demo_dataset

    counts = write_demo_dataset(args.out, scale=args.scale, seed=args.seed)
    stdout_line(json.dumps(counts))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``imgclf demo``: data → train → (new process) predict montage + evaluate."""
    from imgclf.data.synthetic import write_demo_dataset
    from imgclf.progress import stderr_console

    console = stderr_console()
    data = os.path.join(args.out, "data")
    model = os.path.join(args.out, "malaria.imgclf")
    if not os.path.isdir(os.path.join(data, "training")):
        console.print(f"[1/3] writing demo data to {data}", markup=False)
        write_demo_dataset(data, scale=args.scale, seed=args.seed)
    else:
        console.print(f"[1/3] reusing demo data in {data}", markup=False)
    console.print(
        "[2/3] training the recipe (seed_resnet, 64x64, SGD with time decay, augmentation)", markup=False
    )
    train_args = build_train_args(data, model, args)
    code = cmd_train(train_args)
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
            str(args.seed),
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


def build_train_args(dataset: str, model: str, demo_args: argparse.Namespace) -> argparse.Namespace:
    """A ``train`` namespace for the demo with every recipe default."""
    from imgclf.cli.main import build_parser

    argv = [
        "train",
        "--dataset",
        dataset,
        "--model",
        model,
        "--epochs",
        str(demo_args.epochs),
        "--seed",
        str(demo_args.seed),
        "--plot",
        os.path.join(os.path.dirname(model), "plot.png"),
    ]
    return build_parser().parse_args(argv)
