"""Digests: SHA-256 of the canonical manifest and of every tensor, as stored in and checked on model files.

The definitions here are part of the file format (``docs/format.md``): changing them changes what every
existing file's digests mean, so they only ever change with a new format version.

Usage::

    text = canonical_json(manifest)              # the exact text stored in the file
    manifest["integrity"] = {"manifest_sha256": manifest_digest(manifest), "tensors_sha256": ...}
    ok = container_digest(container) == manifest["integrity"]["tensors_sha256"]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from imgclf.modelfile.format import Container


def canonical_json(obj: Any) -> str:
    """The one JSON serialisation of a manifest: sorted keys, no spaces, ASCII only, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def manifest_digest(body: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of the manifest without its ``integrity`` field."""
    text = canonical_json({k: v for k, v in body.items() if k != "integrity"})
    return hashlib.sha256(text.encode()).hexdigest()


def tensors_digest(items: Iterable[tuple[str, str, tuple[int, ...], memoryview | bytes]]) -> str:
    """SHA-256 (hex) over every tensor in name order: ``name NUL dtype NUL [shape] NUL nbytes NUL bytes``.

    ``[shape]`` is written like ``[2, 8]`` (``[]`` for a scalar); names sort by code point.
    """
    h = hashlib.sha256()
    for name, dtype, shape, data in sorted(items, key=lambda t: t[0]):
        h.update(f"{name}\x00{dtype}\x00{list(shape)}\x00{len(data)}\x00".encode())
        h.update(data)
    return h.hexdigest()


def container_digest(c: Container) -> str:
    """:func:`tensors_digest` of every tensor in a container read with its data."""
    return tensors_digest((e.name, e.dtype, e.shape, c.raw_bytes(e.name)) for e in c.entries.values())
