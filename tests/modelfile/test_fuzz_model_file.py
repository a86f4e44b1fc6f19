"""Fuzzing the model file: random mutations of a valid file never crash, hang or load silently wrong.

Every case ends in one of two ways: ``ModelFileError``, or a successful ``verify`` and ``load``. Byte
mutations (bit flips, truncation, insertion, header-length rewrites) are not re-signed, so a case that
loads must predict exactly like the original. Structural mutations edit the manifest or the tensors and
re-sign both digests, so they reach the schema and weight checks behind the integrity check; those may
load (an edited provenance string is harmless) as long as nothing crashes. Seeded: a failure prints the
case number and mutation, and re-running reproduces it.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import imgclf
from helpers import data_offset, edit_manifest, make_classifier, manifest_span, rebuild, tensors_of
from imgclf import modelfile
from imgclf.errors import ModelFileError

DEFAULT_CASES = 500
SLOW_CASES = 4000
IMAGES = [np.full((16, 16, 3), v, dtype=np.uint8) for v in (0, 90, 200)]
ODD_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2,
    2**64,
    -(2**63),
    1e308,
    -0.0,
    0.5,
    "",
    "x",
    "os.system",
    "\x00",
    "\u202e",
    "a" * 70000,
    [],
    {},
    [1, 2],
    [0.5, 0.5],
    {"a": 1},
    [[[[[[]]]]]],
]


@pytest.fixture(scope="module")
def original() -> tuple[bytes, np.ndarray]:
    clf = make_classifier(seed=21, size=16)
    blob = modelfile.serialize(clf)
    return blob, clf.predict_proba(IMAGES)


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            out += _paths(v, (*prefix, i))
    return out


def _mutate_manifest(rng: random.Random) -> Callable[[dict], None]:
    def edit(m: dict) -> None:
        path = rng.choice([p for p in _paths(m) if p and p[0] != "integrity"])
        parent = m
        for key in path[:-1]:
            parent = parent[key]
        action = rng.choice(["replace", "replace", "delete", "add"])
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[rng.choice(["extra", "__class__", "args", "name"])] = rng.choice(ODD_VALUES)
        else:
            parent[path[-1]] = rng.choice(ODD_VALUES)

    return edit


def _mutate_tensors(rng: random.Random) -> Callable[[dict], None]:
    def edit(t: dict) -> None:
        name = rng.choice(sorted(t))
        action = rng.choice(["values", "nan", "shape", "dtype", "drop", "add", "rename"])
        v = t[name]
        if action == "values" and v.numel():
            flat = v.reshape(-1).clone()
            flat[rng.randrange(flat.numel())] = rng.choice([0, 1, 3, 100])
            t[name] = flat.reshape(v.shape)
        elif action == "nan" and v.is_floating_point() and v.numel():
            flat = v.reshape(-1).clone()
            flat[rng.randrange(flat.numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
            t[name] = flat.reshape(v.shape)
        elif action == "shape":
            t[name] = v.reshape(-1)[: max(0, v.numel() - rng.randint(0, 3))].clone()
        elif action == "dtype":
            t[name] = v.to(rng.choice([torch.float16, torch.float64, torch.int32, torch.uint8]))
        elif action == "drop":
            del t[name]
        elif action == "add":
            t[rng.choice(["model.extra", "probe.9", "probe.0.extra", "model.head.weight2"])] = torch.zeros(2)
        else:
            t[name.replace(".", "_", 1)] = t.pop(name)

    return edit


def _byte_mutation(blob: bytes, rng: random.Random) -> tuple[str, bytes]:
    data = bytearray(blob)
    start = data_offset(blob)
    m_start, m_end = manifest_span(blob)
    kind = rng.choice(
        [
            "flip_any",
            "flip_len",
            "flip_header",
            "flip_manifest",
            "flip_data",
            "byte",
            "truncate",
            "insert",
            "delete",
        ]
        + ["header_len", "digit", "duplicate"]
    )
    if kind.startswith("flip"):
        lo, hi = {
            "flip_any": (0, len(data)),
            "flip_len": (0, 8),
            "flip_header": (8, start),
            "flip_manifest": (m_start, m_end),
            "flip_data": (start, len(data)),
        }[kind]
        i = rng.randrange(lo, hi)
        data[i] ^= 1 << rng.randrange(8)
        return f"{kind}@{i}", bytes(data)
    if kind == "byte":
        i = rng.randrange(len(data))
        data[i] = rng.randrange(256)
        return f"byte@{i}", bytes(data)
    if kind == "truncate":
        n = rng.randrange(len(data))
        return f"truncate@{n}", bytes(data[:n])
    if kind == "insert":
        i, junk = rng.randrange(len(data) + 1), bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        return f"insert@{i}", bytes(data[:i] + junk + data[i:])
    if kind == "delete":
        i = rng.randrange(len(data))
        return f"delete@{i}", bytes(data[:i] + data[i + rng.randint(1, 16) :])
    if kind == "header_len":
        n = rng.choice(
            [start - 8 + rng.randint(-64, 64), rng.randrange(2**64), rng.randrange(len(data)), 0, 2]
        )
        return f"header_len={n}", struct.pack("<Q", max(0, min(n, 2**64 - 1))) + bytes(data[8:])
    if kind == "digit":
        digits = [i for i in range(8, start) if 48 <= data[i] <= 57]
        i = rng.choice(digits)
        data[i] = 48 + (data[i] - 48 + rng.randint(1, 9)) % 10
        return f"digit@{i}", bytes(data)
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randint(1, 64))
    return f"duplicate@{i}:{j}", bytes(data[:j] + data[i:j] + data[j:])


def _case(blob: bytes, rng: random.Random) -> tuple[str, bytes, bool]:
    """(description, mutated bytes, re-signed?)"""
    roll = rng.random()
    if roll < 0.15:
        return "manifest", edit_manifest(blob, _mutate_manifest(rng)), True
    if roll < 0.25:
        tensors = tensors_of(blob)
        _mutate_tensors(rng)(tensors)
        return "tensors", rebuild(blob, tensors), True
    what, mutated = _byte_mutation(blob, rng)
    return what, mutated, False


def _run(cases: int, seed: int, original: tuple[bytes, np.ndarray], folder: Path) -> dict[str, int]:
    blob, expected = original
    rng = random.Random(seed)
    outcomes = {"rejected": 0, "loaded": 0, "loaded_with_failed_probes": 0}
    path = folder / "fuzz.imgclf"
    for i in range(cases):
        what, mutated, resigned = _case(blob, rng)
        if mutated == blob:
            continue
        path.write_bytes(mutated)
        try:
            report = imgclf.verify(path)
            clf = imgclf.load(path)
            probs = clf.predict_proba(IMAGES)
        except ModelFileError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc), (i, what)
            outcomes["rejected"] += 1
        except Exception as exc:  # noqa: BLE001 - the point: anything else is a bug
            raise AssertionError(
                f"case {i} ({what}, seed {seed}) crashed: {type(exc).__name__}: {exc}"
            ) from exc
        else:
            if resigned:
                outcomes["loaded" if report.ok else "loaded_with_failed_probes"] += 1
            else:  # unsigned byte change that still loads: it must be a harmless one
                assert report.ok, (i, what)
                assert np.array_equal(probs, expected), (i, what)
                outcomes["loaded"] += 1
    return outcomes


def test_fuzzed_model_files_are_rejected_cleanly_or_load_correctly(original, tmp_path):
    outcomes = _run(DEFAULT_CASES, seed=1234, original=original, folder=tmp_path)
    assert sum(outcomes.values()) >= DEFAULT_CASES * 0.95
    assert outcomes["rejected"] > DEFAULT_CASES // 2


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_fuzzed_model_files_many_cases(seed, original, tmp_path):
    outcomes = _run(SLOW_CASES // 2, seed=seed, original=original, folder=tmp_path)
    assert sum(outcomes.values()) >= SLOW_CASES // 2 * 0.95


def test_structural_mutations_reach_past_the_integrity_check(original, tmp_path):
    """Re-signed edits must be judged on their content, not stopped by the digest."""
    blob, _ = original
    rng = random.Random(7)
    messages = []
    for _ in range(60):
        path = tmp_path / "s.imgclf"
        path.write_bytes(edit_manifest(blob, _mutate_manifest(rng)))
        try:
            imgclf.load(path)
        except ModelFileError as exc:
            messages.append(str(exc))
    assert messages and not any("integrity check failed" in m for m in messages)
