"""``imgclf train``: its flags (generated from :class:`imgclf.TrainConfig`), then the pipeline.

Every recipe flag, its type, its choices and the "(default X)" in ``--help`` come from the fields of
``TrainConfig`` and its nested settings (:mod:`imgclf.config`), so a default is written once.

Usage::

    from imgclf.cli.main import main
    main(["train", "--dataset", "data", "--model", "m.imgclf", "--epochs", "5"])
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from imgclf.cli.common import (
    EPILOG,
    add_cache_flags,
    add_max_pixels_flag,
    image_size,
    key_value,
    max_pixels_option,
)
from imgclf.cli.output import report_text, stdout_line
from imgclf.cli.recipe_flags import (
    CHECKPOINT_FIELDS,
    RUN_FIELDS,
    add_recipe_flag,
    config_from_args,
    option_help,
    recipe_flags,
)
from imgclf.cli.torchrun import add_launch_flags, launch
from imgclf.errors import UsageError

if TYPE_CHECKING:
    from imgclf.config import RunOptions, TrainConfig

TRAIN_EPILOG = """checkpoints and resuming:
  After every epoch a checkpoint goes to RUN/checkpoints/ (the newest two and the best epoch's are kept).
  Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and exits 130 / 143; a second Ctrl-C
  aborts at once (files are written atomically: nothing is corrupted). Then, or after a crash or kill -9:
    imgclf train --resume malaria-run              # dataset, model and recipe come from malaria-run/run.json
    imgclf train --resume malaria-run --epochs 40  # train longer (the learning-rate decay stays the run's)
  On the CPU a resumed run ends bitwise identical to an uninterrupted one. A damaged newest checkpoint is
  set aside with a warning and the one before it is used. A changed dataset, class set or recipe is refused
  with a diff (exit 6); --force continues anyway. A run folder is locked by one training at a time (exit 5).
  Free disk space for the model and the checkpoints is checked before the first epoch (exit 5).

several processes (torchrun, DistributedDataParallel):
  torchrun --nproc-per-node 4 -m imgclf train --dataset D --model M    # or: imgclf train --nproc 4 ...
  --batch-size stays the GLOBAL batch of the recipe (32): each of N processes trains on 32/N images per
  step (it must divide), so the learning rate, schedule, epochs and steps per epoch are those of one
  process. This differs from the "per-GPU batch" convention, where N processes mean an N-times-larger
  batch. Rank 0 alone writes the run folder, checkpoints, model file and reports. With --max-restarts K a
  worker that dies makes torchrun restart the group, which resumes from the newest checkpoint."""


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf train``."""
    from imgclf.config import TrainConfig

    p = sub.add_parser(
        "train",
        parents=[common],
        help="train a classifier on a dataset folder, save one file",
        description="Train on DATASET (ROOT/{training,validation,testing}/<class>/ or ROOT/<class>/)\n"
        "and save one model file. The defaults reproduce the DL4CV malaria recipe (Keras-style SGD\n"
        "with time decay, augmentation); every default shown comes from imgclf.TrainConfig.",
        epilog=TRAIN_EPILOG + "\n\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_train)
    p.add_argument("--dataset", "-d", help="dataset folder (required unless --resume)")
    p.add_argument(
        "--labels",
        metavar="CSV",
        help="labels file instead of --dataset: header path,label[,split]; paths relative to the CSV's "
        "folder; 'a|b' label cells mean several labels per image (see the README, 'Your data')",
    )
    p.add_argument("--model", "-m", help="output model file, e.g. malaria.imgclf (required unless --resume)")
    p.add_argument("--plot", "-p", help=option_help("plot_path"))
    p.add_argument("--config", help="JSON file with TrainConfig settings; flags override it")
    p.add_argument(
        "--list-archs",
        action="store_true",
        help="list the architectures --arch can build, with parameter counts, and exit",
    )
    groups = {
        "recipe": p.add_argument_group("recipe"),
        "run": p.add_argument_group("run"),
        "checkpoints": p.add_argument_group("checkpoints, resuming, best weights, determinism"),
    }
    recipe = groups["recipe"]
    recipe.add_argument(
        "--arch-arg",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="architecture argument, e.g. --arch-arg stem=tiny_imagenet (repeatable)",
    )
    defaults = TrainConfig()
    size = f"{defaults.preprocess.height}x{defaults.preprocess.width}"
    recipe.add_argument("--size", type=image_size, help=f"input size N or HxW (default {size})")
    recipe.add_argument(
        "--mean",
        type=_three,
        metavar="R,G,B",
        help="per-channel mean after rescaling (default 0,0,0; "
        "a timm:NAME backbone: its own, as for --size and --interpolation)",
    )
    recipe.add_argument("--std", type=_three, metavar="R,G,B", help="per-channel std (default 1,1,1)")
    shift = defaults.augment.width_shift
    recipe.add_argument("--shift", type=float, metavar="N", help=f"width and height shift (default {shift})")
    for spec in recipe_flags():
        name = spec.path[-1]
        group = "run" if name in RUN_FIELDS else "checkpoints" if name in CHECKPOINT_FIELDS else "recipe"
        add_recipe_flag(groups[group], spec)
    run = groups["run"]
    run.add_argument("--skip-bad", action="store_true", help=option_help("skip_bad"))
    add_cache_flags(run)
    add_max_pixels_flag(run)
    run.add_argument(
        "--probes-from",
        type=_probe_count,
        metavar="N",
        help=option_help("probes_from"),
    )
    _add_run_folder_flags(groups["checkpoints"])
    add_launch_flags(p.add_argument_group("several processes (torchrun)"))


def _add_run_folder_flags(c: argparse._ActionsContainer) -> None:
    c.add_argument("--run-dir", metavar="DIR", help=option_help("run_dir"))
    c.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its newest intact checkpoint; dataset, model and recipe come "
        "from DIR/run.json (flags given must match the recipe, except --epochs and --device/--precision/"
        "--eval-batch-size/--compile/--channels-last/--deterministic)",
    )
    c.add_argument(
        "--force",
        "--exist-ok",
        action="store_true",
        help=option_help("force"),
    )


def _three(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers R,G,B, got {text!r}")
    return values


def _probe_count(text: str) -> int:
    from imgclf.modelfile import MAX_EXTRA_PROBES

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_EXTRA_PROBES:
        raise argparse.ArgumentTypeError(f"expected 0 to {MAX_EXTRA_PROBES}, got {value}")
    return value


def cmd_train(args: argparse.Namespace) -> int:
    """``imgclf train``: train (or ``--resume``), save, report; prints the classification report on stdout."""
    from imgclf.errors import RunFinished
    from imgclf.world import World

    if args.list_archs:
        return list_archs()
    if args.nproc and not World.from_env().distributed:  # start the workers, which run this command
        _check_launch(args)
        return launch(getattr(args, "argv", None) or ["train"], args.nproc, args.max_restarts)
    dataset, model, config, options = _train_inputs(args)
    try:
        return train_and_report(dataset, model, config, options, distributed=_dist_options(args))
    except RunFinished as done:  # not an error: say so, change nothing, exit 0
        from imgclf.cli.common import err

        err(f"note: {done}")
        return done.exit_code


def _check_launch(args: argparse.Namespace) -> None:
    """Before ``--nproc N`` starts any process: the recipe valid, the dataset readable, at least one
    training image per process and a global batch that divides by N (each a one-line error here, instead
    of one per worker)."""
    from imgclf.data.folders import scan_dataset
    from imgclf.training.distributed import check_launch

    dataset, _, config, _ = _train_inputs(args)
    config = config.validated()
    ds = scan_dataset(dataset, val_split=config.val_split, test_split=config.test_split, seed=config.seed)
    check_launch(args.nproc, len(ds.splits["training"]), config.batch_size)


def list_archs(num_classes: int = 10) -> int:
    """Print one line per buildable architecture: name, parameters for ``num_classes`` classes, what it is.

    timm backbones are listed (a few well-known names; any timm model name works) where timm imports.
    """
    from imgclf.config import TrainConfig
    from imgclf.models import registry, timm_backbone

    size = TrainConfig().preprocess.size
    rows = []
    for name in registry.names():
        if name == "keras_graph":  # made by import-keras, not by --arch
            continue
        count = registry.parameter_count(name, num_classes, size)
        rows.append((name, count, registry.info(name).description))
    try:
        timm_backbone.require_timm()
        for member in timm_backbone.SUGGESTED:
            name = f"timm:{member}"
            rows.append((name, registry.parameter_count(name, num_classes, size), "timm backbone"))
        note = "timm:NAME builds any timm model name (timm.list_models())"
    except UsageError as exc:
        note = f"timm:NAME backbones: unavailable ({exc.problem}; {timm_backbone.INSTALL})"
    stdout_line(f"{'architecture':<28} {'parameters':>12}  ({num_classes} classes, {size[0]}x{size[1]})")
    for name, count, description in rows:
        stdout_line(f"{name:<28} {count:>12,}  {description}")
    stdout_line(note)
    return 0


def _dist_options(args: argparse.Namespace) -> Any:
    from imgclf.training.distributed import DistOptions

    return DistOptions(timeout_s=args.dist_timeout, sync_bn=args.sync_bn)


def train_and_report(
    dataset: str, model: str, config: TrainConfig, options: RunOptions, distributed: Any = None
) -> int:
    """Train with progress on stderr, then print the classification report on stdout (train and demo).

    Args:
        dataset: Dataset folder.
        model: Output model file.
        config: The :class:`imgclf.TrainConfig`.
        options: The :class:`imgclf.RunOptions` (its ``progress`` is this function's display).
        distributed: :class:`imgclf.training.distributed.DistOptions` of a torchrun worker, else ``None``.

    Returns:
        The exit code (0).
    """
    from imgclf.errors import safe_text
    from imgclf.progress import stderr_console
    from imgclf.training.display import EpochProgress, decode_bar_factory
    from imgclf.training.pipeline import train
    from imgclf.world import World

    console = stderr_console()
    main_rank = World.from_env().is_main  # under torchrun, rank 0 alone shows progress and results
    result = train(
        dataset,
        model,
        config,
        options.updated({"progress": False}),  # the bars below are the progress display
        callbacks=[EpochProgress(console)] if main_rank else [],
        log=lambda m: console.print(safe_text(m), markup=False),
        decode_progress=decode_bar_factory(console),
        distributed=distributed,
    )
    if not main_rank:
        return 0
    if result.evaluation is not None:
        stdout_line(report_text(result.evaluation.report))
        stdout_line("\n" + "\n".join(result.evaluation.summary_lines()))
    for what, path in result.outputs.items():
        console.print(f"wrote {what}: {safe_text(path)}", markup=False)
    return 0


def _train_inputs(args: argparse.Namespace) -> tuple[str, str, TrainConfig, RunOptions]:
    """(dataset, model, config, options) from the flags; with --resume, from DIR/run.json first.

    A flag given with --resume overrides the recorded value; the pipeline then refuses a changed recipe
    or dataset unless --force.
    """
    from imgclf.config import RunOptions

    if args.labels and args.dataset:
        raise UsageError(
            "--labels and --dataset both name the data",
            received=f"--dataset {args.dataset} --labels {args.labels}",
            expected="one of them",
            fix="drop --dataset (the labels CSV names the images) or --labels",
        )
    if args.labels and not str(args.labels).lower().endswith(".csv"):
        raise UsageError(
            "--labels needs a .csv file",
            received=args.labels,
            expected="a CSV file named *.csv (header path,label[,split])",
            fix="name the labels file labels.csv, for example",
        )
    args.dataset = args.dataset or args.labels
    given = {  # the run options the flags set, whether or not the run resumes
        "cache_dir": args.cache_dir,
        "use_cache": not args.no_cache,
        "force": args.force,
        **max_pixels_option(args),
    }
    if not args.resume:
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
        config = config_from_args(args)
        options = RunOptions(
            plot_path=args.plot,
            run_dir=args.run_dir,
            skip_bad=args.skip_bad,
            probes_from=args.probes_from or 0,
            **given,
        )
        return args.dataset, args.model, config, options
    from imgclf.training.runfolder import read_record

    if args.run_dir and os.path.abspath(args.run_dir) != os.path.abspath(args.resume):
        raise UsageError(
            "--run-dir and --resume name different folders",
            received=f"--run-dir {args.run_dir} --resume {args.resume}",
            expected="only --resume RUN_DIR",
            fix="drop --run-dir: the run continues in the folder given to --resume",
        )
    record = read_record(args.resume)
    config = config_from_args(args, record.get("config"))
    flags = {"plot_path": args.plot, "probes_from": args.probes_from, "skip_bad": args.skip_bad or None}
    options = RunOptions.from_run_json(
        record,
        run_dir=args.resume,
        resume=True,
        **{name: value for name, value in flags.items() if value is not None},
        **given,
    )
    return args.dataset or record.get("dataset"), args.model or record.get("model"), config, options
