"""A trained model together with everything needed to use it: class names and preprocessing.

Usage::

    clf = imgclf.load("malaria.imgclf")
    for pred in clf.predict(["cell1.png", "cell2.png"]):
        print(pred.label, pred.confidence)
    probs = clf.predict_proba(image_array)              # (N, num_classes) numpy float32
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.config import PreprocessSpec
from imgclf.errors import ImageError, UsageError
from imgclf.images.preprocess import ImageSource, preprocess_uint8, to_tensor
from imgclf.images.read import MAX_PIXELS, checked_max_pixels, describe_source

if TYPE_CHECKING:  # torch is imported where the network runs: an ONNX classifier subclass needs none
    import torch
    from torch import nn

_SINGLE = (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray)

# Input pixels per forward pass at most, so memory stays bounded whatever input size a model file
# declares (256 images at the default 64x64; one at a time from about 1024x1024 up).
MAX_BATCH_PIXELS = 256 * 64 * 64


@dataclass(frozen=True)
class Prediction:
    """The result for one image.

    Attributes:
        source: The image's path or a short description of it.
        label: Predicted class name (``None`` if the image failed).
        index: Predicted class index.
        confidence: Probability of the predicted class.
        probabilities: Probability per class name, in the model's class order.
        top_k: The ``k`` most probable ``(label, probability)`` pairs.
        error: Why the image could not be classified (only with ``errors="return"``).
        labels: Multi-label models: every class at or over its threshold (an empty list is a valid
            answer: none of the classes); then ``label`` is them joined by ``|``, or ``none``.
            ``None`` for single-label models.
    """

    source: str
    label: str | None
    index: int
    confidence: float
    probabilities: dict[str, float] = field(default_factory=dict)
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    labels: list[str] | None = None


NO_LABEL = "none"  # a multi-label answer with no class over its threshold


def predict_logits(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    spec: PreprocessSpec,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Run ``model`` (in eval mode) on a uint8 batch (N, H, W, 3); return float32 logits on the CPU.

    Shared by training-time evaluation and prediction so both see identical input tensors.
    """
    import torch

    device = torch.device(device)
    n = len(images)
    batch_size = max(1, min(batch_size, MAX_BATCH_PIXELS // (spec.height * spec.width)))
    out = []
    was_training = model.training
    # Setting the mode walks every module through nn.Module.__setattr__: a real cost per call when a server
    # predicts one image at a time (docs/performance.md, "Serving"), so only when needed.
    switch = any(module.training for module in model.modules())
    if switch:
        model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                x = to_tensor(images[start : start + batch_size], spec, device=device)
                with torch.autocast(
                    device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
                ):
                    logits = model(x)
                out.append(logits.float())
    finally:
        if switch:
            model.train(was_training)
    if not out:
        return torch.empty((0, 0))
    return torch.cat(out).cpu()


def _as_list(images: ImageSource | Sequence[ImageSource]) -> list[ImageSource]:
    """One image (path, bytes, PIL image, array) or a sequence of them, as a list."""
    # mypy cannot narrow by the _SINGLE tuple: bytes are a Sequence too, but took the first branch
    return [images] if isinstance(images, _SINGLE) or not isinstance(images, Sequence) else list(images)  # type: ignore[arg-type]


def _check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(
            "batch_size must be a positive integer",
            received=repr(batch_size),
            expected=">= 1",
            fix="use batch_size=64",
        )
    return batch_size


class Classifier:
    """A model plus its class names and preprocessing: the object ``imgclf.load`` returns.

    Args:
        model: The network (any ``nn.Module`` mapping (N, 3, H, W) to (N, num_classes) logits).
        class_names: Class names in output-index order.
        preprocess: How images are turned into the model's input.
        arch: Registered architecture name the model was built from.
        arch_args: Builder arguments for ``arch``.
        manifest: Provenance and other metadata read from (or to be written to) the model file.
        device: Where the model runs.
        max_pixels: Images with more pixels are refused before decoding (at most the library's
            ``MAX_PIXELS``; a server lowers it to bound memory per request).
    """

    def __init__(
        self,
        model: nn.Module,
        class_names: Sequence[str],
        preprocess: PreprocessSpec,
        arch: str,
        arch_args: dict[str, Any],
        manifest: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        import torch

        self.class_names = list(class_names)
        self.preprocess = preprocess
        self.arch = arch
        self.arch_args = dict(arch_args)
        self.manifest = dict(manifest or {})
        self.device = torch.device(device)
        self.max_pixels = checked_max_pixels(max_pixels)
        # torch's stubs omit Module.to's memory_format keyword (it is documented and supported)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]

    @property
    def num_classes(self) -> int:
        """Number of classes the model distinguishes."""
        return len(self.class_names)

    @property
    def multi_label(self) -> bool:
        """Whether each output is an independent sigmoid probability (the file's task is multi-label)."""
        return (self.manifest.get("task") or {}).get("type") == "multi_label"

    @property
    def thresholds(self) -> np.ndarray | None:
        """Multi-label: the per-class decision thresholds from the file (0.5 where none), else ``None``."""
        if not self.multi_label:
            return None
        found = (self.manifest.get("task") or {}).get("thresholds")
        return np.asarray(found if found is not None else [0.5] * self.num_classes, dtype=np.float64)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)

    def __repr__(self) -> str:
        spec = self.preprocess
        return (
            f"Classifier(arch={self.arch!r}, classes={self.class_names!r}, "
            f"input={spec.height}x{spec.width}, interpolation={spec.interpolation!r})"
        )

    def predict_proba_uint8(self, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Probabilities (N, C) for already-preprocessed uint8 images (N, H, W, 3)."""
        logits = predict_logits(
            self.model, images, self.preprocess, batch_size=batch_size, device=self.device
        )
        if logits.numel() == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return self._activate(logits).numpy()

    def predict_proba_input(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for an already-scaled float32 input (N, 3, H, W), e.g. from ``to_array``.

        The seam for callers that preprocess themselves (a server's tensor protocol); an
        ``OnnxClassifier`` answers the same call through onnxruntime.
        """
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            logits = self.model(t.contiguous(memory_format=torch.channels_last)).float()
            return self._activate(logits).cpu().numpy()

    def _stack(
        self, images: Sequence[ImageSource], channel_order: str, errors: str
    ) -> tuple[np.ndarray, list[str | None]]:
        spec = self.preprocess
        arrays = np.empty((len(images), spec.height, spec.width, 3), dtype=np.uint8)
        failures: list[str | None] = [None] * len(images)
        for i, source in enumerate(images):
            try:
                arrays[i] = preprocess_uint8(
                    source, spec, channel_order=channel_order, max_pixels=self.max_pixels
                )
            except ImageError as exc:
                if errors == "raise":
                    raise
                failures[i] = str(exc)
        return arrays, failures

    def predict_proba(
        self, images: ImageSource | Sequence[ImageSource], *, channel_order: str = "rgb", batch_size: int = 64
    ) -> np.ndarray:
        """Class probabilities (N, num_classes) for one image or a list of images.

        Raises:
            ImageError: If any image cannot be decoded.
        """
        items = _as_list(images)
        step = _check_batch_size(batch_size)
        parts = [
            self.predict_proba_uint8(
                self._stack(items[i : i + step], channel_order, "raise")[0], batch_size=step
            )
            for i in range(0, len(items), step)
        ]  # one batch of decoded images at a time
        return np.concatenate(parts) if parts else np.zeros((0, self.num_classes), dtype=np.float32)

    def predict(
        self,
        images: ImageSource | Sequence[ImageSource],
        *,
        top_k: int = 1,
        channel_order: str = "rgb",
        batch_size: int = 64,
        errors: str = "raise",
    ) -> list[Prediction]:
        """Classify one image or a list of images (paths, bytes, PIL images or numpy arrays).

        Args:
            images: The inputs.
            top_k: How many of the most probable classes to list in each result's ``top_k``.
            channel_order: ``bgr`` for OpenCV arrays; ``rgb`` otherwise.
            batch_size: Images per forward pass.
            errors: ``raise`` (default) stops at the first bad image; ``return`` gives bad images a
                result with ``error`` set and classifies the rest.

        Returns:
            One :class:`Prediction` per input, in input order.

        Raises:
            ImageError: If an image cannot be decoded and ``errors`` is ``raise``.
            UsageError: If an argument is invalid.
        """
        return list(
            self.iter_predict(
                images, top_k=top_k, channel_order=channel_order, batch_size=batch_size, errors=errors
            )
        )

    def iter_predict(
        self,
        images: ImageSource | Sequence[ImageSource],
        *,
        top_k: int = 1,
        channel_order: str = "rgb",
        batch_size: int = 64,
        errors: str = "raise",
    ) -> Iterator[Prediction]:
        """Like :meth:`predict`, but yields results batch by batch, in input order.

        Only one batch of decoded images is held at a time, so any number of images fits in memory.
        """
        if errors not in ("raise", "return"):
            raise UsageError(
                "unknown errors mode",
                received=repr(errors),
                expected="raise | return",
                fix="use errors='return' to keep going past bad images",
            )
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise UsageError(
                "top_k must be a positive integer",
                received=repr(top_k),
                expected=">= 1",
                fix="use top_k=1 or more",
            )
        _check_batch_size(batch_size)
        items = _as_list(images)
        k = min(top_k, self.num_classes)
        thresholds = self.thresholds
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            arrays, failures = self._stack(chunk, channel_order, errors)
            good = [i for i, f in enumerate(failures) if f is None]
            probs = self.predict_proba_uint8(arrays[good], batch_size=batch_size) if good else None
            row = 0
            for i, source in enumerate(chunk):
                name = describe_source(source)
                if failures[i] is not None:
                    yield Prediction(name, None, -1, float("nan"), error=failures[i])
                    continue
                assert probs is not None  # a row that did not fail means `good` was not empty
                p = probs[row]
                row += 1
                order = np.argsort(-p, kind="stable")
                best = int(order[0])
                chosen = None
                if thresholds is not None:
                    chosen = [c for c, v, t in zip(self.class_names, p, thresholds, strict=True) if v >= t]
                yield Prediction(
                    source=name,
                    label=self.class_names[best] if chosen is None else "|".join(chosen) or NO_LABEL,
                    labels=chosen,
                    index=best,
                    confidence=float(p[best]),
                    probabilities={c: float(v) for c, v in zip(self.class_names, p, strict=True)},
                    top_k=[(self.class_names[int(j)], float(p[j])) for j in order[:k]],
                )
