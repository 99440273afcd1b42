"""Pooling (Caffe's ``PoolingLayer``: MAX, AVE; STOCHASTIC in TEST takes the weighted average).

Caffe's output size (ceil by default, with its own clip rule) differs from PyTorch's
``ceil_mode``, so the input is padded explicitly to exactly the extent Caffe's windows cover
and the pooling then runs without implicit padding: −inf padding for MAX (padding never wins;
PyTorch's scan keeps the first maximum on a strict '>', as Caffe does), zero padding for AVE
with the sum divided by Caffe's divisor (pad cells count, ceil-overhang cells do not).

MAX on the CPU with 8 or more channels runs PyTorch's channels-last kernel, which compares a
vector of channels at a time, 2-5× faster than its NCHW kernel on FCN's pools
(bench/pool_kernels.py); it keeps the same first maximum, and the backward is the NCHW one with
the same indices, so results are bit-identical.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from caffeseg.engine.layer_types._util import FLT_MAX
from caffeseg.engine.layer_types.base import Layer, register
from caffeseg.engine.proto import caffe_pb2

_P = caffe_pb2.PoolingParameter

#: fewer channels than this: the channels-last kernel has too little to vectorize (3: 1.6× slower)
CHANNELS_LAST_MIN = 8


class _MaxPoolChannelsLast(torch.autograd.Function):
    """``F.max_pool2d`` of an NCHW tensor through the channels-last kernel; NCHW result. The
    backward scatters into NCHW with the forward's indices (the flat ``h·W + w`` of each maximum
    in its plane, the same in both layouts) in torch's NCHW kernel."""

    @staticmethod
    def forward(ctx, x, kernel, stride, pad, ceil_mode):
        y, idx = F.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), kernel, stride,
                                           pad, ceil_mode=ceil_mode)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x, idx.contiguous())
            ctx.geometry = (list(kernel), list(stride), list(pad), ceil_mode)
        return y.contiguous()

    @staticmethod
    def backward(ctx, dy):
        x, idx = ctx.saved_tensors
        kernel, stride, pad, ceil_mode = ctx.geometry
        dx = torch.ops.aten.max_pool2d_with_indices_backward(dy.contiguous(), x, kernel, stride, pad, [1, 1],
                                                             ceil_mode, idx)
        return dx, None, None, None, None


def max_pool2d(x, kernel, stride, pad=(0, 0), ceil_mode=False):
    """``F.max_pool2d`` (one top, autograd), through the channels-last kernel where it is faster."""
    if x.device.type == "cpu" and x.dim() == 4 and x.shape[1] >= CHANNELS_LAST_MIN and x.is_contiguous():
        return _MaxPoolChannelsLast.apply(x, tuple(kernel), tuple(stride), tuple(pad), ceil_mode)
    return F.max_pool2d(x, kernel, stride, pad, ceil_mode=ceil_mode)


