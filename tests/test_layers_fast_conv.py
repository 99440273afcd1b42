"""The matmul convolution kernels (engine/layer_types/fast_conv.py) agree with PyTorch's conv2d in
forward and backward, and are only chosen for the large CPU shapes they are meant for."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from caffeseg.engine.layer_types import fast_conv


@pytest.mark.parametrize("n,stride,pad,dilation", [(1, (1, 1), (0, 0), (1, 1)), (2, (2, 1), (1, 2), (1, 2))])
def test_im2col_conv_matches_conv2d(n, stride, pad, dilation):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, 7, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: fast_conv._Im2colConv.apply(x, w, b, stride, pad, dilation), (x, w, b))
    y = fast_conv._Im2colConv.apply(x, w, b, stride, pad, dilation)
    torch.testing.assert_close(y, F.conv2d(x, w, b, stride, pad, dilation))


def test_pointwise_matches_conv2d():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 3, 4, generator=gen)
    w = torch.randn(6, 5, 1, 1, generator=gen)
    b = torch.randn(6, generator=gen)
    torch.testing.assert_close(fast_conv._pointwise(x, w, b), F.conv2d(x, w, b))


def test_choice_by_shape():
    x_small_map = torch.zeros(1, 256, 14, 14)
    assert fast_conv.choose(x_small_map, torch.zeros(4096, 256, 6, 6), [1, 1], [0, 0], [1, 1], 1) is not None
    assert fast_conv.choose(torch.zeros(1, 4096, 9, 9), torch.zeros(4096, 4096, 1, 1), [1, 1], [0, 0], [1, 1], 1) \
        is fast_conv._pointwise
    # small layers, grouped layers and large maps keep PyTorch's kernels
    assert fast_conv.choose(torch.zeros(1, 3, 9, 9), torch.zeros(4, 3, 3, 3), [1, 1], [0, 0], [1, 1], 1) is None
    assert fast_conv.choose(x_small_map, torch.zeros(4096, 128, 6, 6), [1, 1], [0, 0], [1, 1], 2) is None
    assert fast_conv.choose(torch.zeros(1, 256, 64, 64), torch.zeros(4096, 256, 6, 6), [1, 1], [0, 0], [1, 1], 1) is None


def test_pointwise_backward_matches_autograd():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 5, 1, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fast_conv._pointwise, (x, w, b))


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_both_gemm_libraries_give_conv2d(monkeypatch, library):
    monkeypatch.setattr(fast_conv, "_GEMM", library)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 6, 6, generator=gen, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, generator=gen, requires_grad=True)
    y = fast_conv._Im2colConv.apply(x, w, None, (1, 1), (1, 1), (1, 1))
    dy = torch.randn(y.shape, generator=gen)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    ref = F.conv2d(x, w, None, 1, 1)
    rdx, rdw = torch.autograd.grad(ref, (x, w), dy)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(dx, rdx)
    torch.testing.assert_close(dw, rdw)


def test_gemm_library_by_cpu_vendor_and_override():
    assert fast_conv.gemm_library(env={}, vendor="AuthenticAMD") == "numpy"  # MKL's generic path on AMD
    assert fast_conv.gemm_library(env={}, vendor="GenuineIntel") == "torch"
    assert fast_conv.gemm_library(env={"CAFFESEG_CPU_GEMM": "torch"}, vendor="AuthenticAMD") == "torch"
    with pytest.raises(ValueError, match="CAFFESEG_CPU_GEMM"):
        fast_conv.gemm_library(env={"CAFFESEG_CPU_GEMM": "blis"})
