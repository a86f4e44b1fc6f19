"""The models a server holds: strict load, verify probes, one warm-up inference, atomic swap on reload.

Usage::

    store = ModelStore.open({"malaria": "malaria.imgclf"})   # raises ModelFileError on a bad file
    served = store.get("malaria")
    store.reload("malaria")                                  # old model keeps serving if this fails
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from imgclf.classifier import Classifier
from imgclf.errors import ModelFileError, UsageError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ServedModel:
    """One loaded, verified and warmed-up model.

    Attributes:
        name: The name clients use in URLs.
        path: The model file it was loaded from.
        classifier: The loaded classifier.
        summary: :func:`imgclf.modelfile.inspect` of the file (the model card).
        digest: What identifies the served file: an .imgclf's tensor-data digest
            (``integrity.tensors_sha256``), an .onnx's graph digest (``integrity.graph_sha256``, checked
            by verify). An .onnx also records its source's tensor digest, but serving that would report
            an .imgclf and its export as one file, and a reload from one to the other as no change.
    """

    name: str
    path: str
    classifier: Classifier
    summary: dict[str, Any]
    digest: str

    def card(self) -> dict[str, Any]:
        """The public summary shown by ``GET /v1/models`` and the web page's model card."""
        s = self.summary
        spec = self.classifier.preprocess
        return {
            "name": self.name,
            "file": os.path.basename(self.path),
            "digest": self.digest,
            "architecture": s["architecture"],
            "class_names": list(self.classifier.class_names),
            "input": {"height": spec.height, "width": spec.width, "channels": 3},
            "metrics": s.get("metrics"),
            "metrics_by_split": metrics_by_split(s.get("metrics"), s.get("epoch")),
            "data": s.get("data"),
            "created": s.get("created"),
            "epoch": s.get("epoch"),
            "parameters": s["parameters"],
            "versions": s.get("versions"),
        }


def metrics_by_split(metrics: dict[str, Any] | None, epoch: int | None = None) -> dict[str, dict[str, Any]]:
    """The file's final metrics grouped by the split they were measured on, for a card that labels each.

    The manifest keeps them flat, as training recorded them: ``loss``/``accuracy``/``lr`` are the training
    epoch's (``epoch``: the saved one), ``val_*`` the validation split's at that epoch, ``testing_*`` the
    held-out testing split's, scored once after training. An empty split is left out.
    """
    out: dict[str, dict[str, Any]] = {"training": {}, "validation": {}, "testing": {}}
    for key, value in (metrics or {}).items():
        if key.startswith("testing_"):
            out["testing"][key.removeprefix("testing_")] = value
        elif key.startswith("val_"):
            out["validation"][key.removeprefix("val_")] = value
        else:
            out["training"][key] = value
    if epoch is not None and out["training"]:
        out["training"]["epoch"] = epoch
    return {split: values for split, values in out.items() if values}


