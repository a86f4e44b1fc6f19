"""``timm:NAME``: any backbone from timm (an optional extra) with a new head for the dataset's classes.

A model file stores the architecture as data: ``timm:resnet18`` plus builder args (the timm version that
built it, dropout rates). Loading builds the model with ``timm.create_model(NAME, pretrained=False, ...)``
(timm never downloads anything with ``pretrained=False``) and then loads the file's tensors strictly, so
a timm version that builds other tensor names or shapes is refused by the strict load, not guessed at.
timm is imported only when such a model is built: ``import imgclf`` and the other architectures never
need it.

Usage::

    from imgclf.models import registry
    model = registry.build("timm:resnet18", num_classes=3, input_size=(32, 32))
    spec = data_config("resnet18")   # timm's preprocessing for it: size, mean, std, interpolation
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from torch import nn

from imgclf.config import PreprocessSpec, TrainConfig
from imgclf.errors import UsageError
from imgclf.models.registry import register_family

INSTALL = "pip install 'imgclf[timm]'"
# Names shown by ``imgclf train --list-archs`` (any timm model name works).
SUGGESTED = (
    "resnet18",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "convnext_atto",
    "vit_tiny_patch16_224",
)
_INTERPOLATIONS = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic", "lanczos": "lanczos"}


def installed_version() -> str | None:
    """The installed timm's version (read without importing timm), or ``None``."""
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None


def require_timm() -> Any:
    """Import and return timm.

    Raises:
        UsageError: timm is not installed (the message names the install command).
    """
    try:
        timm = _import_timm()
    except ImportError:
        raise UsageError(
            "timm is not installed",
            received="an architecture timm:NAME",
            expected="the optional timm extra",
            fix=INSTALL,
        ) from None
    except Exception as exc:  # noqa: BLE001 - e.g. a torchvision built for another torch fails on import
        raise UsageError(
            "timm is installed but cannot be imported",
            received=f"{type(exc).__name__}: {str(exc)[:200]}",
            expected="timm with a torchvision built for the installed torch",
            fix=f"{INSTALL} in an environment whose torchvision matches torch "
            "(python -c 'import torchvision' shows the cause)",
        ) from None
    return timm


# torchvision's compiled operators (nms, roi_align, ...) that its Python code registers fake kernels for
# at import without checking that they exist. A torchvision built for a CUDA torch beside a CPU torch
# cannot load its compiled library, so those registrations fail and `import torchvision` (hence timm,
# which imports torchvision.ops) raises. The backbones never call these detection operators: declaring
# their schemas (without kernels; a call still fails loudly) lets the pure-Python parts import.
_TORCHVISION_UNGUARDED_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_declared: list[Any] = []  # the torch.library.Library holding the declarations (kept alive with the process)


def _import_timm() -> Any:
    try:
        import timm
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _declared:
            raise
        _declare_torchvision_ops()
        import timm
    return timm


def _declare_torchvision_ops() -> None:
    """Declare the operators a torchvision whose compiled library did not load needs to import."""
    import sys

    import torch

    for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
        del sys.modules[name]  # half-imported by the failed attempt
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _TORCHVISION_UNGUARDED_OPS:
        library.define(schema)
    _declared.append(library)


def _pin(args: dict[str, Any]) -> dict[str, Any]:
    if not args.get("timm_version"):
        args = {**args, "timm_version": installed_version() or ""}
    return args


def _create(
    timm: Any, name: str, num_classes: int, input_size: tuple[int, int], kwargs: dict[str, Any]
) -> Any:
    try:
        # Transformers fix their position embeddings to the input size; convolutional nets take any size.
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, img_size=input_size, **kwargs
        )
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


