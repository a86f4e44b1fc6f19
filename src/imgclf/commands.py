"""Handlers for each ``imgclf`` command: parse-free functions taking the argparse namespace.

Each returns an exit code; errors are raised as :class:`imgclf.errors.ImgclfError` and turned into one
stderr line by :func:`imgclf.cli.main`. The predict path imports no training or plotting code.

Usage::

    from imgclf.cli import build_parser
    from imgclf import commands
    commands.cmd_inspect(build_parser().parse_args(["inspect", "model.imgclf"]))
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import subprocess
import sys
from typing import Any

from imgclf.errors import ImgclfError, PartialFailure, UsageError

__all__ = [
    "cmd_train",
    "cmd_predict",
    "cmd_evaluate",
    "cmd_inspect",
    "cmd_verify",
    "cmd_demo",
    "cmd_demo_data",
]


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _report_text(report: dict[str, Any]) -> str:
    """The classification report for stdout, control characters in class names escaped line by line."""
    from imgclf.errors import safe_text
    from imgclf.evaluate import format_report

    return "\n".join(safe_text(line) for line in format_report(report).rstrip("\n").split("\n"))


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
    cfg = TrainConfig.from_dict(base)
    direct = {
        "arch": "arch",
        "epochs": "epochs",
        "batch_size": "batch_size",
        "lr": "lr",
        "momentum": "momentum",
        "decay": "decay",
        "seed": "seed",
        "label_smoothing": "label_smoothing",
        "val_split": "val_split",
        "test_split": "test_split",
        "device": "device",
        "precision": "precision",
        "compile": "compile",
        "channels_last": "channels_last",
        "eval_batch_size": "eval_batch_size",
        "keep": "keep",
        "monitor": "monitor",
        "patience": "patience",
    }
    changes = {
        field: getattr(args, name) for name, field in direct.items() if getattr(args, name) is not None
    }
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
    from imgclf.pipeline import train
    from imgclf.progress import EpochProgress, decode_bar_factory, stderr_console

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
        _out(_report_text(result.evaluation.report))
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
    from imgclf.runfolder import read_record

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


def _pick_images(args: argparse.Namespace) -> list[str]:
    from imgclf.data import list_images

    paths = list_images(args.images)
    if not paths:
        raise UsageError(
            "no images found",
            received=" ".join(args.images),
            expected="image files or folders",
            fix="check the --images paths",
        )
    if args.sample is not None:
        if args.sample < 1:
            raise UsageError(
                "--sample must be positive", received=args.sample, expected=">= 1", fix="use --sample 16"
            )
        paths = sorted(paths)
        paths = random.Random(args.seed).sample(paths, min(args.sample, len(paths)))
    return paths


def _check_output_format(path: str) -> None:
    if not path.lower().endswith((".csv", ".jsonl")):
        raise UsageError(
            "unknown --output format",
            received=path,
            expected="a .csv or .jsonl file name",
            fix="use --output preds.csv or --output preds.jsonl",
        )


def _write_predictions(path: str, preds: list, class_names: list[str]) -> None:
    from imgclf.files import atomic_write_text

    if path.lower().endswith(".jsonl"):
        lines = []
        for p in preds:
            row: dict[str, Any] = {"path": p.source}
            if p.error is None:
                row.update(label=p.label, confidence=p.confidence, probabilities=p.probabilities)
                if len(p.top_k) > 1:
                    row["top_k"] = [{"label": k, "probability": v} for k, v in p.top_k]
            else:
                row["error"] = p.error
            lines.append(json.dumps(row, ensure_ascii=False))
        atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
        return
    _check_output_format(path)
    fixed = {"path", "label", "confidence", "error"}
    columns = [c if c not in fixed else f"prob:{c}" for c in class_names]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "confidence", *columns, "error"])
    for p in preds:
        if p.error is None:
            writer.writerow(
                [p.source, p.label, repr(p.confidence), *[repr(p.probabilities[c]) for c in class_names], ""]
            )
        else:
            writer.writerow([p.source, "", "", *[""] * len(class_names), p.error])
    atomic_write_text(path, buf.getvalue())


def cmd_predict(args: argparse.Namespace) -> int:
    """``imgclf predict``: one line per image on stdout; per-image errors on stderr; exit 4 if any failed."""
    from imgclf.bundle import load
    from imgclf.errors import safe_text

    if args.top_k < 1 or args.batch_size < 1:
        raise UsageError(
            "--top-k and --batch-size must be positive",
            received=f"{args.top_k}, {args.batch_size}",
            expected=">= 1",
            fix="use positive numbers",
        )
    if args.output:
        _check_output_format(args.output)  # before any work, not after classifying everything
    for target in (args.output, args.montage):
        if target:
            from imgclf.files import check_writable

            check_writable(target)
    clf = load(args.model)
    paths = _pick_images(args)
    preds = clf.predict(paths, top_k=args.top_k, batch_size=args.batch_size, errors="return")
    failed = 0
    for p in preds:
        if p.error is not None:
            failed += 1
            print(f"imgclf: error: {safe_text(p.error)}", file=sys.stderr)
            continue
        extra = "".join(f"\t{safe_text(k)}:{v:.4f}" for k, v in p.top_k[1:])
        _out(f"{safe_text(p.source)}\t{safe_text(p.label)}\t{p.confidence:.4f}{extra}")
    if args.output:
        _write_predictions(args.output, preds, clf.class_names)
    if args.montage:
        _montage(args, preds, clf.class_names)
    if failed:
        raise PartialFailure(
            f"{failed} of {len(preds)} image(s) could not be classified",
            fix="see the errors above; the other images were classified",
        )
    return 0


def _montage(args: argparse.Namespace, preds: list, class_names: list[str]) -> None:
    import io as _io

    from imgclf.files import atomic_write_bytes
    from imgclf.reports import build_montage, class_colors, montage_tile

    colors = class_colors(len(class_names))
    tiles = [
        montage_tile(p.source, f"{p.label} {p.confidence:.0%}", colors[p.index])
        for p in preds
        if p.error is None
    ]
    sheet = build_montage(tiles)
    buf = _io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(args.montage, buf.getvalue())
    print(f"imgclf: wrote montage {args.montage} ({len(tiles)} tiles)", file=sys.stderr)
    if args.show:
        if (
            os.environ.get("DISPLAY")
            or os.environ.get("WAYLAND_DISPLAY")
            or sys.platform in ("darwin", "win32")
        ):
            sheet.show()
        else:
            print("imgclf: --show: no display found; open the montage file instead", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``imgclf evaluate``: classification report on stdout (text or ``--json``)."""
    from imgclf.bundle import load
    from imgclf.errors import safe_text
    from imgclf.files import atomic_write_text
    from imgclf.pipeline import evaluate_dataset

    for target in (args.output, args.confusion_plot):
        if target:
            from imgclf.files import check_writable

            check_writable(target)
    if args.confusion_plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError(
                "--confusion-plot needs matplotlib",
                received="matplotlib is not installed",
                expected="matplotlib (an optional dependency)",
                fix="pip install 'imgclf[plots]', or drop --confusion-plot",
            )
    clf = load(args.model)
    ev = evaluate_dataset(
        clf,
        args.dataset,
        split=args.split,
        skip_bad=args.skip_bad,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        log=lambda m: print(f"imgclf: {safe_text(m)}", file=sys.stderr),
    )
    if args.json:
        _out(json.dumps(ev.to_dict(), indent=2))
    else:
        _out(_report_text(ev.report))
    if args.output:
        atomic_write_text(args.output, json.dumps(ev.to_dict(), indent=2) + "\n")
    if args.confusion_plot:
        from imgclf.reports import plot_confusion

        plot_confusion(ev.confusion, ev.class_names, args.confusion_plot)
    return 0


