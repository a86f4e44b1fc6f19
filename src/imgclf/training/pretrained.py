"""Where a run's first weights come from: a pretrained-weights file (``--weights``) or another imgclf
model file (``--init-from``), always a local path, never a download.

Weight files are read by :mod:`.weight_files` (safely: no pickled objects). Tensors are matched to the
model by name (after dropping a common prefix such as ``module.``); every backbone tensor must be found
with its exact shape, or the file is refused as one for another architecture. The classification head
is skipped (a new one is trained for the dataset's classes), except when ``--init-from`` names a file
with the same classes.

Usage::

    report = start_weights(model, config, class_names)   # in create_state's place, on a fresh run
    print(report["loaded"], report["skipped"])            # also recorded in run.json and provenance
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from imgclf.config import TrainConfig
from imgclf.errors import UsageError
from imgclf.models.timm_backbone import head_names
from imgclf.training.weight_files import (
    check_file,
    file_digest,
    file_kind,
    read_tensors,
    refuse,
    resolve_weights,
)

_PREFIXES = ("", "module.", "model.", "backbone.", "encoder.", "module.model.")


def check_start(config: TrainConfig) -> None:
    """Check ``weights``/``init_from`` before any data is read: one of them, a readable file of a known
    format; an ``init_from`` file valid and of the run's architecture.

    Raises:
        UsageError, ModelFileError: As :func:`start_weights` would, but without loading the weights.
    """
    _one_start(config)
    if config.weights:
        path = resolve_weights(os.fspath(config.weights))
        check_file(path, "weights")
        file_kind(path)
    if config.init_from:
        path = os.fspath(config.init_from)
        check_file(path, "--init-from model")
        _same_arch(config, path, parent_settings(path))


def _one_start(config: TrainConfig) -> None:
    if config.weights and config.init_from:
        raise UsageError(
            "--weights and --init-from both given",
            received=f"{config.weights} and {config.init_from}",
            expected="one starting point",
            fix="use --init-from for an imgclf file, --weights for other weight files",
        )


def _same_arch(config: TrainConfig, path: str, parent: dict[str, Any]) -> None:
    if parent["arch"] != config.arch or parent["arch_args"] != _resolved(config):
        raise UsageError(
            "--init-from names a model of another architecture",
            received=f"{path}: {parent['arch']} {parent['arch_args']}",
            expected=f"{config.arch} {_resolved(config)}",
            fix="drop --arch/--arch-arg (imgclf train --init-from takes them from the file); in Python "
            f"give TrainConfig arch={parent['arch']!r}, arch_args={parent['arch_args']!r}",
        )


def match(
    model: nn.Module, tensors: dict[str, torch.Tensor], *, keep_head: bool, path: str
) -> dict[str, Any]:
    """Copy ``tensors`` into ``model`` by name; return ``{"loaded", "skipped", "unused", "prefix"}``.

    Every tensor of the model outside its head must be in the file with the same shape (batch-norm
    ``num_batches_tracked`` counters may be missing); head tensors are loaded only with ``keep_head``.

    Raises:
        UsageError: Too little matches (another architecture) or a shape differs.
    """
    target = model.state_dict()
    head = head_names(model)
    prefix = max(_PREFIXES, key=lambda p: sum((p + k) in tensors for k in target))
    found = {k: tensors[prefix + k] for k in target if prefix + k in tensors}
    body = [k for k in target if k not in head]
    missing = [k for k in body if k not in found and not k.endswith("num_batches_tracked")]
    if len(missing) == len([k for k in body if not k.endswith("num_batches_tracked")]):
        raise refuse(
            "no tensor of the weights file matches the model",
            f"{path}: names like {', '.join(list(tensors)[:3])}",
            f"names like {', '.join(body[:3])}",
            "use weights made for this architecture (--arch), e.g. timm's model.safetensors for timm:NAME",
        )
    if missing:
        raise refuse(
            f"the weights file lacks {len(missing)} of the model's {len(body)} backbone tensors",
            f"{path}: missing {', '.join(missing[:4])}",
            "weights for exactly this architecture",
            "check --arch (and its variant, e.g. resnet18 vs resnet34) against the weights' source",
        )
    wrong = [
        f"{k}: file {list(found[k].shape)}, model {list(target[k].shape)}"
        for k in body
        if k in found and found[k].shape != target[k].shape
    ]
    if wrong:
        raise refuse(
            f"{len(wrong)} tensor shape(s) of the weights file differ from the model",
            f"{path}: {'; '.join(wrong[:3])}",
            "the same shapes (the same architecture and width)",
            "check --arch and --arch-arg against the weights' source",
        )
    take = {k for k in found if (k not in head or keep_head) and found[k].shape == target[k].shape}
    if keep_head and head - take:
        raise refuse(
            "the parent model's head does not fit",
            f"{path}: {sorted(head - take)[:3]}",
            "the same classes",
            "fine-tune with different classes to get a new head",
        )
    with torch.no_grad():
        for k in take:
            target[k].copy_(found[k].to(dtype=target[k].dtype))
    used = {prefix + k for k in take}
    return {
        "loaded": len(take),
        "skipped": sorted(k for k in found if k not in take),
        "unused": len([k for k in tensors if k not in used]) - len([k for k in found if k not in take]),
        "prefix": prefix,
    }


def parent_settings(path: str | os.PathLike) -> dict[str, Any]:
    """An imgclf model file's architecture, builder args and preprocessing (TrainConfig fields).

    Raises:
        ModelFileError: Not a valid imgclf model file.
    """
    from imgclf import modelfile

    info = modelfile.inspect(path)
    arch = info["architecture"]
    return {"arch": arch["name"], "arch_args": arch["args"], "preprocess": info["preprocess"]}


def start_weights(model: nn.Module, config: TrainConfig, class_names: list[str]) -> dict[str, Any] | None:
    """Load ``config.weights`` or ``config.init_from`` into a freshly built ``model``.

    Returns:
        What was loaded, for ``run.json`` and the model file's provenance (``None`` without either):
        ``{"kind", "path", "sha256", "loaded", "skipped", "head", ...}``.

    Raises:
        UsageError: Both given, an unreadable or unsafe file, weights for another architecture.
        ModelFileError: ``init_from`` is not a valid imgclf file.
    """
    _one_start(config)
    if not config.pretrained:
        return None
    if config.weights:
        path = resolve_weights(os.fspath(config.weights))
        report = match(model, read_tensors(path), keep_head=False, path=path)
        return {
            "kind": "weights",
            "path": os.path.abspath(path),
            "sha256": file_digest(path),
            **report,
            "head": "new",
        }
    return _init_from(model, config, class_names)


def _init_from(model: nn.Module, config: TrainConfig, class_names: list[str]) -> dict[str, Any]:
    from imgclf import modelfile

    path = os.fspath(config.init_from or "")
    check_file(path, "--init-from model")
    parent = modelfile.load(path)
    _same_arch(config, path, {"arch": parent.arch, "arch_args": parent.arch_args})
    same = list(parent.class_names) == list(class_names)
    tensors = {k: v.detach() for k, v in parent.model.state_dict().items()}
    report = match(model, tensors, keep_head=same, path=path)
    provenance = parent.manifest.get("provenance") or {}
    return {
        "kind": "init_from",
        "path": os.path.abspath(path),
        "sha256": file_digest(path),
        "parent_tensors_sha256": modelfile.inspect(path)["integrity"]["tensors_sha256"],
        "parent_classes": list(parent.class_names),
        "parent_data_fingerprint": (provenance.get("data") or {}).get("fingerprint"),
        **report,
        "head": "kept" if same else "new",
    }


def _resolved(config: TrainConfig) -> dict[str, Any]:
    from imgclf.models import registry

    return registry.resolve_args(config.arch, config.arch_args)