@register_family(
    "timm",
    defaults={"timm_version": "", "drop_rate": 0.0, "drop_path_rate": 0.0},
    description="a timm backbone (pip install 'imgclf[timm]'), e.g. timm:resnet18, with a new head",
    pin=_pin,
)
def timm_model(name: str, num_classes: int, input_size: tuple[int, int], **args: Any) -> nn.Module:
    """Build timm's ``name`` with random weights and a ``num_classes`` head.

    Args:
        name: A timm model name (``timm.list_models()``).
        num_classes: Size of the new head.
        input_size: ``(height, width)``; passed to models whose shapes depend on it (ViTs).
        **args: ``timm_version`` (recorded, not required to match: the strict weight load decides),
            ``drop_rate`` and ``drop_path_rate`` (passed to timm when non-zero).

    Raises:
        UsageError: timm is missing, the name is not a timm model, or timm refuses the arguments.
    """
    timm = require_timm()
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise UsageError(
            "unknown timm model",
            received=name,
            expected=f"a name from timm.list_models() (timm {installed_version()})",
            fix=f"did you mean {', '.join('timm:' + c for c in close)}?" if close else "check the name",
        )
    for key in ("drop_rate", "drop_path_rate"):
        if not 0.0 <= args[key] < 1.0:
            raise UsageError(
                f"{key} out of range", received=args[key], expected="0 <= value < 1", fix="use 0.0 to 0.5"
            )
    kwargs = {k: args[k] for k in ("drop_rate", "drop_path_rate") if args[k]}
    try:
        model = _create(timm, name, num_classes, input_size, kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise UsageError(
            f"timm cannot build {name}",
            received=f"{type(exc).__name__}: {str(exc)[:200]}",
            expected=f"arguments timm {installed_version()} accepts for {name}",
            fix="check --arch-arg values and --size (a transformer needs a size its patch size divides)",
        ) from None
    return model


def head_module(model: nn.Module) -> nn.Module | None:
    """The classification head: what a new task replaces (``None`` if the model has no linear layer).

    timm models name theirs (``get_classifier``); for the others the last ``nn.Linear`` is the head.
    """
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    if isinstance(head, nn.Module) and list(head.parameters()):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def head_names(model: nn.Module) -> set[str]:
    """Names (as in ``state_dict``) of the classification head's tensors (:func:`head_module`)."""
    head = head_module(model)
    if head is None:
        return set()
    ids = {id(t) for t in [*head.parameters(), *head.buffers()]}
    return {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in ids}


def data_config(name: str, input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """timm's preprocessing for ``name`` as :class:`~imgclf.config.PreprocessSpec` fields.

    ``resolve_data_config`` owns timm's precedence (the model's pretrained configuration). The crop
    (``crop_pct``) is not applied: imgclf resizes the whole image to the input size, the same in
    training and prediction.

    Args:
        name: A timm model name.
        input_size: ``(height, width)`` to use instead of timm's.

    Returns:
        ``{"height", "width", "interpolation", "rescale", "mean", "std"}``.
    """
    timm = require_timm()
    from timm.data import resolve_data_config

    with _meta():
        model = timm.create_model(name, pretrained=False)
    cfg = resolve_data_config({}, model=model)
    _, height, width = cfg["input_size"]
    if input_size is not None:
        height, width = input_size
    return {
        "height": int(height),
        "width": int(width),
        "interpolation": _INTERPOLATIONS.get(str(cfg.get("interpolation")), "bilinear"),
        "rescale": 1.0 / 255.0,
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
    }


def arch_preprocess(arch: str) -> dict[str, Any]:
    """The preprocessing ``arch`` was pretrained with, as PreprocessSpec fields (``{}`` for our own archs).

    Raises:
        UsageError: A ``timm:NAME`` architecture without timm, or a name timm does not know.
    """
    from imgclf.models import registry

    member = registry.split_family(arch)
    if member is None or member[0].prefix != "timm":
        return {}
    return data_config(member[1])


def with_arch_preprocess(config: TrainConfig) -> TrainConfig:
    """``config`` with its architecture's preprocessing when none was given (the one place that decides).

    A ``timm:NAME`` backbone gets timm's size, mean/std and interpolation (:func:`data_config`); our own
    architectures keep the default spec; a given ``preprocess``, or a start from another imgclf model file
    (``init_from``: its preprocessing must be given to match the file), is left as it is.
    """
    if config.preprocess_given or config.init_from:
        return config
    fields = arch_preprocess(config.arch)
    return config.replace(preprocess=PreprocessSpec.from_dict(fields)) if fields else config


def _meta() -> Any:
    import torch

    return torch.device("meta")
