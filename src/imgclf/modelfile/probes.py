"""Self-check probes: a few images stored in the model file with the input and output they produced.

At save time each probe's encoded bytes, its preprocessed uint8 input and the model's probabilities on
it are recorded. ``verify`` re-runs them and tells apart the two kinds of drift: *preprocessing*
(today's decoder/resizer gives a different input from the same bytes: how many values, by how much) and
*model output* (the model gives different probabilities for the very input stored at save time: max
|Δp|). Default probes are synthetic, so no user image ends up in a shared file.

Usage::

    images = synthetic_images()                      # four small PNGs, bytes
    records = compute(classifier, images, kinds)     # at save time
    checks = run_checks(classifier, manifest, container)   # at verify time
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import torch

from imgclf.classifier import Classifier
from imgclf.config import PreprocessSpec
from imgclf.errors import ImageError
from imgclf.images.preprocess import preprocess_uint8, to_tensor
from imgclf.modelfile.format import Container
from imgclf.modelfile.manifest import Manifest, Probe

TOLERANCE = 1e-4


def synthetic_images() -> list[bytes]:
    """Four small synthetic PNG probes (gradient, checkerboard, noise, disc): no user data, fixed bytes."""
    from PIL import Image

    rng = np.random.default_rng(20240607)
    yy, xx = np.mgrid[0:90, 0:120]
    gradient = np.stack([xx * 2, yy * 2, (xx + yy)], axis=2).astype(np.uint8)
    checker = (((np.indices((48, 48)).sum(axis=0) // 6) % 2) * 255).astype(np.uint8)
    noise = rng.integers(0, 256, size=(70, 70, 3), dtype=np.uint8)
    dy, dx = np.mgrid[-64:64, -64:64]
    disc = np.zeros((128, 128, 3), dtype=np.uint8)
    disc[dy**2 + dx**2 < 50**2] = (230, 140, 170)
    disc[(dy - 10) ** 2 + (dx + 15) ** 2 < 8**2] = (110, 40, 150)
    out = []
    for arr in (gradient, checker, noise, disc):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def input_digest(arr: np.ndarray, spec: PreprocessSpec) -> str:
    """SHA-256 of the float32 model input (1, 3, H, W) built from a (H, W, 3) uint8 array."""
    x = to_tensor(np.ascontiguousarray(arr)[None], spec).contiguous()
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class ProbeRecord:
    """What :func:`compute` measured for one probe at save time."""

    kind: str
    encoded: bytes
    input: np.ndarray
    input_sha256: str
    probabilities: list[float]
    label_index: int
    label_name: str


def compute(classifier: Classifier, images: list[bytes], kinds: list[str]) -> list[ProbeRecord]:
    """Preprocess ``images`` and run ``classifier`` on them (in eval mode, on its device).

    Raises:
        ImageError: If a probe image cannot be decoded.
    """
    spec = classifier.preprocess
    arrays = [preprocess_uint8(encoded, spec, name=f"probe image {i}") for i, encoded in enumerate(images)]
    probs = classifier.predict_proba_uint8(np.stack(arrays)) if arrays else np.zeros((0, 0))
    # The label is taken from the classifier's own names, not from what the manifest will hold, so a
    # writer that stores the names in another order produces a file whose verify fails.
    return [
        ProbeRecord(
            kind,
            encoded,
            arr,
            input_digest(arr, spec),
            [float(v) for v in row],
            int(np.argmax(row)),
            classifier.class_names[int(np.argmax(row))],
        )
        for kind, encoded, arr, row in zip(kinds, images, arrays, probs, strict=True)
    ]


def _label_row(probe: Probe, names: list[str], row: np.ndarray, tolerance: float) -> tuple[str, bool, str]:
    """Does the probe still get the label (index and name) it got at save time?

    The index passes while the saved class is still top-1 within ``tolerance`` (a near tie may swap
    places without any real change). Files written before labels were recorded carry none: their index
    is the argmax of the stored probabilities and the name cannot be checked.
    """
    check = f"probe {probe.index} ({probe.kind}) label"
    now = int(np.argmax(row))
    if probe.label is None:
        index, name = int(np.argmax(probe.probabilities)), None
    else:
        index, name = probe.label
    index_ok = float(row[index]) >= float(row[now]) - tolerance
    name_ok = name is None or names[index] == name
    saved = f"class {index} {(names[index] if name is None else name)!r}"
    if index_ok and name_ok:
        note = "" if name is not None else " (the file records no label name: index only)"
        return check, True, f"{saved} as at save time{note}"
    problems = []
    if not index_ok:
        problems.append(f"the top-1 class is now {now} {names[now]!r}, at save time {saved}")
    if not name_ok:
        problems.append(
            f"class {index} is named {names[index]!r} in this file but the probe was labelled {name!r} "
            "at save time (class names reordered or renamed?)"
        )
    return check, False, "; ".join(problems)


def _pixel_drift(now: np.ndarray, then: np.ndarray) -> str:
    if now.shape != then.shape:
        return f"shape {now.shape} now, {then.shape} at save time"
    diff = np.abs(now.astype(np.int16) - then.astype(np.int16))
    changed = int((diff > 0).sum())
    return f"{changed} of {diff.size} pixel values differ, by up to {int(diff.max())}/255"


def _preprocessing_rows(
    manifest: Manifest, container: Container, stored: list[np.ndarray]
) -> tuple[list[tuple[str, bool, str]], list[np.ndarray | None]]:
    """Per probe, today's preprocessing of the stored bytes against the stored input: the report rows and
    today's inputs (``None`` where the bytes no longer decode)."""
    spec = manifest.preprocess
    rows: list[tuple[str, bool, str]] = []
    fresh: list[np.ndarray | None] = []
    for probe, then in zip(manifest.probes, stored, strict=True):
        label = f"probe {probe.index} ({probe.kind}) preprocessing"
        encoded = container.raw_bytes(probe.image_tensor).tobytes()
        try:
            now = preprocess_uint8(encoded, spec, name=f"probe {probe.index}")
        except ImageError as exc:
            rows.append((label, False, f"the probe image no longer decodes: {exc.problem}"))
            fresh.append(None)
            continue
        fresh.append(now)
        if now.shape == then.shape and np.array_equal(now, then):
            same_scale = input_digest(now, spec) == probe.input_sha256
            detail = (
                "identical input"
                if same_scale
                else "same pixels but the float input differs (scaling changed)"
            )
            rows.append((label, same_scale, detail))
        else:
            rows.append(
                (label, False, "preprocessing changed (Pillow or imgclf?): " + _pixel_drift(now, then))
            )
    return rows, fresh


