"""int8 ONNX export: onnxruntime's static post-training quantization behind an agreement gate.

The fp32 export (:func:`imgclf.interop.onnx_export.export_onnx`, with its parity gate) comes first; its
graph is then quantized with ``onnxruntime.quantization.quantize_static``: QDQ format, int8 symmetric
per-channel weights, uint8 per-tensor activations, MinMax ranges from ``CALIBRATION_IMAGES`` images of
the dataset's training split, sampled with a fixed seed. The softmax stays in float (probabilities keep
their resolution). A fp32 parity gate cannot hold for int8, so the gate becomes one of agreement
(:func:`agreement_gate`): top-1 agreement with the fp32 model on held-out images (the validation split,
never used for calibration) of at least ``MIN_AGREEMENT``, and a test-split accuracy drop of at most
``MAX_ACCURACY_DROP`` when the dataset has a test split. A failed gate raises
:class:`imgclf.errors.ExportError` with the figures, and nothing is written.

The manifest records ``quantization`` (scheme, calibration, measured agreement) and the probes'
reference probabilities become the int8 model's own, checked by ``verify`` within
``VERIFY_TOLERANCE`` (int8 kernels differ a little between CPUs).

Usage::

    result = export_onnx_int8("malaria.imgclf", "malaria.int8.onnx", calibration="malaria/")
    print(result.agreement["top1_agreement"])
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgclf.config import PreprocessSpec
from imgclf.errors import DatasetError, ExportError, UsageError
from imgclf.fileio.writing import atomic_write_bytes, check_writable
from imgclf.images.preprocess import preprocess_uint8, to_array
from imgclf.interop.onnx_meta import MANIFEST_KEY, OUTPUT_NAME

CALIBRATION_IMAGES = 300
MAX_HELDOUT_IMAGES = 1000
MAX_TEST_IMAGES = 2000
MIN_AGREEMENT = 0.99
MAX_ACCURACY_DROP = 0.01
VERIFY_TOLERANCE = 0.02
CALIBRATION_SEED = 20261206
SCHEME = "int8 static QDQ: weights int8 symmetric per-channel, activations uint8 per-tensor (MinMax)"


@dataclass
class CalibrationSet:
    """Images for quantizing and gating: ``calibration`` paths, labelled ``heldout`` and ``test`` pairs.

    Labels are class indices, or -1 where the folder gives none.
    """

    source: str
    layout: str
    calibration: list[str]
    heldout: list[tuple[str, int]] = field(default_factory=list)
    test: list[tuple[str, int]] = field(default_factory=list)
    heldout_split: str = "validation"


def _sample(items: list[Any], count: int, seed: int) -> list[Any]:
    """``count`` of ``items`` (sorted first), picked with ``seed``: the same on every machine."""
    items = sorted(items)
    return items if len(items) <= count else sorted(random.Random(seed).sample(items, count))


def calibration_set(
    folder: str | os.PathLike,
    class_names: list[str],
    training: dict[str, Any] | None = None,
    *,
    count: int = CALIBRATION_IMAGES,
) -> CalibrationSet:
    """Split ``folder`` into calibration (training split) and held-out images, deterministically.

    A dataset folder is scanned with the split settings the model was trained with (``training``: the
    file's recorded training config), so calibration never sees the validation or test images. A folder
    without class folders is sampled: ``count`` images calibrate, the rest (unlabelled) are held out.

    Raises:
        UsageError: If ``folder`` holds no images, its classes differ from the model's, or nothing is left
            to hold out.
    """
    from imgclf.data.folders import scan_dataset
    from imgclf.data.listing import list_images

    root = os.fspath(folder)
    if not os.path.isdir(root):
        raise UsageError(
            "--calibration is not a folder",
            received=root,
            expected="the dataset folder the model was trained on (or a folder of its training images)",
            fix="pass --calibration DATASET_DIR",
        )
    cfg = training or {}
    seed = int(cfg.get("seed", 42))
    try:
        ds = scan_dataset(
            root,
            val_split=float(cfg.get("val_split", 0.1)),
            test_split=float(cfg.get("test_split", 0.2)),
            seed=seed,
        )
    except DatasetError:
        ds = None
    if ds is not None:
        if list(ds.class_names) != list(class_names):
            raise UsageError(
                "--calibration holds other classes than the model",
                received=f"{root} (classes {ds.class_names[:5]})",
                expected=f"the model's classes {list(class_names)[:5]}",
                fix="pass the dataset the model was trained on",
            )
        calib = _sample([s.path for s in ds.splits.get("training", [])], count, CALIBRATION_SEED)
        held = _sample([(s.path, s.label) for s in ds.splits.get("validation", [])], MAX_HELDOUT_IMAGES, 1)
        test = _sample([(s.path, s.label) for s in ds.splits.get("testing", [])], MAX_TEST_IMAGES, 2)
        out = CalibrationSet(root, ds.layout, calib, held, test)
    else:
        paths = _sample(list_images([root]), count + MAX_HELDOUT_IMAGES, CALIBRATION_SEED)
        random.Random(CALIBRATION_SEED).shuffle(paths)
        out = CalibrationSet(
            root, "images", sorted(paths[:count]), [(p, -1) for p in sorted(paths[count:])], [], "images"
        )
    if not out.calibration or not (out.heldout or out.test):
        raise UsageError(
            "--calibration leaves no images to calibrate on or no held-out images to check agreement on",
            received=f"{root} ({len(out.calibration)} calibration, {len(out.heldout + out.test)} held out)",
            expected="a dataset with a training split and a validation or testing split",
            fix="pass the dataset folder the model was trained on",
        )
    if not out.heldout:  # agreement is then measured on the test split, which calibration never saw
        out.heldout, out.heldout_split = list(out.test), "testing"
    return out


def load_arrays(paths: list[str], spec: PreprocessSpec) -> np.ndarray:
    """The preprocessed uint8 images (N, H, W, 3) of ``paths``."""
    if not paths:
        return np.zeros((0, spec.height, spec.width, 3), dtype=np.uint8)
    return np.stack([preprocess_uint8(p, spec, name=os.path.basename(p)) for p in paths])


class _Reader:
    """onnxruntime's calibration data reader over preprocessed images, a few at a time."""

    def __init__(self, images: np.ndarray, spec: PreprocessSpec, input_name: str, batch: int = 16) -> None:
        self._batches = iter([to_array(images[i : i + batch], spec) for i in range(0, len(images), batch)])
        self._input = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._batches, None)
        return None if x is None else {self._input: x}

    def rewind(self) -> None:  # pragma: no cover - only the entropy/percentile calibrators call it
        raise NotImplementedError


