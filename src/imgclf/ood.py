"""The "unlike the training data" warning: a feature-space distance, and its threshold set on held-out data.

Each image's feature vector is the spatial mean of the network's last feature map (the layer Grad-CAM
reads, :func:`imgclf.models.gradcam.target_layer`). Its score is the squared distance to the nearest class
mean of the training split, each dimension scaled by the training split's within-class variance (a
diagonal Mahalanobis distance). A second, identical check runs on the input's colour statistics
(per-channel mean and standard deviation). An image scoring above ``OOD_MARGIN`` times the
``OOD_QUANTILE`` quantile of the validation split on either check is flagged. Logit-based scores
(energy, maximum logit, maximum probability) were measured and rejected: see docs/performance.md,
"Out-of-distribution warning".

Usage::

    block = fit_ood(classifier, train_images, train_labels, val_images)   # the manifest's "ood" block
    classifier.manifest["ood"] = block                                      # predict now flags inputs
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from imgclf.classifier import Classifier

OOD_QUANTILE = 0.95
OOD_MARGIN = 2.0
# The per-class means travel in the manifest as JSON numbers: beyond this many the warning is not stored.
MAX_OOD_VALUES = 65536
MIN_OOD_IMAGES = 20


def fit_ood(
    classifier: Classifier,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    *,
    split: str = "validation",
) -> dict[str, Any] | None:
    """The manifest's ``ood`` block for ``classifier``, or ``None`` when it cannot be set honestly.

    Args:
        classifier: The trained classifier.
        train_images: Training images, uint8 (N, H, W, 3): the class means and variances.
        train_labels: Their class indices.
        val_images: Held-out images, uint8: the threshold.
        split: The held-out split's name, for the record.

    Returns:
        ``None`` with fewer than ``MIN_OOD_IMAGES`` held-out images, or too many features to store.
    """
    from imgclf.classifier import image_features
    from imgclf.models.gradcam import target_layer

    if len(val_images) < MIN_OOD_IMAGES or not len(train_images):
        return None
    layer = target_layer(classifier.model, classifier.preprocess.size)
    feats = image_features(classifier, train_images, layer).astype(np.float64)
    labels = np.asarray(train_labels)
    present = [c for c in range(classifier.num_classes) if (labels == c).any()]
    if len(present) * feats.shape[1] > MAX_OOD_VALUES:
        return None
    block: dict[str, Any] = {
        "score": "feature_distance",
        "layer": layer,
        **_class_stats(feats, labels, present),
        "threshold": 0.0,
        "split": split,
        "images": len(val_images),
        "quantile": OOD_QUANTILE,
    }
    from imgclf.classifier import input_moments, ood_scores, unlike

    held_out = ood_scores(image_features(classifier, val_images, layer), block)
    block["threshold"] = float(OOD_MARGIN * np.quantile(held_out, OOD_QUANTILE))
    moments = _class_stats(input_moments(train_images), labels, present)
    moments["threshold"] = float(
        OOD_MARGIN * np.quantile(ood_scores(input_moments(val_images), moments), OOD_QUANTILE)
    )
    block["moments"] = moments
    val_features = image_features(classifier, val_images, layer)
    block["flagged_share"] = float(np.mean(unlike(val_features, val_images, block)))
    return block


def _class_stats(feats: np.ndarray, labels: np.ndarray, present: list[int]) -> dict[str, Any]:
    """Per-class means and the pooled within-class variance per dimension (float32 lists)."""
    means = np.stack([feats[labels == c].mean(axis=0) for c in present])
    centred = np.concatenate([feats[labels == c] - means[i] for i, c in enumerate(present)])
    scale = centred.var(axis=0) + 1e-6 * max(float(centred.var()), 1e-12)
    return {"means": means.astype(np.float32).tolist(), "scale": scale.astype(np.float32).tolist()}
