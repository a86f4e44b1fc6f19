"""Architecture registry: a name maps to a builder; model files store the name and the builder args.

Nothing is ever imported by a name read from a file: only names registered here can be built. This module
imports no model (so there is no cycle): each architecture module registers itself, and the package
:mod:`imgclf.models` imports them all, so any ``from imgclf.models import registry`` sees every builder.

Usage::

    from imgclf.models import registry
    model = registry.build("seed_resnet", num_classes=2, input_size=(64, 64))
    args = registry.resolve_args("small_cnn", {"widths": [8, 16, 32]})
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from imgclf._settings import did_you_mean
from imgclf.config import MAX_SIDE
from imgclf.errors import UsageError

MAX_WIDTH = 4096
MAX_BLOCKS = 256
MAX_CLASSES = 100_000


@dataclass(frozen=True)
class ArchInfo:
    """A registered architecture: its builder, default args and a one-line description."""

    name: str
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any]
    description: str


_REGISTRY: dict[str, ArchInfo] = {}


@dataclass(frozen=True)
class Family:
    """Architectures named ``PREFIX:NAME`` built by another library (``timm:resnet18``).

    The name after the prefix is data: it is checked for its spelling here and only ever passed to the
    library's own registry (``timm.create_model``), never imported or looked up as code.
    """

    prefix: str
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any]
    description: str
    pin: Callable[[dict[str, Any]], dict[str, Any]] | None = None


_FAMILIES: dict[str, Family] = {}
# A library's model name (timm: ``resnet18``, ``vit_tiny_patch16_224.augreg_in21k``).
_MEMBER = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,127}")


def register(name: str, defaults: dict[str, Any], description: str) -> Callable:
    """Decorator adding ``builder(num_classes, input_size, **args)`` to the registry."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ArchInfo(name, builder, dict(defaults), description)
        return builder

    return wrap


