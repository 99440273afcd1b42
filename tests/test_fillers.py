"""Fillers: deterministic ones exactly, random ones by their statistics.

Tolerances come from the sample size: a mean of n draws is checked to 6 standard errors,
a standard deviation to 6·σ/sqrt(2n)."""
from __future__ import annotations

import math

import pytest
import torch

from caffeseg.engine import rng
from caffeseg.engine.fillers import FillerError, fill
from caffeseg.engine.proto import caffe_pb2


def filler(**fields):
    f = caffe_pb2.FillerParameter()
    for key, value in fields.items():
        setattr(f, key, value)
    return f


@pytest.fixture(autouse=True)
def seeded():
    rng.set_seed(1234)


def check_mean_std(t, mean, std):
    n = t.numel()
    assert abs(t.mean().item() - mean) < 6 * std / math.sqrt(n)
    assert abs(t.std().item() - std) < 6 * std / math.sqrt(2 * n)


def test_default_is_constant_zero_and_constant_value():
    assert not fill(None, (3, 2)).any()
    assert not fill(caffe_pb2.FillerParameter(), (4,)).any()
    assert fill(filler(type="constant", value=2.5), (2, 2)).tolist() == [[2.5, 2.5], [2.5, 2.5]]


def test_uniform_range_and_moments():
    t = fill(filler(type="uniform", min=-2.0, max=4.0), (200, 100))
    assert t.min().item() >= -2.0 and t.max().item() <= 4.0
    check_mean_std(t, 1.0, 6.0 / math.sqrt(12))


def test_gaussian_moments_and_sparse_keep_rate():
    t = fill(filler(type="gaussian", mean=1.0, std=0.5), (100, 200))
    check_mean_std(t, 1.0, 0.5)
    sparse = fill(filler(type="gaussian", std=1.0, sparse=10), (40, 500))  # keep p = 10/40
    kept = (sparse != 0).float().mean().item()
    assert abs(kept - 0.25) < 6 * math.sqrt(0.25 * 0.75 / sparse.numel())


def test_gaussian_std_must_be_positive():
    with pytest.raises(FillerError):
        fill(filler(type="gaussian", std=0.0), (2,))


@pytest.mark.parametrize("norm,n", [
    (caffe_pb2.FillerParameter.FAN_IN, 8 * 3 * 3),     # conv weight [64, 8, 3, 3]: fan_in = 8·9
    (caffe_pb2.FillerParameter.FAN_OUT, 64 * 3 * 3),   # fan_out = 64·9
    (caffe_pb2.FillerParameter.AVERAGE, (72 + 576) / 2),
])
def test_xavier_and_msra_fan_rules(norm, n):
    shape = (64, 8, 3, 3)
    x = fill(filler(type="xavier", variance_norm=norm), shape)
    bound = math.sqrt(3.0 / n)
    assert x.abs().max().item() <= bound
    check_mean_std(x, 0.0, bound / math.sqrt(3))  # U[-a, a] has std a/sqrt(3)
    m = fill(filler(type="msra", variance_norm=norm), shape)
    check_mean_std(m, 0.0, math.sqrt(2.0 / n))


def test_positive_unitball_rows_sum_to_one():
    t = fill(filler(type="positive_unitball"), (5, 3, 2, 2))
    assert (t >= 0).all()
    assert t.reshape(5, -1).sum(dim=1).tolist() == pytest.approx([1.0] * 5)


def test_bilinear_kernel_matches_formula_in_every_slice():
    t = fill(filler(type="bilinear"), (2, 3, 4, 4))
    # K = 4: f = 2, c = 3/4; profile 1 - |x/2 - 3/4| = [0.25, 0.75, 0.75, 0.25]
    profile = [0.25, 0.75, 0.75, 0.25]
    expected = [a * b for a in profile for b in profile]
    for o in range(2):
        for i in range(3):
            assert t[o, i].flatten().tolist() == pytest.approx(expected)


@pytest.mark.parametrize("k,profile", [
    (3, [0.5, 1.0, 0.5]),                      # f = 2, c = 1/2
    (5, [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]),    # f = 3, c = 2/3
])
def test_bilinear_profiles(k, profile):
    t = fill(filler(type="bilinear"), (1, 1, k, k))
    assert t[0, 0, k // 2].tolist() == pytest.approx([profile[k // 2] * p for p in profile])
    assert t[0, 0, 0, 0].item() == pytest.approx(profile[0] ** 2)


def test_bilinear_k16_profile_steps_by_eighths():
    t = fill(filler(type="bilinear"), (1, 1, 16, 16))
    half = [0.0625 + 0.125 * i for i in range(8)]  # f = 8, c = 15/16
    profile = half + half[::-1]
    assert (t[0, 0, 0] / profile[0]).tolist() == pytest.approx(profile)  # row 0 = profile[0]·profile


def test_bilinear_needs_square_4d_and_unknown_type_fails():
    with pytest.raises(FillerError, match="square"):
        fill(filler(type="bilinear"), (1, 1, 4, 3))
    with pytest.raises(FillerError, match="4-D"):
        fill(filler(type="bilinear"), (4, 4))
    with pytest.raises(FillerError, match="unknown filler type 'nope'"):
        fill(filler(type="nope"), (2,))


def test_seed_makes_random_fillers_reproducible():
    rng.set_seed(5)
    a = fill(filler(type="gaussian"), (10,))
    rng.set_seed(5)
    b = fill(filler(type="gaussian"), (10,))
    assert torch.equal(a, b)
