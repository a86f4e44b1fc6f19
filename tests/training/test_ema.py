"""Tests of training.ema: the weight average against a hand computation, batch-norm statistics
recomputed for the averaged weights (checked against the statistics computed by hand), and the swap
in and out of the training weights leaving the run bit for bit as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import assert_same_tensors, tiny_train_config
from imgclf.config import PreprocessSpec
from imgclf.images.preprocess import to_tensor
from imgclf.training.ema import (
    averaged_weights,
    bn_images,
    ema_decay,
    recompute_bn,
    start_average,
    update_average,
)
from imgclf.training.state import TrainState, final_weights

SPEC = PreprocessSpec(height=4, width=4)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 1, bias=True), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 2))


def _images(n: int = 5) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)


def test_decay_ramps_up_then_holds():
    assert ema_decay(0.998, 1) == 2 / 11 and ema_decay(0.998, 90) == 91 / 100
    assert ema_decay(0.998, 10_000) == 0.998 and ema_decay(0.5, 20) == 0.5


@pytest.mark.parametrize("n, step", [(10, 1), (64, 1), (127, 1), (128, 2), (200, 3), (256, 4), (10_000, 4)])
def test_bn_statistics_come_from_every_kth_image(n, step):
    images = np.arange(n).reshape(n, 1, 1, 1)
    assert np.array_equal(bn_images(images), images[::step])


def test_the_average_follows_the_hand_computation():
    model = _tiny()
    first = {k: v.clone() for k, v in model.named_parameters()}
    average = start_average(model)
    assert_same_tensors(average, first)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    update_average(average, model, decay=0.9, step=1)  # d = min(0.9, 2/11)
    d = 2 / 11
    for name, p in model.named_parameters():
        torch.testing.assert_close(average[name], d * first[name] + (1 - d) * p.detach(), rtol=0, atol=1e-6)
    update_average(average, model, decay=0.9, step=10_000)  # d = 0.9
    for name, p in model.named_parameters():
        expected = 0.9 * (d * first[name] + (1 - d) * p.detach()) + 0.1 * p.detach()
        torch.testing.assert_close(average[name], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch_size", [8, 2])
def test_bn_statistics_are_recomputed_for_the_given_weights(batch_size):
    """Running mean/var = the equal-weight average of per-batch mean / unbiased variance of conv(x)."""
    model = _tiny()
    model.train()
    images = _images(5)
    with torch.no_grad():
        model[1].running_mean.fill_(123.0)  # stale statistics from other weights
        model[1].running_var.fill_(456.0)
        conv_out = model[0](to_tensor(images, SPEC))
    batches = [conv_out[i : i + batch_size] for i in range(0, 5, batch_size)]
    mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    model.eval()
    recompute_bn(model, images, SPEC, batch_size=batch_size)
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-5, atol=1e-6)
    assert not model.training and model[1].momentum == 0.1  # flag and momentum restored
    assert int(model[1].num_batches_tracked) == len(batches)


def test_averaged_weights_swap_in_the_average_and_restore_the_run_exactly():
    model = _tiny()
    images = _images(6)
    with torch.no_grad():
        model(to_tensor(images, SPEC))  # some running statistics of the training weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    average = {k: v.detach() * 0.5 for k, v in model.named_parameters()}
    with averaged_weights(model, average, images, SPEC) as inside:
        for name, p in inside.named_parameters():
            assert torch.equal(p, average[name])
        with torch.no_grad():
            expected_mean = model[0](to_tensor(images, SPEC)).mean((0, 2, 3))
        torch.testing.assert_close(inside[1].running_mean, expected_mean, rtol=1e-5, atol=1e-6)
        inside_state = {k: v.clone() for k, v in inside.state_dict().items()}
    assert_same_tensors(model.state_dict(), before)
    assert not torch.equal(inside_state["1.running_mean"], before["1.running_mean"])


def test_keep_last_with_ema_saves_the_averaged_weights():
    model = _tiny()
    averaged = {k: torch.full_like(v, 7) for k, v in model.state_dict().items()}
    state = TrainState(model=model, optimizer=None, epoch=3, averaged=averaged)  # type: ignore[arg-type]
    saved, epoch = final_weights(tiny_train_config(keep="last", ema=0.9), state)
    assert epoch == 3 and all(torch.equal(v, averaged[k]) for k, v in saved.state_dict().items())
