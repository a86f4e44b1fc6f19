"""The failed-check error every model-file reader raises, and the strict JSON they parse with.

Usage::

    raise invalid(path, "header is not a JSON object")       # ModelFileError: invalid model file 'PATH': ...
    require(path, isinstance(v, dict), "provenance", "an object", v)
    manifest = strict_json(text, "manifest", path)            # no duplicate keys, NaN, or huge documents
"""

from __future__ import annotations

import json
import math
from typing import Any

from imgclf.errors import ModelFileError

FIX = "use an intact model file written by `imgclf train` or imgclf.save()"
MAX_JSON_VALUES = 2_000_000  # bounds the memory a hostile 16 MiB header can make json.loads allocate


def invalid(
    path: str,
    check: str,
    *,
    fix: str = FIX,
    received: object | None = None,
    expected: object | None = None,
) -> ModelFileError:
    """The one-line :class:`ModelFileError` for a failed check: ``invalid model file 'PATH': CHECK``."""
    return ModelFileError(
        f"invalid model file {path!r}: {check}", received=received, expected=expected, fix=fix
    )


def strict_json(text: str, what: str, path: str) -> Any:
    """Parse JSON rejecting duplicate keys, NaN/Infinity constants, excessive size and nesting.

    Raises:
        ModelFileError: Naming ``what`` (e.g. "header", "manifest") and the problem.
    """
    values = text.count(",") + text.count("[") + text.count("{")
    if values > MAX_JSON_VALUES:
        raise invalid(path, f"{what} holds too many JSON values ({values} > {MAX_JSON_VALUES})")

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise invalid(path, f"duplicate key {key[:80]!r} in {what}")
            out[key] = value
        return out

    def no_constants(name: str) -> Any:
        raise invalid(path, f"{what} contains {name}, which is not valid JSON")

    try:
        return json.loads(text, object_pairs_hook=no_dupes, parse_constant=no_constants)
    except ModelFileError:
        raise
    except RecursionError:
        raise invalid(path, f"{what} JSON is nested too deeply") from None
    except ValueError as exc:
        raise invalid(path, f"{what} is not valid JSON ({str(exc)[:120]})") from None


def is_int(v: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and math.isfinite(v))


def require(path: str, ok: bool, field: str, expected: str, value: Any) -> None:
    """Raise ``invalid`` (field malformed, with the value received and what was expected) unless ``ok``."""
    if not ok:
        raise invalid(
            path, f"manifest field {field} is malformed", received=repr(value)[:100], expected=expected
        )
