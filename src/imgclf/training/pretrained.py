"""Where a run's first weights come from: a pretrained-weights file (``--weights``) or another imgclf
model file (``--init-from``), always a local path, never a download.

Weight files are read as safetensors, or with ``torch.load(weights_only=True)``, whose unpickler builds
only tensors and plain containers: a ``.pth`` holding other objects is refused before any of its code
can run. Tensors are matched to the model by name (after dropping a common prefix such as ``module.``);
every backbone tensor must be found with its exact shape, or the file is refused as one for another
architecture. The classification head is skipped (a new one is trained for the dataset's classes),
except when ``--init-from`` names a file with the same classes.

Usage::

    report = start_weights(model, config, class_names)   # in create_state's place, on a fresh run
    print(report["loaded"], report["skipped"])            # also recorded in run.json and provenance
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import torch
from torch import nn

from imgclf.config import TrainConfig
from imgclf.errors import UsageError
from imgclf.models.timm_backbone import head_names

MAX_WEIGHTS_BYTES = 8 << 30  # larger than any single-file backbone imgclf can train on one machine
_PREFIXES = ("", "module.", "model.", "backbone.", "encoder.", "module.model.")
_NESTED = ("state_dict", "model", "model_state_dict", "module", "state_dict_ema")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_weights(value: str) -> str:
    """The local file for ``--weights``: the path itself, or, with ``HF_HUB_OFFLINE=1`` and a hub id such
    as ``timm/resnet18.a1_in1k``, that model's weights in the local Hugging Face cache (what
    ``huggingface_hub`` downloaded earlier; nothing is downloaded here).

    Raises:
        UsageError: A hub id whose weights are not in the cache.
    """
    if os.path.exists(value) or os.environ.get("HF_HUB_OFFLINE") != "1" or not _HUB_ID.fullmatch(value):
        return value
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    repo = os.path.join(
        os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"), "models--" + value.replace("/", "--")
    )
    try:
        with open(os.path.join(repo, "refs", "main"), encoding="ascii") as fh:
            revision = fh.read(100).strip()
    except (OSError, UnicodeDecodeError):
        revision = ""
    snapshot = os.path.join(repo, "snapshots", revision)
    for name in _HUB_FILES:
        if (
            revision
            and re.fullmatch(r"[0-9a-f]{40}", revision)
            and os.path.isfile(os.path.join(snapshot, name))
        ):
            return os.path.join(snapshot, name)
    raise UsageError(
        "the hub id's weights are not in the local Hugging Face cache",
        received=f"{value} (looked in {repo})",
        expected=f"{' or '.join(_HUB_FILES)} of its main revision",
        fix=f"where the hub is reachable: huggingface-cli download {value} model.safetensors, then copy "
        "the cache here (or pass the file's path to --weights)",
    )


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _refuse(problem: str, path: str, expected: str, fix: str) -> UsageError:
    return UsageError(problem, received=path, expected=expected, fix=fix)


def _check_file(path: str, what: str) -> None:
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise _refuse(
            f"cannot read the {what} file ({exc.strerror or exc})",
            path,
            "an existing, readable local file",
            "check the path (weights are never downloaded: point at a local file, or set HF_HUB_OFFLINE=1 "
            "to read a hub id such as timm/resnet18.a1_in1k from the local Hugging Face cache)",
        ) from None
    if not os.path.isfile(path) or size > MAX_WEIGHTS_BYTES:
        raise _refuse(
            f"the {what} file is not a regular file of at most {MAX_WEIGHTS_BYTES >> 30} GiB",
            f"{path} ({size} bytes)",
            "a model.safetensors or .pth state dict",
            "check the path",
        )


def _is_imgclf(path: str) -> bool:
    from imgclf.modelfile.format import read_container

    try:
        c = read_container(path, with_data=False)
    except Exception:  # noqa: BLE001 - any file that does not open as an imgclf container is something else
        return False
    return any(n.startswith("model.") for n in c.entries) and bool(c.metadata.get("imgclf"))


def check_start(config: TrainConfig) -> None:
    """Check ``weights``/``init_from`` before any data is read: one of them, a readable file of a known
    format; an ``init_from`` file valid and of the run's architecture.

    Raises:
        UsageError, ModelFileError: As :func:`start_weights` would, but without loading the weights.
    """
    _one_start(config)
    if config.weights:
        path = resolve_weights(os.fspath(config.weights))
        _check_file(path, "weights")
        _kind(path)
    if config.init_from:
        path = os.fspath(config.init_from)
        _check_file(path, "--init-from model")
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
            fix="drop --arch/--arch-arg: imgclf train --init-from takes them from the file",
        )


def _kind(path: str) -> str:
    """``torch``, ``imgclf`` or ``safetensors`` from the file's first bytes.

    Raises:
        UsageError: None of them.
    """
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip, or a legacy pickle
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
        return "imgclf" if _is_imgclf(path) else "safetensors"
    raise _refuse(
        "unknown weights file format",
        path,
        "model.safetensors (timm, Hugging Face), a .pth/.pt state dict or an .imgclf file",
        "point --weights at the weights file itself",
    )


def read_tensors(path: str) -> dict[str, torch.Tensor]:
    """The named tensors of a weights file: safetensors, a torch state dict, or an imgclf model file.

    Raises:
        UsageError: Unreadable, unknown format, or a pickle holding anything but tensors and containers.
    """
    path = os.fspath(path)
    _check_file(path, "weights")
    kind = _kind(path)
    if kind == "torch":
        return _torch_state_dict(path)
    if kind == "imgclf":
        from imgclf.modelfile import load

        return {k: v.detach() for k, v in load(path).model.state_dict().items()}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise _refuse(
            f"cannot read the safetensors weights file ({str(exc)[:120]})",
            path,
            "an intact model.safetensors",
            "download the file again",
        ) from None


def _torch_state_dict(path: str) -> dict[str, torch.Tensor]:
    try:
        # weights_only: the restricted unpickler builds tensors and plain containers only; anything else
        # (a pickled class, a function to call) is refused before it is constructed.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError and whatever a damaged file raises: all refused
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise _refuse(
            "the .pth file holds more than tensors (pickled objects are never loaded)",
            f"{path} ({first})",
            "a plain state dict saved with torch.save(model.state_dict(), ...)",
            "save the weights as a state dict or safetensors file in the environment that made them",
        ) from None
    for _ in range(2):  # {"state_dict": {...}} as timm and Lightning checkpoints nest it
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _NESTED if isinstance(obj.get(k), dict)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise _refuse(
            "the .pth file is not a state dict of named tensors",
            f"{path} ({type(obj).__name__})",
            "a mapping from tensor names to tensors",
            "save it with torch.save(model.state_dict(), path)",
        )
    return obj


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
        raise _refuse(
            "no tensor of the weights file matches the model",
            f"{path}: names like {', '.join(list(tensors)[:3])}",
            f"names like {', '.join(body[:3])}",
            "use weights made for this architecture (--arch), e.g. timm's model.safetensors for timm:NAME",
        )
    if missing:
        raise _refuse(
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
        raise _refuse(
            f"{len(wrong)} tensor shape(s) of the weights file differ from the model",
            f"{path}: {'; '.join(wrong[:3])}",
            "the same shapes (the same architecture and width)",
            "check --arch and --arch-arg against the weights' source",
        )
    take = {k for k in found if (k not in head or keep_head) and found[k].shape == target[k].shape}
    if keep_head and head - take:
        raise _refuse(
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
    _check_file(path, "--init-from model")
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