def quantize_bytes(fp32: bytes, calibration: np.ndarray, spec: PreprocessSpec) -> bytes:
    """The int8 QDQ model (bytes) for the fp32 .onnx bytes ``fp32``, calibrated on uint8 ``calibration``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from imgclf.interop.onnx_runtime import import_onnxruntime

    import_onnxruntime()  # its start-up lines go to the log, not to stderr

    class Reader(_Reader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="imgclf-quantize-") as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        with open(src, "wb") as fh:
            fh.write(fp32)
        # onnxruntime's pre-processing (shape inference, graph optimisation such as folding batch norms
        # into convolutions) first: without it most operations stay float between Q/DQ pairs, and the int8
        # model runs slower than the fp32 one.
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        model = onnx.load_model(pre)
        softmax = [n.name for n in model.graph.node if n.op_type == "Softmax" or OUTPUT_NAME in n.output]
        previous = logging.root.manager.disable
        # Its notes go to the root logger: not ours to show.
        logging.disable(logging.WARNING)
        try:
            quantize_static(
                pre,
                dst,
                Reader(calibration, spec, model.graph.input[0].name),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=softmax,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        finally:
            logging.disable(previous)
        with open(dst, "rb") as result:
            return result.read()


def _top1(probs: np.ndarray) -> np.ndarray:
    return np.argmax(probs, axis=1) if len(probs) else np.zeros(0, dtype=np.int64)


def agreement_gate(
    fp32_heldout: np.ndarray,
    int8_heldout: np.ndarray,
    fp32_test: np.ndarray | None = None,
    int8_test: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    *,
    min_agreement: float = MIN_AGREEMENT,
    max_drop: float = MAX_ACCURACY_DROP,
) -> dict[str, Any]:
    """Compare int8 with fp32 probabilities; the figures, or :class:`ExportError` with them.

    Args:
        fp32_heldout: fp32 probabilities (N, C) on the held-out images.
        int8_heldout: int8 probabilities on the same images.
        fp32_test: fp32 probabilities on the test split (optional, with ``int8_test`` and ``test_labels``).
        int8_test: int8 probabilities on the test split.
        test_labels: The test images' class indices.
        min_agreement: Smallest accepted share of held-out images with the same top-1 class.
        max_drop: Largest accepted test accuracy drop (a fraction: 0.01 is one point).

    Raises:
        ExportError: If agreement is below ``min_agreement`` or accuracy drops by more than ``max_drop``.
    """
    n = len(fp32_heldout)
    agree = float(np.mean(_top1(fp32_heldout) == _top1(int8_heldout))) if n else float("nan")
    figures: dict[str, Any] = {
        "heldout_images": n,
        "top1_agreement": agree,
        "max_abs_diff": float(np.max(np.abs(fp32_heldout - int8_heldout))) if n else 0.0,
        "min_agreement": min_agreement,
        "max_accuracy_drop": max_drop,
    }
    problems = []
    if not agree >= min_agreement:
        problems.append(
            f"top-1 agrees with fp32 on {agree:.1%} of {n} held-out images (needs >= {min_agreement:.0%})"
        )
    if fp32_test is not None and int8_test is not None and test_labels is not None and len(test_labels):
        acc32 = float(np.mean(_top1(fp32_test) == test_labels))
        acc8 = float(np.mean(_top1(int8_test) == test_labels))
        figures.update(test_images=len(test_labels), test_accuracy_fp32=acc32, test_accuracy_int8=acc8)
        if not acc32 - acc8 <= max_drop + 1e-12:
            problems.append(
                f"test accuracy {acc32:.1%} -> {acc8:.1%} on {len(test_labels)} images (drop "
                f"{100 * (acc32 - acc8):.1f} points, allowed {100 * max_drop:g})"
            )
    if problems:
        raise ExportError(
            "export failed: the int8 model disagrees with the fp32 model",
            received="; ".join(problems),
            expected=f"top-1 agreement >= {min_agreement:.0%} and a test accuracy drop <= {100 * max_drop:g} "
            "point(s)",
            fix="export fp32 (drop --quantize), or calibrate on more of the training images (--calibration)",
        )
    return figures


def describe(figures: dict[str, Any]) -> str:
    """One line for the gate's figures: agreement, and the test accuracies when measured."""
    text = (
        f"int8: top-1 agreement with fp32 {figures['top1_agreement']:.2%} on {figures['heldout_images']} "
        f"held-out images"
    )
    if "test_accuracy_int8" in figures:
        text += (
            f", test accuracy {figures['test_accuracy_fp32']:.2%} fp32 -> "
            f"{figures['test_accuracy_int8']:.2%} int8 on {figures['test_images']} images"
        )
    return text


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`export_onnx_int8` wrote: the path, its size and the agreement figures."""

    path: str
    file_bytes: int
    opset: int
    calibration_images: int
    agreement: dict[str, Any]


def run_batches(session: Any, images: np.ndarray, spec: PreprocessSpec, batch: int = 64) -> np.ndarray:
    """Probabilities from ``session`` (onnxruntime's interface) for uint8 ``images``, ``batch`` at a time."""
    from imgclf.interop.onnx_runtime import run_session

    parts = [
        run_session(session, to_array(images[i : i + batch], spec)) for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def export_onnx_int8(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    calibration: str | os.PathLike,
    calibration_images: int = CALIBRATION_IMAGES,
    **export_options: Any,
) -> QuantizeResult:
    """Export ``model_path`` as an int8 .onnx, written only if it passes the agreement gate.

    Args:
        model_path: The .imgclf model file.
        out_path: Where the int8 .onnx goes (atomically).
        calibration: The dataset folder the model was trained on (see :func:`calibration_set`).
        calibration_images: How many training images calibrate the activation ranges.
        **export_options: Passed to :func:`imgclf.interop.onnx_export.export_onnx` (opset, exporter,
            parity_images) for the fp32 graph that is quantized.

    Raises:
        ExportError: If the fp32 parity gate or the int8 agreement gate fails.
        UsageError: On a bad ``calibration`` folder or option.
    """
    import onnx

    from imgclf.interop.onnx_export import export_onnx
    from imgclf.interop.onnx_meta import probe_data
    from imgclf.interop.onnx_runtime import new_session, open_onnx
    from imgclf.interop.onnx_verify import graph_digest
    from imgclf.modelfile import load

    if (
        isinstance(calibration_images, bool)
        or not isinstance(calibration_images, int)
        or calibration_images < 1
    ):
        raise UsageError(
            "calibration_images must be a positive integer",
            received=repr(calibration_images),
            expected=">= 1",
            fix=f"use {CALIBRATION_IMAGES}",
        )
    check_writable(out_path)
    clf = load(model_path)
    spec = clf.preprocess
    cset = calibration_set(
        calibration,
        clf.class_names,
        (clf.manifest.get("provenance") or {}).get("training"),
        count=calibration_images,
    )
    name = os.fspath(out_path)
    with tempfile.TemporaryDirectory(prefix="imgclf-int8-") as tmp:
        fp32_path = os.path.join(tmp, "fp32.onnx")
        base = export_onnx(model_path, fp32_path, **export_options)  # the fp32 parity gate first
        fp32_bytes, _, m, props = open_onnx(fp32_path)
    int8 = onnx.load_model_from_string(quantize_bytes(fp32_bytes, load_arrays(cset.calibration, spec), spec))
    session = new_session(int8.SerializeToString(), name)

    held = load_arrays([p for p, _ in cset.heldout], spec)
    test = load_arrays([p for p, _ in cset.test], spec)
    labels = np.array([lab for _, lab in cset.test], dtype=np.int64)
    has_test = len(test) > 0 and bool(np.all(labels >= 0))
    figures = agreement_gate(
        clf.predict_proba_uint8(held),
        run_batches(session, held, spec),
        clf.predict_proba_uint8(test) if has_test else None,
        run_batches(session, test, spec) if has_test else None,
        labels if has_test else None,
    )
    figures["heldout_split"] = cset.heldout_split

    raw = json.loads(props[MANIFEST_KEY])
    stored = probe_data(props, m, name)
    probe_probs = run_batches(session, np.stack([s for _, s in stored]), spec) if stored else np.zeros((0, 0))
    for p, row in zip(raw.get("probes", []), probe_probs, strict=True):
        p["probabilities"] = [float(v) for v in row]  # the int8 model's own answer: what verify re-checks
    raw["graph_sha256"] = graph_digest(int8.SerializeToString())
    raw["quantization"] = {
        "dtype": "int8",
        "scheme": SCHEME,
        "tool": "onnxruntime.quantization.quantize_static",
        "calibration": {
            "images": len(cset.calibration),
            "split": "training" if cset.layout != "images" else "sampled images",
            "sampling": f"sorted paths, random.Random({CALIBRATION_SEED}).sample",
        },
        "agreement": figures,
        "verify_tolerance": VERIFY_TOLERANCE,
        "probes": "probabilities are the int8 model's own at export",
    }
    props[MANIFEST_KEY] = json.dumps(raw, sort_keys=True, separators=(",", ":"), allow_nan=False)
    del int8.metadata_props[:]
    onnx.helper.set_model_props(int8, props)
    int8.producer_name, int8.producer_version = "imgclf", raw["export"]["versions"].get("imgclf", "")
    data = int8.SerializeToString()
    open_check = new_session(data, name)  # the final bytes load and carry valid metadata
    from imgclf.interop.onnx_meta import parse_metadata

    parse_metadata(dict(open_check.get_modelmeta().custom_metadata_map), name)
    atomic_write_bytes(out_path, data)
    return QuantizeResult(name, len(data), base.opset, len(cset.calibration), figures)
