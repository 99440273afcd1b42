"""LRN ACROSS_CHANNELS keeps Caffe's CPU arithmetic order bit for bit: the engine's vectorised
running sums against a literal transcription of lrn_layer.cpp's CrossChannelForward_cpu and
CrossChannelBackward_cpu (per image, per channel, axpy as one rounding of an exact product)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from caffeseg.engine.layer_types import lrn


def _powx(a, exponent):
    """Caffe's caffe_powx, computed as the engine computes it (torch's float32 pow). glibc's powf,
    which Caffe calls, and torch's vectorised pow differ by an ulp here and there; that is not
    the order this test is about (the golden cases compare the whole layer at tolerance)."""
    return torch.from_numpy(a).pow(exponent).numpy()


def _axpy(a, x, y):
    """Caffe's caffe_axpy (OpenBLAS saxpy, a fused multiply-add): y + a·x rounded once."""
    return (y.astype(np.float64) + np.float64(a) * x.astype(np.float64)).astype(np.float32)


def _caffe_forward(x, size, alpha, beta, k):
    n, channels = x.shape[:2]
    pre = (size - 1) // 2
    alpha_over_size = np.float32(alpha / size)
    scale = np.empty_like(x)
    for i in range(n):
        padded_square = np.zeros((channels + size - 1,) + x.shape[2:], np.float32)
        padded_square[pre:pre + channels] = x[i] * x[i]
        running = np.full(x.shape[2:], np.float32(k), np.float32)
        for c in range(size):
            running = _axpy(alpha_over_size, padded_square[c], running)
        scale[i, 0] = running
        for c in range(1, channels):
            running = _axpy(alpha_over_size, padded_square[c + size - 1], scale[i, c - 1])
            scale[i, c] = _axpy(-alpha_over_size, padded_square[c - 1], running)
    return scale, _powx(scale, -beta) * x


def _caffe_backward(x, top, scale, dtop, size, alpha, beta):
    n, channels = x.shape[:2]
    pre = (size - 1) // 2
    cache_ratio = np.float32(2.0 * alpha * beta / size)
    dx = dtop * _powx(scale, -beta)
    for i in range(n):
        padded_ratio = np.zeros((channels + size - 1,) + x.shape[2:], np.float32)
        padded_ratio[pre:pre + channels] = dtop[i] * top[i] / scale[i]
        accum = np.zeros(x.shape[2:], np.float32)
        for c in range(size - 1):
            accum = _axpy(1.0, padded_ratio[c], accum)
        for c in range(channels):
            accum = _axpy(1.0, padded_ratio[c + size - 1], accum)
            dx[i, c] = _axpy(-cache_ratio, x[i, c] * accum, dx[i, c])
            accum = _axpy(-1.0, padded_ratio[c], accum)
    return dx


@pytest.mark.parametrize("shape,size,alpha,beta,k,value_range", [
    ((3, 7, 5, 4), 5, 1e-4, 0.75, 1.0, 4000.0),  # FCN-AlexNet's norm on 16-bit-range values
    ((2, 6, 3, 3), 3, 2.0, 0.5, 2.0, 10.0),
    ((1, 2, 4, 4), 5, 1e-4, 0.75, 1.0, 255.0),  # fewer channels than the window
])
def test_across_channels_is_caffes_order_bit_for_bit(shape, size, alpha, beta, k, value_range):
    rs = np.random.RandomState(sum(shape))
    x = (rs.rand(*shape) * value_range).astype(np.float32)
    dtop = rs.randn(*shape).astype(np.float32)
    scale, top = _caffe_forward(x, size, alpha, beta, k)
    np.testing.assert_array_equal(lrn.caffe_cross_channel_scale(torch.tensor(x), size, alpha, k).numpy(), scale)
    xt = torch.tensor(x, requires_grad=True)
    y = lrn._AcrossChannels.apply(xt, size, alpha, beta, k)
    np.testing.assert_array_equal(y.detach().numpy(), top)
    (dx,) = torch.autograd.grad(y, xt, torch.tensor(dtop))
    np.testing.assert_array_equal(dx.numpy(), _caffe_backward(x, top, scale, dtop, size, alpha, beta))
    assert y.is_contiguous() and dx.is_contiguous()
