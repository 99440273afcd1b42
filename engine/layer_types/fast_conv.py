"""Convolutions as explicit matmuls for CPU shapes where PyTorch's default kernels are slow.

FCN's fc6 (a 6×6 kernel, 256→4096, on a small map after pad-100) and fc7 (1×1, 4096→4096)
dominate the backward pass on CPU. Written as unfold + mm (or a plain mm for 1×1), with an
explicit backward, they run at BLAS speed. ``choose`` returns None for every other shape,
and always on accelerators, where cuDNN is the better choice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: below this many output channels × input taps the default kernel is fine
_MIN_WORK = 1 << 20


def choose(x, weight, stride, pad, dilation, group):
    if x.device.type != "cpu" or group != 1 or x.dtype != torch.float32:
        return None
    out_ch, in_ch, kh, kw = weight.shape
    if out_ch * in_ch * kh * kw < _MIN_WORK:
        return None
    if kh == 1 and kw == 1 and list(stride) == [1, 1] and list(pad) == [0, 0]:
        return _pointwise
    if x.shape[2] * x.shape[3] <= 32 * 32:
        def run(x, w, b):
            return _Im2colConv.apply(x, w, b, tuple(stride), tuple(pad), tuple(dilation))
        return run
    return None


def _pointwise(x, weight, bias):
    n, c, h, w = x.shape
    w2 = weight.reshape(weight.shape[0], c)
    cols = x.reshape(n, c, h * w)
    y = torch.matmul(w2, cols)  # [n, out, hw]
    if bias is not None:
        y = y + bias.view(1, -1, 1)
    return y.reshape(n, -1, h, w)


class _Im2colConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, pad, dilation):
        n, c, h, w = x.shape
        out_ch, _, kh, kw = weight.shape
        oh = (h + 2 * pad[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (w + 2 * pad[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        cols = F.unfold(x, (kh, kw), dilation=dilation, padding=pad, stride=stride)  # [n, c*kh*kw, L]
        w2 = weight.reshape(out_ch, -1)
        y = torch.matmul(w2, cols)
        if bias is not None:
            y = y + bias.view(1, -1, 1)
        ctx.save_for_backward(cols, weight)
        ctx.geometry = ((h, w), (kh, kw), stride, pad, dilation, bias is not None)
        return y.reshape(n, out_ch, oh, ow)

    @staticmethod
    def backward(ctx, dy):
        cols, weight = ctx.saved_tensors
        (h, w), (kh, kw), stride, pad, dilation, has_bias = ctx.geometry
        n, out_ch = dy.shape[:2]
        dy2 = dy.reshape(n, out_ch, -1)
        dx = dw = db = None
        if ctx.needs_input_grad[1]:
            dw = torch.einsum("nol,nkl->ok", dy2, cols).reshape(weight.shape) if n > 1 else \
                torch.mm(dy2[0], cols[0].t()).reshape(weight.shape)
        if has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(dim=(0, 2))
        if ctx.needs_input_grad[0]:
            dcols = torch.matmul(weight.reshape(out_ch, -1).t(), dy2)
            dx = F.fold(dcols, (h, w), (kh, kw), dilation=dilation, padding=pad, stride=stride)
        return dx, dw, db, None, None, None
