"""Weight files a run can start from, read safely: safetensors, ``.pth``/``.pt`` state dicts, imgclf files.

Always a local path, never a download (a Hugging Face hub id is read from the local cache only with
``HF_HUB_OFFLINE=1``). ``.pth`` files are read with ``torch.load(weights_only=True)``, whose unpickler
builds only tensors and plain containers: a file holding other objects (a pickled class, a function to
call) is refused before any of its code can run.

Usage::

    path = resolve_weights("model.safetensors")       # or "timm/resnet18.a1_in1k" with HF_HUB_OFFLINE=1
    tensors = read_tensors(path)                      # {name: tensor}
"""

from __future__ import annotations

import hashlib
import os
import re

import torch

from imgclf.errors import UsageError

MAX_WEIGHTS_BYTES = 8 << 30  # larger than any single-file backbone imgclf can train on one machine
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


def refuse(problem: str, path: str, expected: str, fix: str) -> UsageError:
    return UsageError(problem, received=path, expected=expected, fix=fix)


def check_file(path: str, what: str) -> None:
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise refuse(
            f"cannot read the {what} file ({exc.strerror or exc})",
            path,
            "an existing, readable local file",
            "check the path (weights are never downloaded: point at a local file, or set HF_HUB_OFFLINE=1 "
            "to read a hub id such as timm/resnet18.a1_in1k from the local Hugging Face cache)",
        ) from None
    if not os.path.isfile(path) or size > MAX_WEIGHTS_BYTES:
        raise refuse(
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


def file_kind(path: str) -> str:
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
    raise refuse(
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
    check_file(path, "weights")
    kind = file_kind(path)
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
        raise refuse(
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
        raise refuse(
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
        raise refuse(
            "the .pth file is not a state dict of named tensors",
            f"{path} ({type(obj).__name__})",
            "a mapping from tensor names to tensors",
            "save it with torch.save(model.state_dict(), path)",
        )
    return obj
