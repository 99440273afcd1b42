"""Convolutions as explicit matmuls for CPU shapes where PyTorch's default kernels are slow.

FCN's fc6 (a 6×6 kernel, 256→4096, on a small map after pad-100) and fc7 (1×1, 4096→4096)
dominate the backward pass on CPU. Written as unfold + GEMM (or a plain GEMM for 1×1), with an
explicit backward, they run at BLAS speed. ``choose`` returns None for every other shape,
and always on accelerators, where cuDNN is the better choice.

Which BLAS: torch's CPU wheels call MKL, whose sgemm on AMD processors runs a generic path
(bench/gemm_choice.py: 1.3-1.8× slower than OpenBLAS at 1 thread on an AMD EPYC for these
shapes, about 2× at 2 threads); numpy's wheels carry OpenBLAS (what BVLC Caffe uses). So on AMD
CPUs the GEMMs go through numpy (zero-copy views of the same memory), elsewhere through torch.
``CAFFESEG_CPU_GEMM=numpy|torch`` overrides the choice.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

#: below this many output channels × input taps the default kernel is fine
_MIN_WORK = 1 << 20


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def gemm_library(env=None, vendor=None) -> str:
    """"numpy" (OpenBLAS) or "torch" (MKL) for this machine's CPU GEMMs (module docstring)."""
    choice = (os.environ if env is None else env).get("CAFFESEG_CPU_GEMM", "").strip().lower()
    if choice in ("numpy", "torch"):
        return choice
    if choice:
        raise ValueError(f"CAFFESEG_CPU_GEMM must be numpy or torch, got {choice!r}")
    return "numpy" if (_cpu_vendor() if vendor is None else vendor) == "AuthenticAMD" else "torch"


_GEMM = gemm_library()


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (2-D, or batched over a leading axis) on the chosen BLAS; transposed views are
    passed as such (no copy)."""
    if _GEMM == "numpy":
        return torch.from_numpy(np.matmul(a.detach().numpy(), b.detach().numpy()))
    return torch.matmul(a, b)


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
    """A 1×1 stride-1 convolution as one GEMM: ``(N, C, H, W) → (N, O, H, W)``."""
    return _PointwiseConv.apply(x, weight, bias)


def _side_by_side(per_image):
    """``(N, R, L)`` → ``(R, N·L)``: the images' columns side by side, so a batch is one GEMM.
    Caffe runs one GEMM per image; for fc6/fc7 (a 151 MB / 67 MB weight against 81 columns)
    that reads the weight, and writes its gradient, once per image instead of once per batch."""
    n, rows, cols = per_image.shape
    return per_image.reshape(rows, cols) if n == 1 else per_image.transpose(0, 1).reshape(rows, n * cols)


def _per_image(side, n):
    """``(R, N·L)`` → ``(N, R, L)`` (contiguous), the inverse of ``_side_by_side``."""
    rows = side.shape[0]
    if n == 1:
        return side.reshape(1, rows, -1)
    return side.reshape(rows, n, -1).transpose(0, 1).contiguous()


def _gemm_forward(ctx, cols, weight, bias, n):
    """``y = W2 @ cols (+ b)`` for the batch ``cols`` ``(N, K, L)`` → ``(N, O, L)``."""
    side = _side_by_side(cols)
    y = _mm(weight.reshape(weight.shape[0], -1), side)
    if bias is not None:
        y += bias.view(-1, 1)
    ctx.save_for_backward(side, weight)
    ctx.has_bias = bias is not None
    ctx.batch = n
    return _per_image(y, n)


def _gemm_backward(ctx, dy, to_input):
    """(dx, dw, db) of ``_gemm_forward``; ``to_input`` maps the ``(N, K, L)`` column gradient to dx."""
    side, weight = ctx.saved_tensors
    n, out_ch = dy.shape[:2]
    dy2 = _side_by_side(dy.reshape(n, out_ch, -1))  # (O, N·L)
    dx = dw = db = None
    if ctx.needs_input_grad[1]:
        dw = _mm(dy2, side.t()).reshape(weight.shape)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        db = dy2.sum(dim=1)
    if ctx.needs_input_grad[0]:
        dx = to_input(_per_image(_mm(weight.reshape(out_ch, -1).t(), dy2), n))
    return dx, dw, db


class _PointwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        n, c, h, w = x.shape
        ctx.x_shape = x.shape
        return _gemm_forward(ctx, x.reshape(n, c, h * w), weight, bias, n).reshape(n, -1, h, w)

    @staticmethod
    def backward(ctx, dy):
        return _gemm_backward(ctx, dy, lambda dcols: dcols.reshape(ctx.x_shape))


class _Im2colConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, pad, dilation):
        n, c, h, w = x.shape
        out_ch, _, kh, kw = weight.shape
        oh = (h + 2 * pad[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (w + 2 * pad[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        cols = F.unfold(x, (kh, kw), dilation=dilation, padding=pad, stride=stride)  # [n, c*kh*kw, L]
        ctx.geometry = ((h, w), (kh, kw), stride, pad, dilation)
        return _gemm_forward(ctx, cols, weight, bias, n).reshape(n, out_ch, oh, ow)

    @staticmethod
    def backward(ctx, dy):
        (h, w), (kh, kw), stride, pad, dilation = ctx.geometry
        dx, dw, db = _gemm_backward(ctx, dy, lambda dcols: F.fold(
            dcols, (h, w), (kh, kw), dilation=dilation, padding=pad, stride=stride))
        return dx, dw, db, None, None, None