def parse_model_arg(text: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named by its file stem) → ``(name, path)``.

    Raises:
        UsageError: If the name is not URL-safe.
    """
    name, sep, path = text.partition("=")
    if not sep or os.path.exists(text):
        name, path = os.path.splitext(os.path.basename(text))[0], text
    if not NAME_PATTERN.match(name):
        raise UsageError(
            "model name is not URL-safe",
            received=repr(name),
            expected="letters, digits, '_', '.', '-' (at most 64, starting with a letter or digit)",
            fix="name it explicitly: NAME=PATH, e.g. malaria=./models/malaria v2.imgclf",
        )
    return name, path


def load_served(
    name: str, path: str, max_pixels: int | None = None, precision: str | None = None
) -> ServedModel:
    """Load ``path`` strictly, re-run its self-check probes, choose its precision, run one warm-up inference.

    Args:
        name: The name clients use in URLs.
        path: The model file.
        max_pixels: Pixel cap for the images it classifies (None: the library's cap).
        precision: ``auto``, ``fp32`` or ``bf16`` (:func:`imgclf.precision.setup_precision`; the choice is
            shown on stderr); None: ``$IMGCLF_PRECISION``, else auto.

    Raises:
        ModelFileError: If the file does not load, a probe check fails, or the file changed meanwhile.
        UsageError: If ``precision`` is unknown, or ``bf16`` for a model that cannot run it (an export).
    """
    import numpy as np

    # The dispatcher tells an .imgclf from an .onnx by its first bytes; an .onnx never imports torch.
    from imgclf.loading import inspect, load, verify

    before = _identity(path)
    report = verify(path)
    failed = [f"{check}: {detail}" for check, ok, detail in report.checks if not ok]
    if failed:
        raise ModelFileError(
            "model file failed its self-check probes",
            received=f"{path}: {'; '.join(failed[:3])}",
            expected="every probe to pass",
            fix="run `imgclf verify` on the file; retrain or re-save it in this environment",
        )
    clf = load(path, max_pixels=max_pixels)  # None: the library's cap
    from imgclf.precision import setup_precision

    setup_precision(clf, precision, path)  # auto: bf16 where the CPU has it natively and the probes agree
    summary = inspect(path)
    if _identity(path) != before:  # verified one file, loaded another: refuse rather than guess
        raise ModelFileError(
            "model file changed while it was being loaded",
            received=path,
            expected="a file that stays the same during loading",
            fix="write model files atomically (imgclf does) and reload again",
        )
    # The first forward pass allocates and tunes kernels; a preprocessed input, so --max-pixels below
    # the model's own input size cannot refuse it.
    clf.predict_proba_input(np.zeros((1, 3, *clf.preprocess.size), dtype=np.float32))
    return ServedModel(name, path, clf, summary, served_digest(summary))


def served_digest(summary: dict[str, Any]) -> str:
    """The digest a server reports for a file (see :class:`ServedModel`), from its inspect summary."""
    integrity = summary["integrity"]
    return integrity.get("graph_sha256") or integrity["tensors_sha256"]


def _identity(path: str) -> tuple[int, int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0, 0)
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def _same_interface(old: ServedModel, new: ServedModel) -> list[str]:
    """What differs between two models in a way clients would notice (empty when a swap is safe)."""
    a, b = old.classifier, new.classifier
    diffs = []
    if a.arch != b.arch:
        diffs.append(f"architecture {a.arch} -> {b.arch}")
    if a.class_names != b.class_names:
        diffs.append(f"classes {a.class_names} -> {b.class_names}")
    if a.preprocess.size != b.preprocess.size:
        diffs.append(f"input size {a.preprocess.size} -> {b.preprocess.size}")
    return diffs


class ModelStore:
    """Name → :class:`ServedModel`; reads are lock-free, a reload swaps one entry atomically."""

    def __init__(
        self, models: dict[str, ServedModel], max_pixels: int | None = None, precision: str | None = None
    ) -> None:
        self._models = dict(models)
        self._reload_lock = threading.Lock()
        self.max_pixels = max_pixels
        self.precision = precision  # a reload chooses again, on the same request

    @classmethod
    def open(
        cls, paths: dict[str, str], max_pixels: int | None = None, precision: str | None = None
    ) -> ModelStore:
        """Load, verify and warm up every model (in order); stop at the first that fails.

        Args:
            paths: Model name → file.
            max_pixels: Pixel cap for the images the models classify (a server may lower the library's).
            precision: As :func:`load_served` (``imgclf serve --precision``).

        Raises:
            ModelFileError: From :func:`load_served`.
            UsageError: From :func:`load_served` (precision).
        """
        models = {name: load_served(name, path, max_pixels, precision) for name, path in paths.items()}
        return cls(models, max_pixels, precision)

    def names(self) -> list[str]:
        """Model names in the order they were given."""
        return list(self._models)

    def get(self, name: str | None = None) -> ServedModel | None:
        """The model called ``name`` (the first one when ``name`` is None), or None."""
        if name is None:
            return next(iter(self._models.values()), None)
        return self._models.get(name)

    def reload(self, name: str) -> ServedModel:
        """Load, verify and warm up ``name``'s file again and swap it in; on failure keep the old one.

        Raises:
            ModelFileError: If the new file is damaged or is a different model (other architecture,
                classes or input size); the old model keeps serving.
            KeyError: If no model has that name.
        """
        with self._reload_lock:
            old = self._models[name]
            new = load_served(name, old.path, self.max_pixels, self.precision)
            diffs = _same_interface(old, new)
            if diffs:
                raise ModelFileError(
                    "reload refused: the file now holds a different model",
                    received=f"{old.path}: {'; '.join(diffs)}",
                    expected=f"{old.classifier.arch} with the same classes and input size",
                    fix="serve the new model under a new name (restart with NAME=PATH)",
                )
            self._models = {**self._models, name: new}  # one reference swap: readers never see a mix
            return new
