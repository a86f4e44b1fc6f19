"""Tests of training.augment: identity, flips, rotation direction, seeding, fill modes, shape/dtype/device."""

from __future__ import annotations

import math

import pytest
import torch

from imgclf.config import AugmentSpec
from imgclf.training.augment import affine_matrices, augment_batch, sample_params

STILL = AugmentSpec(
    rotation=0.0,
    zoom=0.0,
    width_shift=0.0,
    height_shift=0.0,
    shear=0.0,
    horizontal_flip=False,
    vertical_flip=False,
)


def batch(n: int, h: int, w: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand((n, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def params(
    n: int = 1,
    *,
    rotation_deg: float = 0.0,
    fx: float = 0.0,
    fy: float = 0.0,
    shear_deg: float = 0.0,
    zx: float = 1.0,
    zy: float = 1.0,
    hflip: float = 0.0,
    vflip: float = 0.0,
) -> torch.Tensor:
    """Hand-built parameters in the documented column order."""
    row = [math.radians(rotation_deg), fx, fy, math.radians(shear_deg), zx, zy, hflip, vflip]
    return torch.tensor(row, dtype=torch.float64).repeat(n, 1)


def apply(x: torch.Tensor, p: torch.Tensor, spec: AugmentSpec = STILL) -> torch.Tensor:
    return augment_batch(x, spec, affine_matrices(p, x.shape[2], x.shape[3]))


@pytest.mark.parametrize("shape", [(12, 12), (8, 13), (17, 6)])
def test_zero_ranges_and_no_flips_are_the_identity(shape: tuple[int, int]) -> None:
    x = batch(4, *shape)
    p = sample_params(4, STILL, torch.Generator().manual_seed(3))
    assert torch.equal(p[:, [0, 1, 2, 3, 6, 7]], torch.zeros(4, 6, dtype=torch.float64))
    assert torch.equal(p[:, 4:6], torch.ones(4, 2, dtype=torch.float64))
    out = augment_batch(x, STILL, affine_matrices(p, *shape))
    assert out.shape == x.shape
    assert (out - x).abs().max().item() < 1e-5


@pytest.mark.parametrize("shape", [(10, 10), (7, 12)])
def test_horizontal_and_vertical_flips_match_torch_flip(shape: tuple[int, int]) -> None:
    x = batch(2, *shape)
    assert torch.allclose(apply(x, params(2, hflip=1.0)), torch.flip(x, dims=[3]), atol=1e-5)
    assert torch.allclose(apply(x, params(2, vflip=1.0)), torch.flip(x, dims=[2]), atol=1e-5)
    assert torch.allclose(apply(x, params(2, hflip=1.0, vflip=1.0)), torch.flip(x, dims=[2, 3]), atol=1e-5)
    assert not torch.allclose(apply(x, params(2, hflip=1.0)), x, atol=1e-2)


def test_sampled_flips_follow_the_spec() -> None:
    gen = torch.Generator().manual_seed(0)
    p = sample_params(2000, AugmentSpec(horizontal_flip=True, vertical_flip=False), gen)
    assert set(p[:, 6].tolist()) == {0.0, 1.0} and 0.45 < p[:, 6].mean().item() < 0.55
    assert (p[:, 7] == 0).all()
    x = batch(2000, 4, 6)
    flips_only = params(2000)
    flips_only[:, 6:] = p[:, 6:]
    out = augment_batch(x, STILL, affine_matrices(flips_only, 4, 6))
    flipped = p[:, 6] == 1
    assert torch.allclose(out[flipped], torch.flip(x[flipped], dims=[3]), atol=1e-5)
    assert torch.allclose(out[~flipped], x[~flipped], atol=1e-5)


def test_rotation_by_90_degrees_matches_rot90_clockwise() -> None:
    """+90 degrees turns the picture clockwise as displayed (row 0 at the top): torch.rot90 with k=-1."""
    x = batch(2, 9, 9)
    out = apply(x, params(2, rotation_deg=90.0))
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert torch.allclose(out[interior], torch.rot90(x, -1, dims=(2, 3))[interior], atol=1e-5)
    assert not torch.allclose(out[interior], torch.rot90(x, 1, dims=(2, 3))[interior], atol=1e-2)
    back = apply(x, params(2, rotation_deg=-90.0))
    assert torch.allclose(back[interior], torch.rot90(x, 1, dims=(2, 3))[interior], atol=1e-5)


def test_rotation_of_a_non_square_image_works_in_pixels() -> None:
    """A dot 2 px right of the centre of a 9x17 image lands 2 px below it after +90 degrees."""
    x = torch.zeros(1, 1, 9, 17)
    x[0, 0, 4, 10] = 1.0  # centre is (row 4, col 8)
    out = apply(x, params(rotation_deg=90.0), AugmentSpec(fill="constant"))
    assert out.shape == x.shape
    assert out[0, 0, 6, 8].item() == pytest.approx(1.0, abs=1e-4)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-4)
    turned = apply(x, params(rotation_deg=180.0), AugmentSpec(fill="constant"))
    assert torch.allclose(turned, torch.flip(x, dims=[2, 3]), atol=1e-5)


@pytest.mark.parametrize("fx,fy", [(2 / 10, 0.0), (0.0, 3 / 8), (-2 / 10, 0.0)])
def test_whole_pixel_shifts_move_content_and_constant_fill_is_zero(fx: float, fy: float) -> None:
    x = batch(1, 8, 10) + 1.0  # no zeros anywhere
    out = apply(x, params(fx=fx, fy=fy), AugmentSpec(fill="constant"))
    dx, dy = round(fx * 10), round(fy * 8)
    expected = torch.zeros_like(x)
    src = x[..., max(dy, 0) : 8 + min(dy, 0), max(dx, 0) : 10 + min(dx, 0)]
    expected[..., max(-dy, 0) : 8 - max(dy, 0), max(-dx, 0) : 10 - max(dx, 0)] = src
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("fill,zeros_expected", [("nearest", False), ("reflect", False), ("constant", True)])
def test_fill_modes(fill: str, zeros_expected: bool) -> None:
    x = 0.5 + 0.5 * batch(3, 16, 16)  # values in [0.5, 1]: any zero comes from the fill
    out = apply(x, params(3, fx=0.3, fy=-0.25, rotation_deg=30.0), AugmentSpec(fill=fill))
    assert bool((out.abs() < 1e-6).any()) is zeros_expected
    if fill == "nearest":
        assert out.min().item() >= 0.5 - 1e-5  # edge pixels replicated, not invented
        edge = x[0, :, :, 0]  # left column is what a right shift of 30 % shows beyond the edge
        shifted = apply(x, params(3, fx=-0.3), AugmentSpec(fill=fill))
        assert torch.allclose(shifted[0, :, :, 0], edge, atol=1e-5)
        assert torch.allclose(shifted[0, :, :, 1], edge, atol=1e-5)


def test_same_seed_same_params_different_seed_different() -> None:
    spec = AugmentSpec()
    a = sample_params(16, spec, torch.Generator().manual_seed(42))
    b = sample_params(16, spec, torch.Generator().manual_seed(42))
    c = sample_params(16, spec, torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (16, 8) and a.dtype == torch.float64


def test_randomness_consumed_does_not_depend_on_the_spec() -> None:
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    p1 = sample_params(10, AugmentSpec(), g1)
    p2 = sample_params(10, STILL, g2)
    assert not torch.equal(p1, p2)
    assert torch.equal(g1.get_state(), g2.get_state())
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_sampled_params_respect_the_ranges() -> None:
    spec = AugmentSpec(rotation=20.0, zoom=0.1, width_shift=0.05, height_shift=0.2, shear=10.0)
    p = sample_params(5000, spec, torch.Generator().manual_seed(0))
    assert p[:, 0].abs().max().item() <= math.radians(20.0)
    assert p[:, 0].abs().max().item() > math.radians(19.0)
    assert p[:, 1].abs().max().item() <= 0.05 and p[:, 2].abs().max().item() <= 0.2
    assert p[:, 3].abs().max().item() <= math.radians(10.0)
    assert 0.9 <= p[:, 4:6].min().item() and p[:, 4:6].max().item() <= 1.1
    assert not torch.equal(p[:, 4], p[:, 5])  # x and y zoom drawn independently


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_preserved(dtype: torch.dtype) -> None:
    x = batch(5, 12, 20, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, AugmentSpec(), affine_matrices(sample_params(5, AugmentSpec(), gen), 12, 20))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_the_gpu_with_cpu_matrices() -> None:  # pragma: no cover - GPU only
    x = batch(4, 16, 16).cuda()
    mats = affine_matrices(sample_params(4, AugmentSpec(), torch.Generator().manual_seed(0)), 16, 16)
    out = augment_batch(x, AugmentSpec(), mats)
    assert out.device == x.device
    assert torch.allclose(out.cpu(), augment_batch(x.cpu(), AugmentSpec(), mats), atol=1e-4)


def test_disabled_spec_and_empty_batch_pass_through() -> None:
    x = batch(2, 8, 8)
    mats = affine_matrices(params(2, rotation_deg=45.0), 8, 8)
    assert augment_batch(x, AugmentSpec(enabled=False), mats) is x
    empty = torch.empty(0, 3, 8, 8)
    assert augment_batch(empty, AugmentSpec(), affine_matrices(params(0), 8, 8)).shape == (0, 3, 8, 8)


def test_matrices_shape_and_identity_values() -> None:
    m = affine_matrices(params(3), 10, 20)
    assert m.shape == (3, 2, 3)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64).expand(3, 2, 3)
    assert torch.allclose(m, expected, atol=1e-12)
