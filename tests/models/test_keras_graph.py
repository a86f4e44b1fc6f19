"""The ``keras_graph`` architecture: its layer records are checked strictly as data, it builds on the meta
device like every architecture, and its layers compute TensorFlow's semantics (checked by hand)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from imgclf.errors import UsageError
from imgclf.models import registry
from imgclf.models.graph_schema import infer_shapes, same_pads

CONV = {"type": "conv2d", "filters": 4, "kernel": [3, 3], "strides": [2, 2], "dilation": [1, 1],
        "padding": "same", "bias": True, "activation": "relu"}  # fmt: skip
LAYERS = [
    {"name": "in", "type": "input", "inbound": []},
    {"name": "c", **CONV, "inbound": [0]},
    {"name": "bn", "type": "batchnorm", "eps": 2e-5, "momentum": 0.9, "inbound": [1]},
    {"name": "p", "type": "avgpool", "pool": [3, 3], "strides": [2, 2], "padding": "same", "inbound": [2]},
    {"name": "f", "type": "flatten", "inbound": [3]},
    {"name": "d", "type": "dense", "units": 2, "bias": True, "activation": "linear", "inbound": [4]},
]


def test_builds_on_meta_and_resolves_args_as_json_data() -> None:
    args = registry.resolve_args("keras_graph", {"layers": LAYERS})
    assert args == {"layers": LAYERS, "input_order": "rgb"}
    meta = registry.build_meta("keras_graph", 2, (9, 9), args)
    assert all(p.is_meta for p in meta.parameters())
    assert infer_shapes(LAYERS, (9, 9)) == [(3, 9, 9), (4, 5, 5), (4, 5, 5), (4, 3, 3), (36,), (2,)]
    model = registry.build("keras_graph", 2, (9, 9), args).eval()
    assert model(torch.rand(2, 3, 9, 9)).shape == (2, 2)


def _with(index: int, **change: object) -> list[dict]:
    layers = copy.deepcopy(LAYERS)
    layers[index].update(change)
    return layers


@pytest.mark.parametrize(
    "layers,match",
    [
        ("not a list", "wrong type"),
        ([], "list of layers"),
        (_with(1, type="lambda"), "unknown layer type"),
        (_with(1, code="import os"), "wrong keys"),
        (_with(1, filters=10**6), "bad 'filters'"),
        (_with(1, kernel=[3, 3, 3]), "bad 'kernel'"),
        (_with(1, activation="exec"), "bad 'activation'"),
        (_with(2, eps=0.0), "bad 'eps'"),
        (_with(2, eps=True), "bad 'eps'"),
        (_with(1, inbound=[3]), "bad wiring"),
        (_with(3, inbound=[1]), "feed nothing"),
        (_with(4, inbound=[]), "bad wiring"),
        (_with(0, type="flatten"), "bad wiring"),
        (_with(1, name=""), "bad name"),
        (_with(5, activation="softmax"), "no softmax"),
        (_with(5, units=3), "one logit per class"),
        (_with(3, pool=[64, 64], padding="valid"), "window larger"),
    ],
)
def test_bad_records_are_refused(layers, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        registry.build_meta("keras_graph", 2, (9, 9), {"layers": layers})


def test_bad_input_order_is_refused() -> None:
    with pytest.raises(UsageError, match="input_order"):
        registry.build_meta("keras_graph", 2, (9, 9), {"layers": LAYERS, "input_order": "gbr"})


@pytest.mark.parametrize(
    "size,kernel,stride,pads", [(64, 3, 2, (0, 1)), (7, 3, 2, (1, 1)), (8, 1, 2, (0, 0)), (5, 4, 1, (1, 2))]
)
def test_tensorflow_same_padding(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> None:
    assert same_pads(size, kernel, stride) == pads


def test_layers_compute_tensorflow_semantics() -> None:
    model = registry.build("keras_graph", 2, (9, 9), {"layers": LAYERS}).eval()
    conv, pool = model.layers[1], model.layers[3]
    x = torch.rand(1, 3, 9, 9)
    # 9 -> 5 with stride 2: total padding 2, one each side; the pool (5 -> 3) pads 1 before, 1 after.
    assert conv.pads == [1, 1, 1, 1] and pool.pads == [1, 1, 1, 1]
    y = torch.rand(1, 4, 5, 5)
    got = pool(y)
    # TensorFlow's "same" average ignores the padding: the corner window averages 2x2 real pixels.
    assert torch.allclose(got[0, :, 0, 0], y[0, :, :2, :2].mean(dim=(1, 2)))
    flat = model.layers[4](torch.arange(8.0).view(1, 2, 2, 2))
    assert flat.tolist() == [[0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]]  # height, width, channels
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 2)
    bgr = registry.build("keras_graph", 2, (9, 9), {"layers": LAYERS, "input_order": "bgr"}).eval()
    bgr.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(bgr(x.flip(1)), out)
    assert torch.equal(F.pad(torch.ones(1, 1, 1, 1), [0, 1, 0, 1]).sum(), torch.tensor(1.0))
