"""``imgclf inspect`` and ``imgclf verify``: what a model file holds, and whether it still behaves as saved.

Usage::

    from imgclf.cli.main import main
    main(["verify", "model.imgclf"])
"""

from __future__ import annotations

import argparse
import json

from imgclf.cli.common import EPILOG
from imgclf.cli.output import stdout_line


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf inspect`` and ``imgclf verify``."""
    p = sub.add_parser(
        "inspect",
        parents=[common],
        help="show what a model file holds",
        epilog=EPILOG,
        description="Print a model file's manifest without building the model.",
    )
    p.set_defaults(func=cmd_inspect)
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
    p.set_defaults(func=cmd_verify)
    p.add_argument("model", help="model file")


def _names(names: list[str], limit: int = 20) -> str:
    """Class names for one line: the first ``limit``, then a count (a model may have 100 000 classes)."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more; --json lists all)" if len(names) > limit else "")


def cmd_inspect(args: argparse.Namespace) -> int:
    """``imgclf inspect``: the manifest, human-readable or ``--json``."""
    from imgclf.errors import safe_text
    from imgclf.modelfile import inspect

    info = inspect(args.model)
    if args.json:
        stdout_line(json.dumps(info, indent=2))
        return 0
    arch = info["architecture"]
    pre = info["preprocess"]
    lines = [
        f"file            {info['path']} ({info['file_bytes']} bytes)",
        f"format          {info['format']} version {info['format_version']} "
        f"(decode rule {info['decode_rule']})",
        f"architecture    {arch['name']} {json.dumps(arch['args'], ensure_ascii=False)}",
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
            f"counts {json.dumps(d.get('counts'), ensure_ascii=False)}"
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
        stdout_line(safe_text(line))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``imgclf verify``: one line per check; exit 0 if all pass, 3 otherwise."""
    from imgclf.errors import ModelFileError
    from imgclf.modelfile import verify

    report = verify(args.model)
    for name, ok, detail in report.checks:
        stdout_line(f"{'ok  ' if ok else 'FAIL'}  {name}: {detail}")
    if not report.ok:
        failed = [name for name, ok, _ in report.checks if not ok]
        raise ModelFileError(
            f"model file {args.model!r} failed verification: {', '.join(failed)}",
            fix="the environment changed (Pillow/torch) or the file was modified; see above",
        )
    stdout_line("verified: the model behaves exactly as when it was saved")
    return 0