def _names(names: list[str], limit: int = 20) -> str:
    """Class names for one line: the first ``limit``, then a count (a model may have 100 000 classes)."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more; --json lists all)" if len(names) > limit else "")


def cmd_inspect(args: argparse.Namespace) -> int:
    """``imgclf inspect``: the manifest, human-readable or ``--json``."""
    from imgclf.bundle import inspect
    from imgclf.errors import safe_text

    info = inspect(args.model)
    if args.json:
        _out(json.dumps(info, indent=2))
        return 0
    arch = info["architecture"]
    pre = info["preprocess"]
    lines = [
        f"file            {info['path']} ({info['file_bytes']} bytes)",
        f"format          {info['format']} version {info['format_version']} "
        f"(decode rule {info['decode_rule']})",
        f"architecture    {arch['name']} {json.dumps(arch['args'])}",
        f"parameters      {info['parameters']} in {info['tensors']} tensors",
        f"classes         {len(info['class_names'])}: {_names(info['class_names'])}",
        f"preprocessing   {pre['height']}x{pre['width']} {pre['interpolation']}, "
        f"rescale {pre['rescale']:.6g}, "
        f"mean {pre['mean']}, std {pre['std']}",
    ]
    if info.get("training"):
        t = info["training"]
        lines.append(
            f"training        {t.get('epochs')} epochs, batch {t.get('batch_size')}, lr {t.get('lr')}, "
            f"seed {t.get('seed')}; saved epoch {info.get('epoch')} on {info.get('device')}"
        )
    if info.get("metrics"):
        lines.append(
            "metrics         "
            + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in info["metrics"].items()
            )
        )
    if info.get("data"):
        d = info["data"]
        lines.append(
            f"data            fingerprint {str(d.get('fingerprint'))[:16]}..., "
            f"counts {json.dumps(d.get('counts'))}"
        )
    if info.get("versions"):
        lines.append("versions        " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    lines.append(f"created         {info.get('created')}")
    kinds = info["probe_kinds"]
    lines.append(
        f"probes          {info['probes']} ({kinds.count('synthetic')} synthetic, "
        f"{kinds.count('validation')} validation images)"
    )
    lines.append(f"tensor digest   sha256:{info['integrity']['tensors_sha256']}")
    for line in lines:
        _out(safe_text(line))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``imgclf verify``: one line per check; exit 0 if all pass, 3 otherwise."""
    from imgclf.bundle import verify
    from imgclf.errors import ModelFileError

    report = verify(args.model)
    for name, ok, detail in report.checks:
        _out(f"{'ok  ' if ok else 'FAIL'}  {name}: {detail}")
    if not report.ok:
        failed = [name for name, ok, _ in report.checks if not ok]
        raise ModelFileError(
            f"model file {args.model!r} failed verification: {', '.join(failed)}",
            fix="the environment changed (Pillow/torch) or the file was modified; see above",
        )
    _out("verified: the model behaves exactly as when it was saved")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    """``imgclf demo-data``: write the synthetic dataset and print its counts."""
    from imgclf.demo_data import write_demo_dataset

    counts = write_demo_dataset(args.out, scale=args.scale, seed=args.seed)
    _out(json.dumps(counts))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``imgclf demo``: data → train → (new process) predict montage + evaluate."""
    from imgclf.demo_data import write_demo_dataset
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
    from imgclf.cli import build_parser

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
