"""Local response normalization: ACROSS_CHANNELS scales ``alpha`` by ``1/local_size``, WITHIN_CHANNEL
by ``1/local_size²`` and ignores ``k`` (fixed at 1), as Caffe does.

ACROSS_CHANNELS reproduces Caffe's CPU arithmetic order, not just its formula: Caffe slides a
window over the channels, adding the entering channel's α/n·x² and subtracting the leaving
one's with BLAS axpy (a fused multiply-add). With 16-bit inputs x² reaches ~1e8 and that
running sum loses digits; a direct window sum differs from Caffe by ~2e-4 relative on Caffe's
own inputs. The running sum is therefore recomputed the same way (each step rounded once to float32, as FMA does), and the backward
follows Caffe's running-sum order as well. This is the CPU path; on accelerators the direct
window sum is used (see ``forward``). Through a whole net, ulp-level differences in the layers
before an LRN (convolution summation order) are still amplified by this cancellation.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from caffeseg.engine.layer_types.base import Layer, register
from caffeseg.engine.proto import caffe_pb2


@register
class LRNLayer(Layer):
    """Caffe ``LRN`` (local response normalisation).

    ACROSS_CHANNELS: ``y = x / (k + α/n·Σ x²)^β`` over n neighbouring channels; WITHIN_CHANNEL:
    ``y = x / (1 + α/n²·Σ x²)^β`` over an n×n spatial window (k is ignored, as Caffe does).

    Parameters (``lrn_param``): ``local_size`` n (default 5, odd), ``alpha`` (default 1),
    ``beta`` (default 0.75), ``k`` (default 1), ``norm_region`` (default ACROSS_CHANNELS).

    Shape: bottom ``(N, C, H, W)``, top the same shape."""

    type = "LRN"
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes):
        lp = self.param.lrn_param
        self.size = lp.local_size
        if self.size % 2 == 0 or self.size <= 0:
            raise self.fail(f"local_size must be a positive odd number, got {self.size}")
        self.alpha, self.beta, self.k = lp.alpha, lp.beta, lp.k
        self.within = lp.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL
        return []

    def reshape(self, bottom_shapes):
        if len(bottom_shapes[0]) != 4:
            raise self.fail(f"input must be 4-D, got {tuple(bottom_shapes[0])}")
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, params):
        x = bottoms[0]
        if not self.within:
            if x.device.type == "cpu":
                return [_AcrossChannels.apply(x, self.size, self.alpha, self.beta, self.k)]
            # accelerators: the sequential running sum costs a kernel launch per channel step
            # (10× the whole net on an H100), and Caffe's own GPU kernel sums in yet another
            # order, so use the direct window sum (PyTorch also divides alpha by the size)
            return [F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)]
        # Caffe builds WITHIN_CHANNEL from sub-layers: the window sum is divided by size² and
        # the additive constant is fixed at 1 (k is ignored)
        half = (self.size - 1) // 2
        sums = F.avg_pool2d(x * x, self.size, 1, half, divisor_override=1)
        scale = 1.0 + (self.alpha / (self.size * self.size)) * sums
        return [x * scale.pow(-self.beta)]


def caffe_cross_channel_scale(x: torch.Tensor, size: int, alpha: float, k: float) -> torch.Tensor:
    """k + α/n·Σ x² over the channel window, accumulated in Caffe's sliding order with FMA rounding.

    Only the running sum is sequential; it runs in numpy on channel-major planes (two adds and
    two roundings per channel, in place): as torch operations with their float32/float64
    conversions that was ~1200 small ops per pass, 6 % of an FCN-AlexNet step."""
    a = np.float64(np.float32(alpha / size))  # Caffe's float alpha_over_size (a float64 scalar: the
    # products below must be formed in float64, not rounded to float32 first)
    pre = (size - 1) // 2
    n, channels = x.shape[:2]
    squares = (x * x).to(torch.float32).transpose(0, 1).reshape(channels, -1).numpy()  # (C, N·H·W)
    # a·x² in float64 is exact (24 × 24 bits), so one float64 add and one cast to float32 is
    # the float32 axpy's single rounding (as the direct torch version of this loop computed it)
    products = np.zeros((channels + size - 1, squares.shape[1]), np.float64)
    np.multiply(squares, a, out=products[pre:pre + channels], dtype=np.float64)
    scale = np.empty((channels, squares.shape[1]), np.float32)
    wide = np.empty(squares.shape[1], np.float64)
    running = np.full(squares.shape[1], np.float32(k), np.float32)
    for c in range(size):
        np.add(running, products[c], out=wide)
        running[...] = wide
    scale[0] = running
    for c in range(1, channels):
        np.add(scale[c - 1], products[c + size - 1], out=wide)
        scale[c] = wide
        np.subtract(scale[c], products[c - 1], out=wide)
        scale[c] = wide
    return torch.from_numpy(scale).reshape((channels, n) + tuple(x.shape[2:])).transpose(0, 1).contiguous()


class _AcrossChannels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        with torch.no_grad():
            scale = caffe_cross_channel_scale(x, size, alpha, k)
            power = scale.pow(-beta)  # kept for backward: pow is most of this layer's float32 work
            y = power * x
        ctx.save_for_backward(x, y, scale, power)
        ctx.hyper = (size, alpha, beta)
        return y

    @staticmethod
    def backward(ctx, dy):
        # Caffe's CrossChannelBackward order: dx = dy·scale^−β, then for each channel
        # dx[c] −= (2αβ/n)·x[c]·Σ_window dy·y/scale, the window sum kept as a float32 running
        # sum (the only sequential part, in numpy on channel-major planes; the rest at once)
        x, y, scale, power = ctx.saved_tensors
        size, alpha, beta = ctx.hyper
        n, channels = x.shape[:2]
        pre = (size - 1) // 2
        cache_ratio = float(np.float32(2.0 * alpha * beta / size))
        ratio = (dy * y / scale).to(torch.float32).transpose(0, 1).reshape(channels, -1).numpy()
        padded = np.zeros((channels + size - 1, ratio.shape[1]), np.float32)
        padded[pre:pre + channels] = ratio
        window = np.empty_like(ratio)  # the running sum as channel c reads it
        accum = np.zeros(ratio.shape[1], np.float32)
        for c in range(size - 1):
            accum += padded[c]
        for c in range(channels):
            np.add(accum, padded[c + size - 1], out=window[c])
            np.subtract(window[c], padded[c], out=accum)
        window = torch.from_numpy(window).reshape((channels, n) + tuple(x.shape[2:])).transpose(0, 1).contiguous()
        dx = dy * power
        # x·Σ rounded to float32, then one fused multiply-subtract (exact float64 product)
        times_x = (x * window).to(torch.float64)
        dx = torch.add(dx.to(torch.float64), times_x, alpha=-cache_ratio).to(torch.float32)
        return dx, None, None, None, None
