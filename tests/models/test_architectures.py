"""Tests of models.registry: the seed ResNet's shape and numbers, TF padding, L2 groups, the registry."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import SEED_PARAMS_2
from imgclf.errors import UsageError
from imgclf.models import registry, seed_resnet
from imgclf.models.seed_resnet import SameConv2d

HEAD_IN = 256 * (64 // 4 // 8) ** 2  # 64 px -> two strided stages -> 16 px -> AvgPool(8) -> 2x2, 256 filters


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def seed_model() -> nn.Module:
    torch.manual_seed(0)
    return registry.build("seed_resnet", num_classes=2, input_size=(64, 64))


def _usage(fn, *args, **kwargs) -> str:
    with pytest.raises(UsageError) as info:
        fn(*args, **kwargs)
    assert info.value.exit_code == 2
    return str(info.value)


# --- the seed ResNet -----------------------------------------------------------------------------


def test_seed_resnet_has_the_recipes_parameter_count(seed_model: nn.Module) -> None:
    assert trainable(seed_model) == SEED_PARAMS_2
    assert seed_model.head.in_features == HEAD_IN


@pytest.mark.parametrize("classes,expected", [(3, 292_137), (10, 299_312)])
def test_only_the_dense_layer_grows_with_the_class_count(classes: int, expected: int) -> None:
    model = registry.build("seed_resnet", classes)
    assert trainable(model) == expected == SEED_PARAMS_2 + (classes - 2) * (HEAD_IN + 1)


@pytest.mark.parametrize("stem,size", [("cifar", (64, 64)), ("tiny_imagenet", (64, 64)), ("cifar", (32, 48))])
def test_output_shape(stem: str, size: tuple[int, int]) -> None:
    model = registry.build("seed_resnet", 3, input_size=size, args={"stem": stem}).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, *size))
    assert out.shape == (1, 3)
    assert torch.isfinite(out).all()


def test_tiny_imagenet_stem_layers() -> None:
    model = registry.build("seed_resnet", 2, args={"stem": "tiny_imagenet"})
    kinds = [type(m) for m in model.stem]
    assert kinds == [SameConv2d, nn.BatchNorm2d, nn.ReLU, nn.ZeroPad2d, nn.MaxPool2d]
    assert model.stem[0].kernel_size == (5, 5)
    assert model.head.in_features == 256  # 64 -> pool 32 -> 16 -> 8 -> AvgPool(8) -> 1x1


def _conv(kernel: int, stride: int, cin: int = 3, cout: int = 4) -> SameConv2d:
    torch.manual_seed(1)
    return SameConv2d(cin, cout, kernel, stride)


@pytest.mark.parametrize("size,pads", [(64, (0, 1, 0, 1)), (7, (1, 1, 1, 1)), (8, (0, 1, 0, 1))])
def test_strided_3x3_uses_tensorflow_same_padding(size: int, pads: tuple[int, int, int, int]) -> None:
    conv = _conv(3, 2)
    x = torch.rand(2, 3, size, size)
    expected = F.conv2d(F.pad(x, pads), conv.weight, stride=2, padding=0)
    out = conv(x)
    assert out.shape[-1] == -(-size // 2)
    assert torch.allclose(out, expected, atol=1e-6)
    if size % 2 == 0:  # PyTorch's symmetric padding=1 would give a different answer
        assert not torch.allclose(out, F.conv2d(x, conv.weight, stride=2, padding=1), atol=1e-3)


def test_non_square_strided_padding_is_per_axis() -> None:
    conv = _conv(3, 2)
    x = torch.rand(1, 3, 7, 10)  # height needs (1, 1), width needs (0, 1)
    assert torch.allclose(conv(x), F.conv2d(F.pad(x, (0, 1, 1, 1)), conv.weight, stride=2), atol=1e-6)


def test_unstrided_and_1x1_convs() -> None:
    x = torch.rand(1, 3, 9, 9)
    c3 = _conv(3, 1)
    assert torch.allclose(c3(x), F.conv2d(x, c3.weight, padding=1), atol=1e-6)
    c1 = _conv(1, 2)
    assert torch.allclose(c1(x), F.conv2d(x, c1.weight, stride=2), atol=1e-6)
    assert c3.bias is None and c1.bias is None


def test_every_strided_conv_in_the_model_is_same_padded(seed_model: nn.Module) -> None:
    strided = [m for m in seed_model.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert len(strided) == 4  # two stages x (3x3 conv + 1x1 projection)
    assert all(isinstance(m, SameConv2d) and m.padding == (0, 0) for m in strided)


def test_batch_norm_settings(seed_model: nn.Module) -> None:
    norms = [m for m in seed_model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 1 + 7 * 3 + 1  # input BN, 3 per residual module, final BN
    for bn in norms:
        assert bn.eps == 2e-5
        assert bn.momentum == pytest.approx(0.1)  # Keras momentum 0.9 keeps 90 % of the old statistic
    custom = registry.build("seed_resnet", 2, args={"bn_momentum": 0.99, "bn_eps": 1e-3})
    bn = custom.input_bn
    assert bn.momentum == pytest.approx(0.01) and bn.eps == 1e-3


def test_no_conv_has_a_bias_and_weights_are_glorot(seed_model: nn.Module) -> None:
    convs = [m for m in seed_model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.bias is None for m in convs)
    w = seed_model.stem.weight  # 32 x 3 x 3 x 3: glorot bound sqrt(6 / (27 + 288))
    bound = (6 / (3 * 9 + 32 * 9)) ** 0.5
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.8 * bound
    assert torch.count_nonzero(seed_model.head.bias) == 0


# --- L2 groups -----------------------------------------------------------------------------------


def _coefficients(model: nn.Module) -> dict[int, float]:
    seen: dict[int, float] = {}
    for coef, params in registry.l2_groups(model):
        for p in params:
            assert id(p) not in seen, "a parameter is in two groups"
            seen[id(p)] = coef
    assert set(seen) == {id(p) for p in model.parameters()}  # every parameter exactly once
    return seen


@pytest.mark.parametrize("stem", ["cifar", "tiny_imagenet"])
def test_l2_groups_follow_the_recipe(stem: str) -> None:
    model = registry.build("seed_resnet", 2, args={"stem": stem})
    coef = _coefficients(model)
    stem_convs = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
    block_convs = [m for m in model.blocks.modules() if isinstance(m, nn.Conv2d)]
    assert len(stem_convs) == 1 and len(block_convs) == 7 * 3 + 3
    assert coef[id(stem_convs[0].weight)] == 5e-4
    assert coef[id(model.head.weight)] == 5e-4
    assert all(coef[id(m.weight)] == 1e-4 for m in block_convs)
    regularised = {id(m.weight) for m in stem_convs + block_convs} | {id(model.head.weight)}
    assert all(c == 0.0 for pid, c in coef.items() if pid not in regularised)
    assert coef[id(model.head.bias)] == 0.0 and coef[id(model.input_bn.weight)] == 0.0


def test_l2_coefficients_come_from_the_args() -> None:
    model = registry.build("seed_resnet", 2, args={"reg": 0.01, "module_reg": 0.0})
    groups = {c: len(ps) for c, ps in registry.l2_groups(model) if ps}
    assert groups[0.01] == 2
    assert 0.0 in groups and 1e-4 not in groups


def test_small_cnn_builds_runs_and_groups() -> None:
    model = registry.build("small_cnn", 4, input_size=(32, 24), args={"widths": [8, 16]}).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 3, 32, 24)).shape == (3, 4)
    coef = _coefficients(model)
    kernels = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(kernels) == 3 and all(coef[id(w)] == 1e-4 for w in kernels)
    assert coef[id(model.head.bias)] == 0.0


def test_default_l2_groups_for_models_without_them() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    assert _coefficients(model) and set(_coefficients(model).values()) == {0.0}


# --- the registry --------------------------------------------------------------------------------


def test_registered_names_and_args_are_json_data() -> None:
    assert {"seed_resnet", "small_cnn"} <= set(registry.names())
    assert registry.names() == sorted(registry.names())
    args = registry.resolve_args("seed_resnet", {"stages": (1, 1, 1), "reg": 0})
    assert args == {
        "stages": [1, 1, 1],
        "filters": [32, 64, 128, 256],
        "reg": 0.0,
        "module_reg": 0.0001,
        "bn_eps": 2e-5,
        "bn_momentum": 0.9,
        "stem": "cifar",
    }
    assert isinstance(args["reg"], float)
    assert json.loads(json.dumps(args)) == args
    model = registry.build("seed_resnet", 2, args=args)
    assert len(model.blocks) == 3


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "torchvision.models.resnet18",
        "../x",
        "imgclf.train",
        "__import__",
        "",
        "SEED_RESNET",
        None,
        ["seed_resnet"],
    ],
)
def test_unknown_architecture_is_rejected_without_importing(name: object) -> None:
    before = set(sys.modules)
    msg = _usage(registry.build, name, 2)
    assert msg.startswith("unknown architecture; received ")
    assert "seed_resnet" in msg and "small_cnn" in msg  # the message lists what is available
    assert set(sys.modules) == before
    _usage(registry.resolve_args, name, {})
    _usage(registry.info, name)


@pytest.mark.parametrize(
    "name,args,problem",
    [
        (
            "seed_resnet",
            {"stagez": [1]},
            "unknown argument(s) for architecture 'seed_resnet'; received stagez; expected one of bn_eps",
        ),
        ("seed_resnet", {"stages": "2,2,3"}, "architecture argument 'stages' has the wrong type"),
        ("seed_resnet", {"stages": [2, 2.0, 3]}, "architecture argument 'stages' has the wrong type"),
        ("seed_resnet", {"filters": [1e6] * 4}, "architecture argument 'filters' has the wrong type"),
        ("seed_resnet", {"filters": [True, 64, 128, 256]}, "architecture argument 'filters' has the wrong"),
        ("seed_resnet", {"reg": "0.1"}, "architecture argument 'reg' has the wrong type"),
        ("seed_resnet", {"reg": float("nan")}, "architecture argument 'reg' has the wrong type"),
        ("seed_resnet", {"bn_eps": True}, "architecture argument 'bn_eps' has the wrong type"),
        ("seed_resnet", {"stem": 3}, "architecture argument 'stem' has the wrong type"),
        ("small_cnn", {"widths": 16}, "architecture argument 'widths' has the wrong type"),
        ("small_cnn", {"stages": [1]}, "unknown argument(s) for architecture 'small_cnn'; received stages"),
    ],
)
def test_bad_builder_args_are_rejected(name: str, args: dict, problem: str) -> None:
    assert _usage(registry.resolve_args, name, args).startswith(problem)
    assert _usage(registry.build, name, 2, (64, 64), args).startswith(problem)


@pytest.fixture
def no_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any layer is allocated: checks must run before construction."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a layer was built before the size checks")

    monkeypatch.setattr(seed_resnet.PreActBottleneck, "__init__", refuse)
    monkeypatch.setattr(seed_resnet.SameConv2d, "__init__", refuse)
    monkeypatch.setattr(nn.Conv2d, "__init__", refuse)


@pytest.mark.parametrize(
    "name,args,problem",
    [
        ("seed_resnet", {"filters": [10**6] * 4}, "filters out of range"),
        ("seed_resnet", {"filters": [32, 64, 0, 256]}, "filters out of range"),
        ("seed_resnet", {"filters": [32, 64, 128]}, "filters has the wrong length"),
        ("seed_resnet", {"stages": [100, 100, 57]}, "stages out of range"),
        ("seed_resnet", {"stages": [2, 0, 3]}, "stages out of range"),
        ("seed_resnet", {"stages": [], "filters": [32]}, "stages out of range"),
        ("seed_resnet", {"stem": "imagenet"}, "unknown stem"),
        ("seed_resnet", {"bn_momentum": 1.0}, "batch-norm or L2 settings out of range"),
        ("seed_resnet", {"reg": -1.0}, "batch-norm or L2 settings out of range"),
        ("small_cnn", {"widths": [8] * 17}, "small_cnn settings out of range"),
        ("small_cnn", {"widths": []}, "widths out of range"),
        ("small_cnn", {"widths": [5000]}, "widths out of range"),
    ],
)
def test_absurd_sizes_are_rejected_before_allocating(
    no_blocks: None, name: str, args: dict, problem: str
) -> None:
    assert _usage(registry.build, name, 2, (64, 64), args).startswith(problem)  # no_blocks: nothing built


@pytest.mark.parametrize("classes", [1, 0, -3, True, 2.0, "2", 10**6])
def test_class_count_is_checked(no_blocks: None, classes: object) -> None:
    assert _usage(registry.build, "small_cnn", classes).startswith("number of classes out of range")


@pytest.mark.parametrize("size", [(10**6, 10**6), (0, 64), (64.0, 64), (True, 64), (64,), "64", None])
def test_input_size_is_checked(no_blocks: None, size: object) -> None:
    assert _usage(registry.build, "seed_resnet", 2, size).startswith("input size out of range")


def test_args_must_be_a_mapping(no_blocks: None) -> None:
    assert _usage(registry.build, "seed_resnet", 2, (64, 64), [("reg", 0.1)]).startswith(
        "architecture arguments must be a mapping"
    )


def test_input_too_small_for_the_seed_resnet() -> None:
    msg = _usage(registry.build, "seed_resnet", 2, (16, 16))
    assert msg.startswith("input too small for seed_resnet; received 16x16")
    assert registry.build("seed_resnet", 2, (32, 32)).head.in_features == 256