@register
class PoolingLayer(Layer):
    """Caffe ``Pooling`` (MAX or AVE; STOCHASTIC is not implemented).

    Output size ``ceil((size + 2·pad − kernel) / stride) + 1`` (``round_mode: FLOOR`` floors),
    minus one when the last window would start in the padding; AVE divides by the window's
    extent clipped to the padded input (pad cells count).

    Parameters (``pooling_param``): ``pool`` (default MAX), ``kernel_size`` or
    ``kernel_h``/``kernel_w``, ``stride`` (default 1) or ``stride_h``/``stride_w``, ``pad``
    (default 0, < kernel) or ``pad_h``/``pad_w``, ``global_pooling``, ``round_mode`` (default CEIL).

    Shape:
        - bottom: ``(N, C, H, W)``
        - top 0: ``(N, C, H_out, W_out)``; optional top 1 (MAX only): the argmax index ``h·W + w``"""

    type = "Pooling"
    exact_bottoms = 1
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes):
        pp = self.param.pooling_param
        self.method = pp.pool
        if self.method not in (_P.MAX, _P.AVE):
            raise self.fail("only MAX and AVE pooling are supported (Caffe's CPU STOCHASTIC is not implemented)")
        if len(self.param.top) == 2 and self.method != _P.MAX:
            raise self.fail("a second (mask) top is only produced by MAX pooling")
        self.global_pooling = pp.global_pooling
        has_hw = pp.HasField("kernel_h") or pp.HasField("kernel_w")
        if self.global_pooling:
            if pp.HasField("kernel_size") or has_hw:
                raise self.fail("global_pooling takes no kernel size")
        else:
            if pp.HasField("kernel_size") == has_hw:
                raise self.fail("give exactly one of kernel_size or kernel_h and kernel_w")
            if has_hw and not (pp.HasField("kernel_h") and pp.HasField("kernel_w")):
                raise self.fail("kernel_h and kernel_w must both be given")
        self.kernel = ([pp.kernel_h, pp.kernel_w] if has_hw else [pp.kernel_size] * 2)
        has_pad_hw = pp.HasField("pad_h") or pp.HasField("pad_w")
        if has_pad_hw and (pp.HasField("pad") or not (pp.HasField("pad_h") and pp.HasField("pad_w"))):
            raise self.fail("give pad, or both pad_h and pad_w")
        self.pad = [pp.pad_h, pp.pad_w] if has_pad_hw else [pp.pad] * 2
        has_stride_hw = pp.HasField("stride_h") or pp.HasField("stride_w")
        if has_stride_hw and (pp.HasField("stride") or not (pp.HasField("stride_h") and pp.HasField("stride_w"))):
            raise self.fail("give stride, or both stride_h and stride_w")
        self.stride = [pp.stride_h, pp.stride_w] if has_stride_hw else [pp.stride] * 2
        if self.global_pooling and (any(self.pad) or any(s != 1 for s in self.stride)):
            raise self.fail("global_pooling needs pad 0 and stride 1")
        if not self.global_pooling:
            if any(k <= 0 for k in self.kernel) or any(s <= 0 for s in self.stride):
                raise self.fail(f"kernel {self.kernel} and stride {self.stride} must be > 0")
            if any(p >= k for p, k in zip(self.pad, self.kernel)):
                raise self.fail(f"pad {self.pad} must be smaller than kernel {self.kernel}")
        self.floor = pp.round_mode == _P.FLOOR
        return []

    def _geometry(self, shape):
        if len(shape) != 4:
            raise self.fail(f"input must be 4-D (N,C,H,W), got {tuple(shape)}")
        kernel = list(shape[2:]) if self.global_pooling else self.kernel
        outs = []
        for i in range(2):
            size = shape[2 + i]
            frac = (size + 2 * self.pad[i] - kernel[i]) / self.stride[i]
            out = (math.floor(frac) if self.floor else math.ceil(frac)) + 1
            outs.append(out)
        if self.pad[0] or self.pad[1]:
            for i in range(2):
                if (outs[i] - 1) * self.stride[i] >= shape[2 + i] + self.pad[i]:
                    outs[i] -= 1
        if any(o <= 0 for o in outs):
            raise self.fail(f"input {tuple(shape)} is smaller than the kernel {kernel}")
        return kernel, outs

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        _, outs = self._geometry(shape)
        top = shape[:2] + tuple(outs)
        return [top] * len(self.param.top)

    def _torch_agrees(self, shape, kernel, outs) -> bool:
        """Whether PyTorch's own padding/ceil_mode gives Caffe's windows (no copy needed)."""
        for i in range(2):
            if 2 * self.pad[i] > kernel[i]:
                return False
            frac = (shape[2 + i] + 2 * self.pad[i] - kernel[i]) / self.stride[i]
            out = (math.floor(frac) if self.floor else math.ceil(frac)) + 1
            if not self.floor and (out - 1) * self.stride[i] >= shape[2 + i] + self.pad[i]:
                out -= 1  # PyTorch drops a last window starting in the right padding
            if out != outs[i]:
                return False
        return True

    def forward(self, bottoms, params):
        x = bottoms[0]
        kernel, outs = self._geometry(x.shape)
        h, w = x.shape[2], x.shape[3]
        if len(self.param.top) == 1 and self._torch_agrees(x.shape, kernel, outs):
            # same windows, same first-maximum rule, and for AVE the same divisor (pad cells
            # count, ceil overhang does not: count_include_pad with ceil_mode)
            if self.method == _P.MAX:
                return [max_pool2d(x, kernel, self.stride, self.pad, ceil_mode=not self.floor)]
            return [F.avg_pool2d(x, kernel, self.stride, self.pad, ceil_mode=not self.floor,
                                 count_include_pad=True)]
        # pad left by `pad`; pad (or crop) right so the last window ends exactly at the input edge
        right = [(outs[i] - 1) * self.stride[i] + kernel[i] - (x.shape[2 + i] + self.pad[i]) for i in range(2)]
        pads = [self.pad[1], right[1], self.pad[0], right[0]]
        if self.method == _P.MAX:
            xp = F.pad(x, pads, value=float("-inf")) if any(pads) else x
            if len(self.param.top) == 2:
                y, idx = F.max_pool2d(xp, kernel, self.stride, return_indices=True)
                mask = self._caffe_index(idx, xp.shape[3], h, w)
                y = y.clamp(min=-FLT_MAX)
                return [y, mask]
            y = max_pool2d(xp, kernel, self.stride)
            if right[0] >= kernel[0] or right[1] >= kernel[1]:
                y = y.clamp(min=-FLT_MAX)  # windows wholly outside the input (Caffe: −FLT_MAX)
            return [y]
        xp = F.pad(x, pads) if any(pads) else x
        sums = F.avg_pool2d(xp, kernel, self.stride, divisor_override=1)
        div = [self._divisors(outs[i], kernel[i], self.stride[i], self.pad[i], x.shape[2 + i], x.device)
               for i in range(2)]
        return [sums / (div[0].view(-1, 1) * div[1].view(1, -1))]

    @staticmethod
    def _divisors(out, kernel, stride, pad, size, device):
        start = torch.arange(out, device=device, dtype=torch.float32) * stride - pad
        end = torch.clamp(start + kernel, max=size + pad)
        return end - start

    def _caffe_index(self, idx, padded_w, h, w):
        """PyTorch's flat index in the padded plane → Caffe's h·W + w in the input (−1 if none)."""
        row = torch.div(idx, padded_w, rounding_mode="floor") - self.pad[0]
        col = idx % padded_w - self.pad[1]
        inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        return torch.where(inside, row * w + col, torch.full_like(row, -1)).to(torch.float32)