def register_family(
    prefix: str,
    defaults: dict[str, Any],
    description: str,
    pin: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Callable:
    """Decorator adding ``builder(member, num_classes, input_size, **args)`` for names ``PREFIX:MEMBER``.

    ``pin(args)`` fills in what a new model file records about the library (its version).
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _FAMILIES[prefix] = Family(prefix, builder, dict(defaults), description, pin)
        return builder

    return wrap


def names() -> list[str]:
    """Registered architecture names, sorted (families' ``PREFIX:NAME`` names are not listed here)."""
    return sorted(_REGISTRY)


def families() -> dict[str, Family]:
    """The registered families by prefix."""
    return dict(_FAMILIES)


def split_family(name: object) -> tuple[Family, str] | None:
    """``(family, member)`` for a ``PREFIX:MEMBER`` name of a registered family, else ``None``.

    Raises:
        UsageError: The prefix is a family's but the member is not a plausible model name.
    """
    if not isinstance(name, str) or ":" not in name:
        return None
    prefix, member = name.split(":", 1)
    family = _FAMILIES.get(prefix)
    if family is None:
        return None
    if not _MEMBER.fullmatch(member):
        raise UsageError(
            f"bad {prefix} model name",
            received=repr(member)[:100],
            expected="lower-case letters, digits, '_', '.', '-' (at most 128)",
            fix=f"use a name such as {prefix}:resnet18",
        )
    return family, member


def info(name: object) -> ArchInfo:
    """Return the registry entry for ``name``; raise :class:`UsageError` if it is not registered."""
    member = split_family(name)
    if member is not None:
        family, sub = member
        return ArchInfo(
            str(name), functools.partial(family.builder, sub), family.defaults, family.description
        )
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UsageError(
            "unknown architecture",
            received=repr(name)[:100],
            expected="one of " + ", ".join(names() + [f"{p}:NAME" for p in sorted(_FAMILIES)]),
            fix="use a registered architecture name" + did_you_mean(str(name), names()),
        )
    return _REGISTRY[name]


def _same_type(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list) and not default:
        ok = isinstance(value, list)  # a list of records (keras_graph's layers): the builder checks each
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        value = list(value) if ok else value
    else:  # pragma: no cover - defaults are only the types above
        ok = False
    if not ok:
        raise UsageError(
            f"architecture argument {key!r} has the wrong type",
            received=repr(value)[:100],
            expected=f"{type(default).__name__} like {default!r}",
            fix=f"give {key} the same kind of value as its default",
        )
    return value


def resolve_args(name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``args`` over the architecture's defaults, rejecting unknown keys and wrong types.

    Returns:
        The complete builder args (JSON-able), as stored in model files.
    """
    entry = info(name)
    args = dict(args or {})
    unknown = sorted(set(args) - set(entry.defaults))
    if unknown:
        raise UsageError(
            f"unknown argument(s) for architecture {name!r}",
            received=", ".join(unknown),
            expected="one of " + ", ".join(sorted(entry.defaults)),
            fix="remove or correct the argument names",
        )
    merged = {k: list(v) if isinstance(v, tuple) else v for k, v in entry.defaults.items()}
    for key, value in args.items():
        merged[key] = _same_type(key, value, entry.defaults[key])
    return merged


def pinned_args(name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """``args`` plus what a family records about its library (timm's version) when unset; others as given."""
    args = dict(args or {})
    member = split_family(name)
    if member is not None and member[0].pin is not None:
        resolve_args(name, args)  # wrong keys or types fail here, as for any architecture
        args = member[0].pin(args)
    return args


def build(
    name: str, num_classes: int, input_size: tuple[int, int] = (64, 64), args: dict[str, Any] | None = None
) -> nn.Module:
    """Build a freshly initialised model from the registry.

    Args:
        name: Registered architecture name.
        num_classes: Size of the output layer.
        input_size: ``(height, width)`` of the input images.
        args: Builder args (missing ones take the defaults).

    Raises:
        UsageError: Unknown name, bad args or out-of-range sizes.
    """
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or not 2 <= num_classes <= MAX_CLASSES
    ):
        raise UsageError(
            "number of classes out of range",
            received=repr(num_classes),
            expected=f"an integer in [2, {MAX_CLASSES}]",
            fix="check the class names",
        )
    size = tuple(input_size) if isinstance(input_size, (tuple, list)) else ()
    if len(size) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE for v in size
    ):
        raise UsageError(
            "input size out of range",
            received=repr(input_size)[:100],
            expected=f"(height, width), integers in [1, {MAX_SIDE}]",
            fix="check --size",
        )
    if args is not None and not isinstance(args, dict):
        raise UsageError(
            "architecture arguments must be a mapping",
            received=type(args).__name__,
            expected="a dict of builder arguments",
            fix="pass args as a dict",
        )
    full = resolve_args(name, args)
    return info(name).builder(num_classes, size, **full)


def build_meta(
    name: str, num_classes: int, input_size: tuple[int, int] = (64, 64), args: dict[str, Any] | None = None
) -> nn.Module:
    """:func:`build` on the meta device: shapes only, no memory, no initialisation.

    Used to check architecture args early, to size checkpoints and to check a model file's tensors
    against the architecture before anything is allocated.
    """
    with torch.device("meta"):
        return build(name, num_classes, input_size, args)


def parameter_count(
    name: str, num_classes: int, input_size: tuple[int, int], args: dict[str, Any] | None = None
) -> int:
    """Trainable parameters of ``name`` for ``num_classes`` classes (built on the meta device)."""
    return sum(p.numel() for p in build_meta(name, num_classes, input_size, args).parameters())


def l2_groups(model: nn.Module) -> list[tuple[float, list[nn.Parameter]]]:
    """Keras-style L2 coefficients per parameter group (``loss += c * sum(w**2)``).

    Models may define ``l2_groups()``; otherwise every parameter gets coefficient 0.
    """
    if hasattr(model, "l2_groups"):
        return model.l2_groups()
    return [(0.0, [p for p in model.parameters() if p.requires_grad])]


def check_widths(name: str, values: list[int], count: int | None = None) -> None:
    """Check a builder's list of layer widths (used by every builder, here and in its own module).

    Args:
        name: The builder argument's name, for the message.
        values: The widths.
        count: The required number of widths (any number if ``None``).

    Raises:
        UsageError: Wrong length, empty, or a width outside ``[1, MAX_WIDTH]``.
    """
    if count is not None and len(values) != count:
        raise UsageError(
            f"{name} has the wrong length",
            received=len(values),
            expected=count,
            fix=f"give {name} {count} values",
        )
    if not values or any(v < 1 or v > MAX_WIDTH for v in values):
        raise UsageError(
            f"{name} out of range",
            received=values,
            expected=f"values in [1, {MAX_WIDTH}]",
            fix=f"choose smaller {name}",
        )