def run_checks(
    classifier: Classifier, manifest: Manifest, container: Container, *, tolerance: float = TOLERANCE
) -> list[tuple[str, bool, str]]:
    """Re-run every probe; return ``(check, ok, detail)`` rows for :class:`imgclf.modelfile.VerifyReport`.

    Per probe: ``preprocessing`` compares today's input from the stored bytes with the stored input;
    ``output`` runs the model on the *stored* input (so it isolates the model from preprocessing); when
    preprocessing drifted, the detail also gives the end-to-end change in probabilities.
    """
    stored = [container.tensor(p.input_tensor).numpy() for p in manifest.probes]
    rows, fresh = _preprocessing_rows(manifest, container, stored)
    expected = np.asarray([p.probabilities for p in manifest.probes], dtype=np.float64)
    probs = classifier.predict_proba_uint8(np.stack(stored)).astype(np.float64)
    for probe, row, want in zip(manifest.probes, probs, expected, strict=True):
        diff = float(np.max(np.abs(row - want)))
        top = "" if int(np.argmax(row)) == int(np.argmax(want)) else "; the top-1 class changed"
        rows.append(
            (
                f"probe {probe.index} ({probe.kind}) output",
                diff <= tolerance,
                f"model output on the stored input: max |Δp| = {diff:.3g} (tolerance {tolerance:g}){top}",
            )
        )
        rows.append(_label_row(probe, classifier.class_names, row, tolerance))
    drifted = [
        i
        for i, (now, then) in enumerate(zip(fresh, stored, strict=True))
        if now is not None and not np.array_equal(now, then)
    ]
    if drifted:
        batch = np.stack([fresh[i] for i in drifted])  # type: ignore[misc]
        end = classifier.predict_proba_uint8(batch).astype(np.float64)
        for i, row in zip(drifted, end, strict=True):
            diff = float(np.max(np.abs(row - expected[i])))
            flip = int(np.argmax(row)) != int(np.argmax(expected[i]))
            rows.append(
                (
                    f"probe {i} end to end",
                    diff <= tolerance,
                    f"with today's preprocessing: max |Δp| = {diff:.3g}"
                    + ("; the top-1 class changed" if flip else ""),
                )
            )
    return rows


def as_uint8_tensor(arr: np.ndarray) -> torch.Tensor:
    """A contiguous CPU uint8 tensor owning a copy of ``arr`` (for saving)."""
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8).copy())
