"""The machinery behind the settings dataclasses: dict round-trips with strict key and type checks.

A frozen dataclass that derives from :class:`Settings` gets ``to_dict``, ``from_dict`` (unknown keys and
wrong types rejected, JSON lists turned into tuples, nested settings built recursively) and ``replace``;
it supplies ``validated()``, which checks its bounds (often with :func:`check_number`).

Usage::

    @dataclass(frozen=True)
    class Spec(Settings):
        size: int = 64
        def validated(self) -> Spec:
            check_number("size", self.size, 1, 4096)
            return self
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from imgclf.errors import UsageError

__all__ = ["Settings", "check_number", "check_integer"]

T = TypeVar("T", bound="Settings")


def check_number(name: str, value: float, lo: float, hi: float) -> None:
    """Raise :class:`UsageError` unless setting ``name`` is a finite number in ``[lo, hi]``."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not math.isfinite(value):
        raise UsageError(
            f"setting {name!r} is not a finite number",
            received=repr(value),
            expected=f"a number in [{lo}, {hi}]",
            fix=f"set {name} to a number",
        )
    if not lo <= value <= hi:
        raise UsageError(
            f"setting {name!r} is out of range",
            received=value,
            expected=f"a number in [{lo}, {hi}]",
            fix=f"set {name} within those bounds",
        )


def check_integer(name: str, value: object, lo: int, hi: int, *, label: str | None = None) -> None:
    """Raise :class:`UsageError` unless ``value`` is an integer (not a bool) in ``[lo, hi]``.

    ``label`` names the setting in the message (default ``setting 'NAME'``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UsageError(
            f"{label or f'setting {name!r}'} is out of range",
            received=repr(value),
            expected=f"an integer in [{lo}, {hi}]",
            fix=f"set {name} to an integer in [{lo}, {hi}]",
        )


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a (simple) type hint, converting JSON lists to tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(name, value, option)
            except UsageError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise UsageError(
                f"setting {name!r} has the wrong type",
                received=repr(value),
                expected="a list",
                fix=f"give {name} as a list",
            )
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(name, v, args[0]) for v in value)
        if len(value) != len(args):
            raise UsageError(
                f"setting {name!r} has the wrong length",
                received=len(value),
                expected=f"{len(args)} values",
                fix=f"give {name} exactly {len(args)} values",
            )
        return tuple(_coerce(name, v, a) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise UsageError(
                f"setting {name!r} has the wrong type",
                received=repr(value),
                expected="a mapping with string keys",
                fix=f"give {name} as a JSON object",
            )
        return dict(value)
    if isinstance(hint, type) and issubclass(hint, Settings):
        if isinstance(value, hint):
            return value
        return hint.from_dict(value, where=name)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(
                f"setting {name!r} has the wrong type",
                received=repr(value),
                expected="a number",
                fix=f"give {name} as a number",
            )
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(
                f"setting {name!r} has the wrong type",
                received=repr(value),
                expected="an integer",
                fix=f"give {name} as a whole number",
            )
        return value
    if hint in (bool, str):
        if not isinstance(value, hint):
            raise UsageError(
                f"setting {name!r} has the wrong type",
                received=repr(value),
                expected=hint.__name__,
                fix=f"give {name} as a {hint.__name__}",
            )
        return value
    return value


class Settings:
    """Shared to_dict/from_dict for the frozen settings dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-able dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, Settings):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls: type[T], data: Any, *, where: str | None = None) -> T:
        """Build settings from a dict, rejecting unknown keys and wrong types, then validate.

        Args:
            data: A mapping as produced by :meth:`to_dict`; missing keys take their defaults.
            where: Name of the enclosing setting, used in error messages.

        Raises:
            UsageError: On unknown keys, wrong types or out-of-range values.
        """
        label = where or cls.__name__
        if not isinstance(data, dict):
            raise UsageError(
                f"{label} must be a mapping",
                received=type(data).__name__,
                expected="a JSON object",
                fix="pass a dict of settings",
            )
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(
                f"unknown {label} setting(s)",
                received=", ".join(map(str, unknown)),
                expected="one of " + ", ".join(sorted(names)),
                fix="remove or correct the misspelled keys",
            )
        kwargs = {k: _coerce(f"{label}.{k}", v, hints[k]) for k, v in data.items()}
        return cls(**kwargs).validated()  # type: ignore[attr-defined]

    def replace(self: T, **changes: Any) -> T:
        """Return a copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes).validated()  # type: ignore[type-var,attr-defined]
