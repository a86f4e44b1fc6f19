"""Global-batch batch norm outside a process group, and switching layers back (the 2-process maths are
tested in test_distributed.py)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from imgclf.models import registry
from imgclf.training.global_bn import use_global_batch_norm


def test_outside_a_group_the_layers_compute_as_plain_batch_norm_and_switch_back():
    torch.manual_seed(0)
    model = registry.build("small_cnn", 2, (16, 16), {"widths": [4, 8]})
    plain = copy.deepcopy(model)
    keys = list(model.state_dict())
    restore = use_global_batch_norm(model)
    assert all(type(m) is not nn.BatchNorm2d for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)  # training mode, running stats too
    after, expected = model.state_dict().values(), plain.state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(after, expected, strict=True))
    restore()
    assert [type(m) for m in model.modules()] == [type(m) for m in plain.modules()]
    assert list(model.state_dict()) == keys
