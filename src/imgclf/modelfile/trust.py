"""The manifest's optional trust blocks: ``calibration`` (a temperature) and ``ood`` (an out-of-distribution
threshold). Files without them load as before; the classifier then says "no calibration" / "no OOD
threshold" and behaves exactly as such a file always did.

Usage::

    blocks = check_trust(path, manifest)      # {"calibration": {...}} or {} ; raises ModelFileError
    describe_trust(manifest)                  # ["calibration: temperature 1.83 ...", "no OOD threshold"]
"""

from __future__ import annotations

from typing import Any

from imgclf.modelfile.checks import is_int, is_num, require

OPTIONAL_FIELDS = frozenset({"calibration", "ood"})
# Kept in step with imgclf.calibration's bounds (which the modelfile layer cannot import).
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 100.0
OOD_SCORES = ("feature_distance",)
MAX_OOD_VALUES = 65536  # numbers in the per-class means (imgclf.ood stores no more)
_CALIBRATION = {"temperature": is_num, "split": lambda v: isinstance(v, str), "images": is_int}
_CALIBRATION_INFO = {"ece_before", "ece_after"}
_OOD = {
    "score": lambda v: v in OOD_SCORES,
    "threshold": is_num,
    "split": lambda v: isinstance(v, str),
    "layer": lambda v: isinstance(v, str) and 0 < len(v) <= 1000,
    "means": lambda v: isinstance(v, list) and 0 < len(v) and all(isinstance(r, list) for r in v),
    "scale": lambda v: (
        isinstance(v, list) and 0 < len(v) <= MAX_OOD_VALUES and all(is_num(x) and x > 0 for x in v)
    ),
}
_OOD_INFO = {"images", "flagged_share", "quantile", "moments"}
MOMENTS = 6  # per-channel mean and standard deviation of the input


def _block(path: str, name: str, block: Any, required: dict[str, Any], info: set[str]) -> None:
    expected = f"an object with {', '.join(required)} (and optionally {', '.join(sorted(info))})"
    ok = isinstance(block, dict) and set(required) <= set(block) <= set(required) | info
    require(path, ok, name, expected, block)
    for key, check in required.items():
        require(path, check(block[key]), f"{name}.{key}", expected, block[key])
    for key in info & set(block) - {"moments"}:  # moments: its own check (_moments)
        require(path, is_num(block[key]), f"{name}.{key}", "a number", block[key])


def _moments(path: str, m: Any, classes: int) -> None:
    """The optional colour-statistics check: ``means`` (a row of 6 per class), ``scale``, ``threshold``."""
    expected = f"means ({classes} rows of {MOMENTS} numbers), scale ({MOMENTS} positive numbers), threshold"
    ok = (
        isinstance(m, dict)
        and set(m) == {"means", "scale", "threshold"}
        and is_num(m["threshold"])
        and isinstance(m["scale"], list)
        and len(m["scale"]) == MOMENTS
        and all(is_num(x) and x > 0 for x in m["scale"])
        and isinstance(m["means"], list)
        and len(m["means"]) == classes
        and all(isinstance(r, list) and len(r) == MOMENTS and all(is_num(x) for x in r) for r in m["means"])
    )
    require(path, ok, "ood.moments", expected, str(m)[:80])


def check_trust(path: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Validate the optional ``calibration`` and ``ood`` blocks present in ``manifest``; return them.

    Raises:
        ModelFileError: If a block is malformed (naming the field and what was expected).
    """
    out = {}
    if "calibration" in manifest:
        c = manifest["calibration"]
        _block(path, "calibration", c, _CALIBRATION, _CALIBRATION_INFO)
        t = c["temperature"]
        require(
            path,
            MIN_TEMPERATURE <= t <= MAX_TEMPERATURE,
            "calibration.temperature",
            f"{MIN_TEMPERATURE} to {MAX_TEMPERATURE}",
            t,
        )
        out["calibration"] = c
    if "ood" in manifest:
        o = manifest["ood"]
        _block(path, "ood", o, _OOD, _OOD_INFO)
        width = len(o["scale"])
        ok = (
            len(o["means"]) <= len(manifest.get("class_names") or [])
            and len(o["means"]) * width <= MAX_OOD_VALUES
            and all(len(r) == width and all(is_num(x) for x in r) for r in o["means"])
        )
        require(
            path, ok, "ood.means", f"at most one row per class, each of {width} numbers", str(o["means"])[:80]
        )
        if "moments" in o:
            _moments(path, o["moments"], len(o["means"]))
        out["ood"] = o
    return out


def describe_trust(manifest: dict[str, Any]) -> list[str]:
    """One line each for calibration and the OOD threshold, saying so when the file has none."""
    c, o = manifest.get("calibration"), manifest.get("ood")
    lines = [
        f"calibration: temperature {c['temperature']:.4g} (fitted on {c['images']} {c['split']} images)"
        if isinstance(c, dict)
        else "no calibration",
        f"out-of-distribution check: {o['score']} beyond {o['threshold']:.4g} (set on the {o['split']} split)"
        if isinstance(o, dict)
        else "no OOD threshold",
    ]
    return lines
