"""A trained model together with everything needed to use it: class names and preprocessing.

Usage::

    clf = imgclf.load("malaria.imgclf")
    for pred in clf.predict(["cell1.png", "cell2.png"]):
        print(pred.label, pred.confidence)
    probs = clf.predict_proba(image_array)              # (N, num_classes) numpy float32
"""

from __future__ import annotations

import contextlib
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
        unlike_training_data: ``True`` when the image lies beyond the file's out-of-distribution
            threshold (the label is then a guess about something the model never saw); ``None`` when
            the file has no threshold.
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
    unlike_training_data: bool | None = None
    labels: list[str] | None = None


@dataclass(frozen=True)
class Explanation:
    """Where the evidence for a class lies in one image (Grad-CAM), from :meth:`Classifier.explain`.

    Attributes:
        source: The image's path or a short description of it.
        label: The class explained (the predicted one unless another was asked for).
        index: Its class index.
        confidence: The model's probability of that class.
        heatmap: float32 (H, W) in [0, 1] at the model's input size: 1 is the strongest evidence.
        overlay: uint8 (h, w, 3): the heatmap blended over the decoded image at its own size.
        layer: The network module the map was read from (chosen automatically).
    """

    source: str
    label: str
    index: int
    confidence: float
    heatmap: np.ndarray
    overlay: np.ndarray
    layer: str


NO_LABEL = "none"  # a multi-label answer with no class over its threshold


def label_text(labels: list[str]) -> str:
    """A multi-label answer as one label: its classes joined by ``|``, or :data:`NO_LABEL` when empty."""
    return "|".join(labels) or NO_LABEL


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


def image_features(
    classifier: Classifier, images: np.ndarray, layer: str, batch_size: int = 256
) -> np.ndarray:
    """The spatial mean of ``layer``'s output for uint8 images (N, H, W, 3): (N, channels) float32.

    The feature vector the out-of-distribution warning measures (:mod:`imgclf.ood`).

    Raises:
        ModelFileError: If ``layer`` is not a module of the network (a file from another imgclf).
    """
    with _features_of(classifier.model, layer) as out:
        predict_logits(
            classifier.model, images, classifier.preprocess, batch_size=batch_size, device=classifier.device
        )
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


@contextlib.contextmanager
def _features_of(model: nn.Module, layer: str) -> Iterator[list[np.ndarray]]:
    """Collect the spatial mean of ``layer``'s output for every forward pass run inside the block.

    Raises:
        ModelFileError: If ``layer`` is not a module of the network (a file from another imgclf).
    """
    from imgclf.errors import ModelFileError

    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise ModelFileError(
            f"the model file's OOD layer {layer[:80]!r} is not a module of its network",
            fix="re-fit the threshold: train again, or load the file with the imgclf that wrote it",
        )
    out: list[np.ndarray] = []

    def keep(_m: nn.Module, _i: object, o: torch.Tensor) -> None:
        out.append(o.float().mean(dim=(2, 3)).cpu().numpy())

    handle = module.register_forward_hook(keep)
    try:
        yield out
    finally:
        handle.remove()


def ood_scores(features: np.ndarray, block: dict[str, Any]) -> np.ndarray:
    """Squared scaled distance of each feature row to the nearest class mean of ``block`` (``ood``)."""
    f = np.asarray(features, dtype=np.float64)
    means = np.asarray(block["means"], dtype=np.float64)
    scale = np.asarray(block["scale"], dtype=np.float64)
    distances: np.ndarray = (((f[:, None, :] - means[None]) ** 2) / scale).sum(axis=-1).min(axis=1)
    return distances


def input_moments(images: np.ndarray) -> np.ndarray:
    """Per-channel mean and standard deviation of uint8 images (N, H, W, 3), in [0, 1]: (N, 6) float64.

    The second check of the out-of-distribution warning: colour statistics catch what the network's
    features confuse with the training data (a photograph next to stained cells).
    """
    f = np.asarray(images, dtype=np.float64) / 255.0
    return np.concatenate([f.mean(axis=(1, 2)), f.std(axis=(1, 2))], axis=1)


