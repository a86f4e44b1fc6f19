"""Tests of imgclf.training.optim: Keras' momentum rule (not PyTorch's), L2, state round trips, no dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from imgclf.training.optim import KerasSGD


def _scalar_run(
    lrs: list[float], momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False
) -> list[float]:
    """Minimise ``loss = w`` (gradient 1) from w = 1 with the given learning rate per step."""
    w = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    groups = [{"params": [w], "weight_decay": weight_decay}]
    opt = KerasSGD(groups, lr=lrs[0], momentum=momentum, nesterov=nesterov)
    seen = []
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        w.backward(torch.ones((), dtype=torch.float64))
        opt.step()
        seen.append(w.item())
    return seen


def test_the_learning_rate_is_folded_into_the_velocity_as_keras_does():
    # Keras: v1 = -0.1, w1 = 0.9; v2 = 0.9 * -0.1 - 0.05 = -0.14, w2 = 0.76.
    # (PyTorch's rule would give b2 = 1.9, w2 = 0.9 - 0.05 * 1.9 = 0.805.)
    assert _scalar_run([0.1, 0.05]) == pytest.approx([0.9, 0.76], abs=1e-12)


def test_nesterov_steps_with_the_velocity_looked_ahead_as_keras_does():
    # Keras: v1 = -0.1, w1 = 1 + 0.9 * -0.1 - 0.1 = 0.81; v2 = -0.09 - 0.05 = -0.14,
    # w2 = 0.81 + 0.9 * -0.14 - 0.05 = 0.634.
    assert _scalar_run([0.1, 0.05], nesterov=True) == pytest.approx([0.81, 0.634], abs=1e-12)


def test_l2_enters_the_gradient_before_the_momentum():
    # g1 = 1 + 0.5 * 1 = 1.5: v1 = -0.15, w1 = 0.85; g2 = 1 + 0.425 = 1.425: v2 = -0.135 - 0.1425.
    w1, w2 = _scalar_run([0.1, 0.1], weight_decay=0.5)
    assert w1 == pytest.approx(0.85, abs=1e-12)
    assert w2 == pytest.approx(0.85 - 0.135 - 0.1425, abs=1e-12)


def test_without_momentum_it_is_plain_gradient_descent():
    assert _scalar_run([0.1, 0.2, 0.3], momentum=0.0) == pytest.approx([0.9, 0.7, 0.4], abs=1e-12)


def test_with_a_constant_learning_rate_it_matches_pytorch_sgd():
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 3)
    b = torch.nn.Linear(8, 3)
    b.load_state_dict(a.state_dict())
    ours = KerasSGD([{"params": a.parameters(), "weight_decay": 1e-3}], lr=0.05, momentum=0.9)
    ref = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    x = torch.randn(16, 8)
    for _ in range(20):
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_nesterov_with_a_constant_learning_rate_matches_pytorch_sgd():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 3), torch.nn.Linear(8, 3)
    b.load_state_dict(a.state_dict())
    ours = KerasSGD([{"params": a.parameters(), "weight_decay": 1e-3}], lr=0.05, momentum=0.9, nesterov=True)
    ref = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    x = torch.randn(16, 8)
    for _ in range(20):
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_state_round_trips_into_a_fresh_optimizer_in_the_parameters_layout():
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    opt = KerasSGD([{"params": conv.parameters()}], lr=0.1, momentum=0.9)
    conv(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    assert sorted(saved["state"]) == [0, 1] and set(saved["state"][0]) == {"velocity"}
    assert saved["param_groups"][0]["params"] == [0, 1] and saved["param_groups"][0]["lr"] == 0.1
    fresh = KerasSGD([{"params": conv.parameters()}], lr=0.1, momentum=0.9)
    fresh.load_state({i: {k: v.contiguous() for k, v in s.items()} for i, s in saved["state"].items()})
    for p in conv.parameters():
        assert torch.equal(fresh.state[p]["velocity"], opt.state[p]["velocity"])
        assert fresh.state[p]["velocity"].stride() == p.stride()


@pytest.mark.parametrize(
    "saved, message",
    [
        ({2: {"velocity": torch.zeros(4)}}, "optimizer state for parameter 2, the model has 2"),
        ({0: {"velocity": torch.zeros(5, 2)}}, r"optimizer state 0.velocity \(\(5, 2\)\) does not fit"),
        ({0: {"momentum_buffer": torch.zeros(4, 2)}}, "optimizer state 0.momentum_buffer"),
        ({1: {"velocity": 3}}, r"optimizer state 1.velocity \(int\)"),
    ],
)
def test_state_that_does_not_fit_is_refused(saved, message):
    layer = torch.nn.Linear(2, 4)
    opt = KerasSGD([{"params": layer.parameters()}], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=message):
        opt.load_state(saved)


def test_zero_grad_drops_or_zeroes_gradients():
    layer = torch.nn.Linear(2, 2)
    opt = KerasSGD([{"params": layer.parameters()}], lr=0.1, momentum=0.9)
    layer(torch.ones(1, 2)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in layer.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in layer.parameters())


def test_creating_a_training_state_does_not_import_dynamo():
    code = (
        "import sys; from imgclf.config import TrainConfig; from imgclf.training.state import create_state; "
        "create_state(TrainConfig(arch='small_cnn'), 2); print('torch._dynamo' in sys.modules)"
    )
    argv = [sys.executable, "-c", code]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_each_group_keeps_its_learning_rate_scale_and_weight_decay():
    """Fine-tuning gives the backbone's group a fraction of the schedule's rate; a group without one
    gets the whole rate."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = KerasSGD([{"params": [a], "lr_scale": 0.1, "weight_decay": 1e-4}, {"params": [b]}], 0.5, 0.9)
    assert [(g["lr_scale"], g["weight_decay"], g["lr"]) for g in opt.param_groups] == [
        (0.1, 1e-4, 0.5),
        (1.0, 0.0, 0.5),
    ]
