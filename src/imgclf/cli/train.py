"""``imgclf train``: the recipe from flags (or a run folder's record when resuming), then the pipeline.

Usage::

    from imgclf.cli.main import build_parser
    cmd_train(build_parser().parse_args(["train", "--dataset", "data", "--model", "m.imgclf"]))
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from imgclf.cli.output import report_text, stdout_line
from imgclf.errors import UsageError

__all__ = ["cmd_train"]


def _config_from_args(args: argparse.Namespace, start: dict[str, Any] | None = None) -> Any:
    """The TrainConfig: ``start`` (a resumed run's recipe, else the defaults), then --config, then flags."""
    from imgclf.config import TrainConfig

    base: dict[str, Any] = dict(start or {})
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as fh:
                base.update(json.load(fh))
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise UsageError(
                "cannot read --config",
                received=f"{args.config} ({exc})",
                expected="a JSON file of TrainConfig settings",
                fix="check the file",
            ) from None
    if args.recipe:  # the preset fills every setting the start, --config and flags leave unset
        base["recipe"] = args.recipe
    cfg = TrainConfig.from_dict(base)
    direct = (
        "arch",
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "decay",
        "seed",
        "label_smoothing",
        "val_split",
        "test_split",
        "device",
        "precision",
        "compile",
        "channels_last",
        "eval_batch_size",
        "keep",
        "monitor",
        "patience",
        "schedule",
        "warmup",
        "nesterov",
        "clip_norm",
        "ema",
    )  # flags named as the TrainConfig fields they set
    changes = {name: getattr(args, name) for name in direct if getattr(args, name) is not None}
    if args.deterministic:
        changes["deterministic"] = True
    if args.arch_arg:
        changes["arch_args"] = {**cfg.arch_args, **dict(args.arch_arg)}
    pre: dict[str, Any] = {}
    if args.size:
        pre["height"], pre["width"] = args.size
    if args.interpolation:
        pre["interpolation"] = args.interpolation
    if pre:
        changes["preprocess"] = cfg.preprocess.replace(**pre)
    aug: dict[str, Any] = {}
    for name in ("rotation", "zoom", "shear"):
        if getattr(args, name) is not None:
            aug[name] = getattr(args, name)
    if args.shift is not None:
        aug["width_shift"] = aug["height_shift"] = args.shift
    if args.no_flip:
        aug["horizontal_flip"] = False
    if args.no_augment:
        aug["enabled"] = False
    if aug:
        changes["augment"] = cfg.augment.replace(**aug)
    return cfg.replace(**changes) if changes else cfg


def cmd_train(args: argparse.Namespace) -> int:
    """``imgclf train``: train (or ``--resume``), save, report; prints the classification report on stdout."""
    from imgclf.errors import safe_text
    from imgclf.training.pipeline import train
    from imgclf.training.progress import EpochProgress, decode_bar_factory, stderr_console

    dataset, model, plot, config, run_dir = _train_inputs(args)
    console = stderr_console()
    result = train(
        dataset,
        model,
        config,
        plot_path=plot,
        run_dir=run_dir,
        skip_bad=args.skip_bad,
        probes_from=args.probes_from,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        callbacks=[EpochProgress(console)],
        log=lambda m: console.print(safe_text(m), markup=False),
        decode_progress=decode_bar_factory(console),
        resume=bool(args.resume),
        force=args.force,
    )
    if result.evaluation is not None:
        stdout_line(report_text(result.evaluation.report))
    for what, path in result.outputs.items():
        console.print(f"wrote {what}: {safe_text(path)}", markup=False)
    return 0


def _train_inputs(args: argparse.Namespace) -> tuple[str, str, str | None, Any, str | None]:
    """(dataset, model, plot, config, run_dir) from the flags; with --resume, from DIR/run.json first.

    A flag given with --resume overrides the recorded value; the pipeline then refuses a changed recipe
    or dataset unless --force.
    """
    if not args.resume:
        args.probes_from = args.probes_from or 0
        missing = [
            flag for flag, value in (("--dataset", args.dataset), ("--model", args.model)) if not value
        ]
        if missing:
            raise UsageError(
                f"imgclf train needs {' and '.join(missing)}",
                received="no " + " and no ".join(missing),
                expected="--dataset DIR --model FILE (or --resume RUN_DIR)",
                fix="add the missing flag(s); see imgclf train --help",
            )
        return args.dataset, args.model, args.plot, _config_from_args(args), args.run_dir
    from imgclf.training.runfolder import read_record

    if args.run_dir and os.path.abspath(args.run_dir) != os.path.abspath(args.resume):
        raise UsageError(
            "--run-dir and --resume name different folders",
            received=f"--run-dir {args.run_dir} --resume {args.resume}",
            expected="only --resume RUN_DIR",
            fix="drop --run-dir: the run continues in the folder given to --resume",
        )
    record = read_record(args.resume)
    if args.probes_from is None:
        args.probes_from = int(record.get("probes_from") or 0)
    args.skip_bad = args.skip_bad or bool(record.get("skip_bad"))
    return (
        args.dataset or record.get("dataset"),
        args.model or record.get("model"),
        args.plot or record.get("plot"),
        _config_from_args(args, record.get("config")),
        args.resume,
    )
