"""The model file's provenance: how a model came about (recipe, data, metrics, history, versions).

Provenance is informational, never used to build or run the model: unknown keys are kept, but the keys
imgclf writes must have the types it writes, and the whole block is capped at ``MAX_PROVENANCE_BYTES``
(at save time the oldest history records are dropped to fit, and ``history_omitted`` says how many).

Usage::

    provenance = fit_provenance(provenance)              # before saving
    check_provenance(path, manifest["provenance"])       # when loading
"""

from __future__ import annotations

from typing import Any

from imgclf.modelfile.checks import invalid, is_num, require
from imgclf.modelfile.digests import canonical_json

MAX_PROVENANCE_BYTES = 4 * 1024 * 1024


def _mapping(path: str, prov: dict[str, Any], key: str, values: Any, expected: str) -> None:
    if key in prov:
        v = prov[key]
        require(
            path, isinstance(v, dict) and all(values(x) for x in v.values()), f"provenance.{key}", expected, v
        )


def check_provenance(path: str, prov: Any) -> dict[str, Any]:
    """Informational: unknown keys are kept, known keys must have the types imgclf writes."""
    require(path, isinstance(prov, dict), "provenance", "an object", prov)
    size = len(canonical_json(prov))
    if size > MAX_PROVENANCE_BYTES:
        raise invalid(path, f"provenance is too large ({size} bytes > {MAX_PROVENANCE_BYTES})")
    types = {
        "created": (str,),
        "device": (str,),
        "epoch": (int, type(None)),
        "epochs_run": (int,),
        "seed": (int,),
        "stopped_early": (bool,),
        "training": (dict,),
        "data": (dict,),
        "history_omitted": (int,),
    }
    for key, allowed in types.items():
        if key in prov:
            v = prov[key]
            ok = isinstance(v, allowed) and (not isinstance(v, bool) or bool in allowed)
            require(path, ok, f"provenance.{key}", " or ".join(t.__name__ for t in allowed), v)
    _mapping(path, prov, "versions", lambda x: isinstance(x, str), "an object of version strings")
    _mapping(path, prov, "metrics", lambda x: x is None or is_num(x), "an object of numbers")
    if "history" in prov:
        h = prov["history"]
        ok = isinstance(h, list) and all(
            isinstance(r, dict) and all(x is None or is_num(x) for x in r.values()) for r in h
        )
        require(path, ok, "provenance.history", "a list of objects of numbers", h)
    data = prov.get("data", {})
    if "fingerprint" in data:
        require(
            path,
            isinstance(data["fingerprint"], str),
            "provenance.data.fingerprint",
            "a string",
            data["fingerprint"],
        )
    if "counts" in data:
        require(path, isinstance(data["counts"], dict), "provenance.data.counts", "an object", data["counts"])
    return prov


def fit_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """Drop the oldest history records if provenance would exceed the format's cap (never the rest)."""
    history = provenance.get("history")
    if isinstance(history, list):
        dropped = 0
        while history and len(canonical_json(provenance)) > MAX_PROVENANCE_BYTES:
            cut = max(1, len(history) // 10)
            history, dropped = history[cut:], dropped + cut
            provenance = {**provenance, "history": history, "history_omitted": dropped}
    return provenance
