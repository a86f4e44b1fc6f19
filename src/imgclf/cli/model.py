"""``imgclf inspect`` and ``imgclf verify``: what a model file holds, and whether it still behaves as saved.

Usage::

    from imgclf.cli.main import main
    main(["verify", "model.imgclf"])
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from imgclf.cli.common import EPILOG
from imgclf.cli.output import stdout_line


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf inspect`` and ``imgclf verify``."""
    p = sub.add_parser(
        "inspect",
        parents=[common],
        help="show what a model file holds",
        epilog=EPILOG,
        description="Print a model file's manifest without building the model (an .onnx from "
        "`imgclf export`: its metadata, graph and parity figures).",
    )
    p.set_defaults(func=cmd_inspect)
    _add_model_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable JSON")

    p = sub.add_parser(
        "verify",
        parents=[common],
        help="re-run a model file's self-check probes",
        epilog=EPILOG,
        description="Check digests, build the model and re-run the probe images stored at save "
        "time; report any drift in preprocessing or outputs (an .onnx: onnx.checker, its graph digest "
        "and its parity probes with this onnxruntime). Exit 0 if all checks pass, else 3.",
    )
    p.set_defaults(func=cmd_verify)
    _add_model_arg(p)
    p.add_argument("--json", action="store_true", help="the checks as JSON on stdout")


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    """``--model/-m FILE`` as in predict and evaluate; a positional ``MODEL`` is still accepted."""
    p.add_argument("model_file", nargs="?", metavar="MODEL", help="model file (same as --model)")
    p.add_argument("--model", "-m", dest="model", metavar="FILE", help="model file")


def _model_path(args: argparse.Namespace) -> str:
    """The one model file named by ``--model`` or the positional ``MODEL``."""
    from imgclf.errors import UsageError

    given = [m for m in (args.model, args.model_file) if m]
    if len(given) != 1 or not given[0]:
        raise UsageError(
            f"imgclf {args.command} needs one model file",
            received=" and ".join(given) or "none",
            expected="--model FILE (or the file as the only argument)",
            fix=f"e.g. imgclf {args.command} --model model.imgclf",
        )
    return given[0]


