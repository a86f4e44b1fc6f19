"""Grad-CAM: the layer is found for every architecture imgclf builds (imported Keras graphs included), the
map agrees with Captum's ``LayerGradCam`` (the oracle, a test-only dependency), and ``Classifier.explain``
returns a heatmap and an overlay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import make_classifier
from imgclf.errors import UsageError
from imgclf.models.gradcam import gradcam, gradcam_raw, overlay, target_layer
from interop.keras_helpers import KERAS_DIR, inputs, reference

captum_attr = pytest.importorskip("captum.attr", reason="Captum is the Grad-CAM oracle (dev extra)")

ARCHES = [("small_cnn", None, 16, "features.6"), ("seed_resnet", {}, 64, "final_bn")]


def _keras_classifier(name: str):
    from imgclf.interop.keras_import import import_keras

    ref = reference(name)
    return import_keras(KERAS_DIR / name, ref["classes"]).classifier, inputs(ref)


@pytest.mark.parametrize(("arch", "args", "size", "layer"), ARCHES)
def test_the_layer_is_the_last_spatial_map_and_the_map_equals_captums(arch, args, size, layer):
    clf = make_classifier(("a", "b", "c"), arch=arch, args=args, size=size)
    assert target_layer(clf.model, (size, size)) == layer
    x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    targets = [0, 1, 2, 1]
    module = dict(clf.model.named_modules())[layer]
    oracle = captum_attr.LayerGradCam(clf.model, module).attribute(x, target=targets, relu_attributions=True)
    torch.testing.assert_close(gradcam_raw(clf.model, x, targets, layer), oracle[:, 0], rtol=1e-5, atol=1e-7)
    up = captum_attr.LayerAttribution.interpolate(oracle, (size, size), "bilinear")[:, 0]
    expected = (up.detach() / up.detach().flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]).clamp(
        0, 1
    )
    np.testing.assert_allclose(gradcam(clf.model, x, targets, layer), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet_keras2.h5", "minivgg_keras2.h5", "shallownet_keras3.keras"])
def test_imported_keras_graphs_get_a_layer_and_agree_with_captum(name):
    pytest.importorskip("h5py")
    clf, images = _keras_classifier(name)
    layer = target_layer(clf.model, clf.preprocess.size)
    module = dict(clf.model.named_modules())[layer]
    assert type(module).__name__ != "Pool" and getattr(module, "kind", None) != "dropout"
    e = clf.explain(images[0])
    assert e.layer == layer and e.heatmap.shape == clf.preprocess.size
    # scaled to a peak of 1, or all 0 where no region speaks for the class (the untrained minivgg
    # fixture: Captum computes the same all-negative sum below)
    assert e.heatmap.max() in (0.0, 1.0)
    from imgclf.images.preprocess import preprocess_uint8, to_tensor

    x = to_tensor(preprocess_uint8(images[0], clf.preprocess)[None], clf.preprocess)
    oracle = captum_attr.LayerGradCam(clf.model, module).attribute(x, target=e.index, relu_attributions=True)
    torch.testing.assert_close(
        gradcam_raw(clf.model, x, [e.index], layer), oracle[:, 0], rtol=1e-4, atol=1e-6
    )


def test_explain_gives_the_predicted_class_a_heatmap_and_an_overlay_at_the_image_size():
    clf = make_classifier(("ring", "square"))
    img = np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8)
    e = clf.explain(img)
    pred = clf.predict(img)[0]
    assert (e.label, e.index) == (pred.label, pred.index) and e.confidence == pytest.approx(pred.confidence)
    assert e.heatmap.shape == (16, 16) and e.heatmap.dtype == np.float32
    assert 0 <= e.heatmap.min() and e.heatmap.max() <= 1
    assert e.overlay.shape == (50, 40, 3) and e.overlay.dtype == np.uint8
    other = clf.explain(img, target="square" if pred.label == "ring" else "ring")
    assert other.index != pred.index
    with pytest.raises(UsageError, match="unknown class to explain"):
        clf.explain(img, target="cat")


def test_overlay_is_the_image_where_there_is_no_heat_and_coloured_where_there_is():
    rgb = np.full((8, 8, 3), 200, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    out = overlay(rgb, heat, alpha=0.5)
    assert out[7, 7].tolist() == [100, 100, 164]  # blue end of the ramp, half-blended
    assert out[0, 0, 0] > out[0, 0, 2]  # red where the evidence is


def test_a_timm_resnet_is_read_at_its_last_blocks_output_not_its_shortcut():
    """timm's residual blocks end in an in-place ReLU after the addition: that is the block's output;
    the shortcut's batch norm before it is not (it was chosen while in-place layers counted as
    pass-throughs)."""
    from imgclf.models import registry, timm_backbone
    from imgclf.models.gradcam import target_layer

    timm_backbone.require_timm()
    model = registry.build("timm:test_resnet", num_classes=3, input_size=(64, 64)).eval()
    layer = target_layer(model, (64, 64))  # the last stage's map is 2x2 here (1x1 at 32x32: skipped)
    assert "downsample" not in layer and layer.split(".")[-1].startswith("act"), layer
    last_block = [n for n, _ in model.named_modules() if n.count(".") == 1 and n.startswith("layer")][-1]
    assert layer.startswith(last_block + "."), (layer, last_block)