def unlike(features: np.ndarray, images: np.ndarray, block: dict[str, Any]) -> np.ndarray:
    """``True`` where either check of the ``ood`` block flags an image: the network's features, or (when
    the block has ``moments``) the input's colour statistics."""
    flags: np.ndarray = ood_scores(features, block) > block["threshold"]
    moments = block.get("moments")
    if isinstance(moments, dict):
        flags |= ood_scores(input_moments(images), moments) > moments["threshold"]
    return flags


def _calibrated(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``; untouched (bit for bit) without calibration."""
    return logits if temperature == 1.0 else logits / temperature


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

    _cam_layer: str | None = None  # Grad-CAM's layer, found on the first explain()
    tta: bool = False  # test-time augmentation: average every probability over imgclf.images.tta's views
    # bf16 autocast for prediction, or None for fp32 (set by imgclf.precision.apply_precision).
    autocast_dtype: torch.dtype | None = None

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
    def temperature(self) -> float:
        """The calibration temperature every probability is computed with (1.0: the file has none).

        Logits are divided by it before the softmax (:mod:`imgclf.calibration`); the winning class never
        changes, only how sure the model says it is.
        """
        calibration = self.manifest.get("calibration")
        return float(calibration["temperature"]) if isinstance(calibration, dict) else 1.0

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

        if self.multi_label:  # per-class sigmoids; temperature scaling is a single-label calibration
            return torch.sigmoid(logits)
        return torch.softmax(_calibrated(logits, self.temperature), dim=1)

    def __repr__(self) -> str:
        spec = self.preprocess
        return (
            f"Classifier(arch={self.arch!r}, classes={self.class_names!r}, "
            f"input={spec.height}x{spec.width}, interpolation={spec.interpolation!r})"
        )

    def predict_proba_uint8(self, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Probabilities (N, C) for already-preprocessed uint8 images (N, H, W, 3).

        With ``tta`` set, the mean over the test-time views (:mod:`imgclf.images.tta`).
        """
        if self.tta and len(images):
            from imgclf.images.tta import average_over_views, tta_views

            training = self.manifest.get("provenance", {}).get("training") or {}
            views = tta_views(training.get("augment") if isinstance(training, dict) else None)
            return average_over_views(lambda v: self._proba_plain(v, batch_size), images, views)
        return self._proba_plain(images, batch_size)

    def _proba_plain(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        logits = predict_logits(
            self.model,
            images,
            self.preprocess,
            batch_size=batch_size,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
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
            with torch.autocast(
                self.device.type,
                dtype=self.autocast_dtype or torch.bfloat16,
                enabled=bool(self.autocast_dtype),
            ):
                logits = self.model(t.contiguous(memory_format=torch.channels_last)).float()
            return self._activate(logits).cpu().numpy()

    def predict_proba_flagged(
        self, images: np.ndarray, batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (N, C) for uint8 images (N, H, W, 3), and their out-of-distribution flags
        (``None`` when the file has no threshold), in one pass."""
        block = self.manifest.get("ood")
        if not isinstance(block, dict) or block.get("score") != "feature_distance" or self.model is None:
            return self.predict_proba_uint8(images, batch_size=batch_size), None
        if self.tta:  # the views would each add features: measure the image itself, separately
            feats = [image_features(self, images, block["layer"], batch_size)]
            probs = self.predict_proba_uint8(images, batch_size=batch_size)
        else:
            with _features_of(self.model, block["layer"]) as feats:
                probs = self.predict_proba_uint8(images, batch_size=batch_size)
        return probs, unlike(np.concatenate(feats), images, block)

    def label_set(self, p: np.ndarray) -> list[str] | None:
        """A multi-label model's answer for probabilities ``p`` (C,): the classes at or over their
        thresholds, in class order; ``None`` for a single-label model."""
        if self.thresholds is None:
            return None
        return [c for c, v, t in zip(self.class_names, p, self.thresholds, strict=True) if v >= t]

    def make_prediction(
        self, source: str, p: np.ndarray, *, top_k: int, unlike_training_data: bool | None = None
    ) -> Prediction:
        """The :class:`Prediction` for one image's probabilities ``p`` (C,), as :meth:`predict` words it:
        the best class, or for a multi-label model the classes at or over their thresholds."""
        order = np.argsort(-p, kind="stable")
        best = int(order[0])
        chosen = self.label_set(p)
        return Prediction(
            source=source,
            label=self.class_names[best] if chosen is None else label_text(chosen),
            labels=chosen,
            index=best,
            confidence=float(p[best]),
            probabilities={c: float(v) for c, v in zip(self.class_names, p, strict=True)},
            top_k=[(self.class_names[int(j)], float(p[j])) for j in order[:top_k]],
            unlike_training_data=unlike_training_data,
        )

    def unlike_training_data(self, images: np.ndarray) -> np.ndarray | None:
        """For uint8 images (N, H, W, 3): ``True`` where an image is beyond the out-of-distribution
        threshold (:mod:`imgclf.ood`); ``None`` when the model file has no threshold."""
        return self.predict_proba_flagged(images, 256)[1]

    def explain(
        self, image: ImageSource, *, target: str | int | None = None, channel_order: str = "rgb"
    ) -> Explanation:
        """Grad-CAM for one image: which regions made the model answer ``target`` (default: its answer).

        The layer is the network's last spatial feature map, found automatically for any architecture
        (:mod:`imgclf.models.gradcam`).

        Raises:
            ImageError: If the image cannot be decoded.
            UsageError: If ``target`` is not one of the model's classes.
        """
        import torch

        from imgclf.images.preprocess import decode
        from imgclf.models.gradcam import gradcam, overlay, target_layer

        if target is None or isinstance(target, int) and not isinstance(target, bool):
            index = target
        elif isinstance(target, str) and target in self.class_names:
            index = self.class_names.index(target)
        else:
            index = -1
        if index is not None and not 0 <= index < self.num_classes:
            raise UsageError(
                "unknown class to explain",
                received=repr(target)[:100],
                expected=f"a class name or index 0 .. {self.num_classes - 1}",
                fix="leave target out to explain the predicted class",
            )
        rgb = decode(image, channel_order=channel_order, max_pixels=self.max_pixels)
        x = preprocess_uint8(rgb, self.preprocess)[None]
        probs = self.predict_proba_uint8(x)[0]
        index = int(np.argmax(probs)) if index is None else index
        if self._cam_layer is None:
            self._cam_layer = target_layer(self.model, self.preprocess.size)
        tensor = to_tensor(x, self.preprocess, device=self.device)
        tensor = tensor.contiguous(memory_format=torch.channels_last)
        heat = gradcam(self.model, tensor, [index], self._cam_layer)[0]
        return Explanation(
            source=describe_source(image),
            label=self.class_names[index],
            index=index,
            confidence=float(probs[index]),
            heatmap=heat,
            overlay=overlay(rgb, heat),
            layer=self._cam_layer,
        )

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
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            arrays, failures = self._stack(chunk, channel_order, errors)
            good = [i for i, f in enumerate(failures) if f is None]
            probs, unlike = self.predict_proba_flagged(arrays[good], batch_size) if good else (None, None)
            row = 0
            for i, source in enumerate(chunk):
                name = describe_source(source)
                if failures[i] is not None:
                    yield Prediction(name, None, -1, float("nan"), error=failures[i])
                    continue
                assert probs is not None  # a row that did not fail means `good` was not empty
                flag = None if unlike is None else bool(unlike[row])
                yield self.make_prediction(name, probs[row], top_k=k, unlike_training_data=flag)
                row += 1