def _names(names: list[str], limit: int = 20) -> str:
    """Class names for one line: the first ``limit``, then a count (a model may have 100 000 classes)."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more; --json lists all)" if len(names) > limit else "")


# The settings a recipe preset sets (see imgclf.config.RECIPES), compared to name what a run changed.
_RECIPE_KEYS = ("epochs", "batch_size", "lr", "momentum", "decay", "label_smoothing", "schedule", "warmup")
_RECIPE_KEYS += ("nesterov", "clip_norm", "ema", "keep", "monitor", "patience")


def _recipe(training: dict) -> str:
    """``stable`` or ``stable, changed: lr 0.02, epochs 30``; files made before presets: ``seed``."""
    from imgclf.config import RECIPES, TrainConfig

    name = training.get("recipe", "seed")
    if name not in RECIPES:
        return str(name)
    preset = TrainConfig.from_recipe(name).to_dict()
    changed = [f"{k} {training[k]}" for k in _RECIPE_KEYS if k in training and training[k] != preset[k]]
    return name + (", changed: " + ", ".join(changed) if changed else "")


def _short_args(args: dict) -> dict:
    """Architecture args for one line: a list of layer records (keras_graph) shown as its length."""
    records = {k for k, v in args.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
    return {k: f"<{len(v)} layers; --json lists them>" if k in records else v for k, v in args.items()}


def cmd_inspect(args: argparse.Namespace) -> int:
    """``imgclf inspect``: the manifest, human-readable or ``--json``."""
    from imgclf.errors import safe_text
    from imgclf.loading import inspect  # .imgclf or .onnx

    info = inspect(_model_path(args))
    if args.json:
        stdout_line(json.dumps(info, indent=2))
        return 0
    if "onnx" in info:
        for line in _onnx_lines(info):
            stdout_line(safe_text(line))
        return 0
    arch = info["architecture"]
    pre = info["preprocess"]
    lines = [
        f"file            {info['path']} ({info['file_bytes']} bytes)",
        f"format          {info['format']} version {info['format_version']} "
        f"(decode rule {info['decode_rule']})",
        f"architecture    {arch['name']} {json.dumps(_short_args(arch['args']), ensure_ascii=False)}",
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
        lines.append(f"recipe          {_recipe(t)}")
    if info.get("distributed"):
        lines.append(_distributed_line(info["distributed"]))
    if info.get("metrics"):
        lines.append(_metrics_line(info["metrics"]))
    from imgclf.modelfile.trust import describe_trust

    lines += [f"{'trust':<15} {line}" for line in describe_trust(info)]
    if info.get("data"):
        d = info["data"]
        lines.append(
            f"data            fingerprint {str(d.get('fingerprint'))[:16]}..., "
            f"counts {json.dumps(d.get('counts'), ensure_ascii=False)}"
        )
    if isinstance(info.get("imported_from"), dict):
        src = info["imported_from"]
        lines.append(
            f"imported from   {src.get('file')} (Keras {src.get('keras_version')}, {src.get('layout')}, "
            f"sha256:{src.get('sha256')})"
        )
    if isinstance(info.get("started_from"), dict):
        src = info["started_from"]
        how = "fine-tuned from" if src.get("kind") == "init_from" else "weights from  "
        lines.append(
            f"{how}  {src.get('path')} (sha256:{src.get('sha256')}; {src.get('loaded')} tensors loaded, "
            f"head {src.get('head')})"
        )
    if info.get("versions"):
        lines.append("versions        " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    lines.append(f"created         {info.get('created')}")
    lines.append(f"task            {_task_text(info.get('task') or {})}")
    kinds = info["probe_kinds"]
    lines.append(
        f"probes          {info['probes']} ({kinds.count('synthetic')} synthetic, "
        f"{kinds.count('validation')} validation images)"
    )
    lines.append(f"tensor digest   sha256:{info['integrity']['tensors_sha256']}")
    for line in lines:
        stdout_line(safe_text(line))
    return 0


def _distributed_line(facts: dict) -> str:
    """``processes       2 (gloo), global batch 32 = 16 per rank, batch norm over the global batch``."""
    size = facts.get("world_size")
    if size == 1:
        return f"processes       1 (batch {facts.get('global_batch')})"
    if facts.get("sync_bn"):
        bn = "batch norm over the global batch"
    else:
        bn = "batch norm per rank, running statistics averaged"
    return (
        f"processes       {size} ({facts.get('backend')}), global batch {facts.get('global_batch')} = "
        f"{facts.get('per_rank_batch')} per rank, {bn}"
    )


def _metrics_line(metrics: dict) -> str:
    return "metrics         " + ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )


def _onnx_lines(info: dict) -> list[str]:
    """``imgclf inspect`` of an .onnx: the metadata, the graph and the parity figures of the export."""
    arch, pre, onnx, src = info["architecture"] or {}, info["preprocess"], info["onnx"], info["source"] or {}
    parity = onnx.get("parity") or {}
    size = f"{pre['height']}x{pre['width']} {pre['interpolation']}"
    lines = [
        f"file            {info['path']} ({info['file_bytes']} bytes)",
        f"format          {info['format']} version {info['format_version']} "
        f"(decode rule {info['decode_rule']})",
        f"onnx            IR version {onnx['ir_version']}, opset {onnx['opset']}, "
        f"exporter {onnx['exporter']}, {info['parameters']} values in {info['tensors']} initializers",
        f"architecture    {arch.get('name')} {json.dumps(arch.get('args'), ensure_ascii=False)}",
        f"classes         {len(info['class_names'])}: {_names(info['class_names'])}",
        f"preprocessing   {size}, rescale {pre['rescale']:.6g}, mean {pre['mean']}, std {pre['std']}",
        f"parity          max |Δp| {parity.get('max_abs_diff', float('nan')):.3g} on "
        f"{parity.get('inputs')} inputs (worst: {parity.get('worst_input')}), "
        f"tolerance {parity.get('tolerance')}, top-1 identical",
        f"source          {src.get('file')} (tensors sha256:{str(src.get('tensors_sha256'))[:16]}...)",
    ]
    if info.get("openvino"):
        ov = info["openvino"]
        lines.append(
            f"openvino        IR, {ov.get('precision')}, OpenVINO {ov.get('version')} (inference precision "
            f"{ov.get('inference_precision')}), weights sha256:{str(ov.get('weights_sha256'))[:16]}..."
        )
    quant = onnx.get("quantization")
    if quant:
        agree = quant.get("agreement") or {}
        test = (
            f", test accuracy {agree['test_accuracy_fp32']:.2%} fp32 -> {agree['test_accuracy_int8']:.2%}"
            if "test_accuracy_int8" in agree
            else ""
        )
        lines.append(
            f"quantization    {quant.get('dtype')} ({quant.get('scheme')}); top-1 agreement with fp32 "
            f"{agree.get('top1_agreement', float('nan')):.2%} on {agree.get('heldout_images')} held-out "
            f"images{test}"
        )
    if info.get("metrics"):
        lines.append(_metrics_line(info["metrics"]))
    if info.get("versions"):
        lines.append("exported with   " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    lines.append(f"exported        {info.get('created')}")
    lines.append(
        f"probes          {info['probes']} ({', '.join(sorted(set(info['probe_kinds']))) or 'none'})"
    )
    lines.append(f"graph digest    sha256:{onnx['graph_sha256']}")
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    """``imgclf verify``: one line per check; exit 0 if all pass, 3 otherwise."""
    from imgclf.errors import ModelFileError, safe_text
    from imgclf.loading import file_kind, verify  # .imgclf or .onnx

    path = _model_path(args)
    report = verify(path)
    if args.json:
        checks = [{"check": name, "ok": ok, "detail": detail} for name, ok, detail in report.checks]
        stdout_line(json.dumps({"path": path, "ok": report.ok, "checks": checks}, indent=2))
    else:
        for name, ok, detail in report.checks:
            stdout_line(safe_text(f"{'ok  ' if ok else 'FAIL'}  {name}: {detail}"))
    if not report.ok:
        failed = [name for name, ok, _ in report.checks if not ok]
        raise ModelFileError(
            f"model file {path!r} failed verification: {', '.join(failed)}",
            fix="the environment changed (Pillow/torch) or the file was modified; see above",
        )
    if not args.json:
        when = "exported" if file_kind(path) in ("onnx", "openvino") else "saved"
        stdout_line(f"verified: the model behaves exactly as when it was {when}")
    return 0


def _task_text(task: dict[str, Any]) -> str:
    """``multi-label, thresholds a 0.42, b 0.61; balance none`` (or ``single-label; balance none``)."""
    kind = str(task.get("type", "single_label")).replace("_", "-")
    thresholds = task.get("thresholds")
    shown = f", thresholds {', '.join(f'{t:.3g}' for t in thresholds)}" if thresholds else ""
    return f"{kind}{shown}; balance {task.get('balance', 'none')}"
