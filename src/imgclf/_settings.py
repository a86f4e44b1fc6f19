"""The machinery behind the settings dataclasses: dict round-trips with strict key and type checks.

A frozen dataclass that derives from :class:`Settings` gets ``to_dict``, ``from_dict`` (unknown keys and
wrong types rejected with "did you mean", JSON lists turned into tuples, nested settings built recursively)
and ``replace``; it may supply ``validated()`` for checks beyond a field's own range. Construction
validates: ``Literal`` fields are checked against their choices and fields declared with ``bounds``
against their range (here, in one place), then ``validated()`` runs, so an invalid settings object cannot
exist. :func:`setting` declares a field with its bounds and the help text the command line shows (the CLI
builds its flags and "(default X)" from these fields).

Usage::

    @dataclass(frozen=True)
    class Spec(Settings):
        size: int = setting(64, "image side in pixels", bounds=(1, 4096))
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from typing import Any, Literal, TypeVar

from imgclf.errors import UsageError

T = TypeVar("T", bound="Settings")


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002 - the argparse word
    *,
    factory: Any = dataclasses.MISSING,
    flag: str | None = "",
    label: str | None = None,
    default_text: str | None = None,
    bounds: tuple[float, float] | None = None,
) -> Any:
    """A dataclass field with the metadata the command line turns into a flag.

    Args:
        default: The default value (or use ``factory``).
        help: One line of help; the CLI appends "(default X)" from the default itself.
        factory: Default factory for mutable defaults.
        flag: The flag name; ``""`` derives ``--field-name``; ``None`` means no flag of its own.
        label: How error messages name the setting (default ``setting 'NAME'``).
        default_text: What "(default X)" says when the default is computed elsewhere (e.g. ``None``).
        bounds: ``(lo, hi)``, inclusive: checked at construction with :func:`check_integer` for an
            ``int`` field, else :func:`check_number` (``None`` passes where the type allows it).
    """
    meta = {"help": help, "flag": flag, "label": label, "default_text": default_text, "bounds": bounds}
    return dataclasses.field(default=default, default_factory=factory, metadata=meta)


def choices_of(hint: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` type hint (optionally ``| None``), else ``None``."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if typing.get_origin(option) is Literal:
                return typing.get_args(option)
    return None


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a settings class (cached: they are needed at every construction)."""
    return typing.get_type_hints(cls)


def did_you_mean(word: str, candidates: typing.Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def _check_bounds(settings: Any, hints: dict[str, Any]) -> None:
    """Check every field declared with ``bounds`` (in field order); raise :class:`UsageError` otherwise."""
    for f in dataclasses.fields(settings):
        bounds, value, hint = f.metadata.get("bounds"), getattr(settings, f.name), hints[f.name]
        if bounds is None or (value is None and type(None) in typing.get_args(hint)):
            continue
        if int in (hint, *typing.get_args(hint)):
            check_integer(f.name, value, *bounds, label=f.metadata.get("label"))
        else:
            check_number(f.name, value, *bounds)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a (simple) type hint, converting JSON lists to tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(name, value, typing.get_args(hint))
    if origin is tuple:
        return _coerce_tuple(name, value, typing.get_args(hint))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _wrong_type(name, value, "a mapping with string keys", "as a JSON object")
        return dict(value)
    if isinstance(hint, type) and issubclass(hint, Settings):
        if isinstance(value, hint):
            return value
        return hint.from_dict(value, where=name)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(name, value, "a number", "as a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(name, value, "an integer", "as a whole number")
        return value
    if choices_of(hint) is not None:  # the choice itself is checked at construction, in one place
        hint = str
    if hint in (bool, str) and not isinstance(value, hint):
        raise _wrong_type(name, value, hint.__name__, f"as a {hint.__name__}")
    return value


def _coerce_union(name: str, value: Any, options: tuple[Any, ...]) -> Any:
    """``value`` as the first option of a ``Union`` it fits; else the error of the first option."""
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


def _coerce_tuple(name: str, value: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``value`` (a list or tuple) as a tuple of ``args`` (``(T, ...)``: any length)."""
    if not isinstance(value, (list, tuple)):
        raise _wrong_type(name, value, "a list", "as a list")
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


def _wrong_type(name: str, value: Any, expected: str, how: str) -> UsageError:
    """The "has the wrong type" error for setting ``name``; ``how`` completes "give NAME ..."."""
    message = f"setting {name!r} has the wrong type"
    return UsageError(message, received=repr(value), expected=expected, fix=f"give {name} {how}")


class Settings:
    """Shared to_dict/from_dict for the frozen settings dataclasses; construction validates."""

    def __post_init__(self) -> None:
        hints = type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            choices = choices_of(hints[f.name])
            value = getattr(self, f.name)
            if choices is not None and value not in choices and not (value is None and None in choices):
                label = f.metadata.get("label") or f.name
                raise UsageError(
                    f"unknown {label}",
                    received=repr(value)[:100],
                    expected=" | ".join(map(str, choices)),
                    fix="pick one of the listed values" + did_you_mean(str(value), map(str, choices)),
                )
        _check_bounds(self, hints)
        self.validated()  # type: ignore[attr-defined]

    def validated(self: T) -> T:
        """Return self after checking every bound (subclasses add their checks)."""
        return self

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
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            suggestions = "".join(did_you_mean(str(k), names) for k in unknown)
            raise UsageError(
                f"unknown {label} setting(s)",
                received=", ".join(map(str, unknown)),
                expected="one of " + ", ".join(sorted(names)),
                fix="remove or correct the misspelled keys" + suggestions,
            )
        hints = type_hints(cls)
        kwargs = {k: _coerce(f"{label}.{k}", v, hints[k]) for k, v in data.items()}
        return cls(**kwargs)

    def replace(self: T, **changes: Any) -> T:
        """Return a copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
