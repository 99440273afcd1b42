"""The CPU convolution kernels of engine/layer_types/fast_conv.py and winograd.py: Winograd
F(2×2, 3×3) against conv2d on random shapes, the BLAS wrapper's operand layouts, weight
gradients added into the net's parameter diffs, and the golden Caffe cases with every
convolution forced through these kernels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffeseg.engine.layer_types import fast_conv, winograd
from conftest import check_case, load_golden


def _reference(x, w, b, pad, group, dy):
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = F.conv2d(xr, wr, b, 1, pad, 1, group)
    dx, dw = torch.autograd.grad(y, (xr, wr), dy)
    return y.detach(), dx, dw


# batch, in channels, out channels, height, width, pad, group, bias
SHAPES = [(1, 3, 4, 7, 6, 1, 1, True), (2, 4, 6, 8, 9, 0, 2, False), (3, 2, 2, 5, 5, 2, 1, True),
          (2, 6, 4, 11, 10, 1, 2, True), (1, 1, 1, 3, 3, 0, 1, False), (2, 5, 3, 4, 13, 2, 1, True)]


@pytest.mark.parametrize("shape", SHAPES)
def test_winograd_matches_conv2d_in_float64(shape):
    n, c, o, h, w, pad, group, has_bias = shape
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    wt = torch.randn(o, c // group, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(o, generator=gen, dtype=torch.float64) if has_bias else None
    y_ref = F.conv2d(x, wt, b, 1, pad, 1, group)
    dy = torch.randn(y_ref.shape, generator=gen, dtype=torch.float64)
    _, dx_ref, dw_ref = _reference(x, wt, b, pad, group, dy)
    torch.testing.assert_close(winograd.convolve(x, wt, b, pad, group, fast_conv.gemm), y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(winograd.input_gradient(dy, wt, pad, group, fast_conv.gemm), dx_ref, rtol=0, atol=1e-12)
    dw = torch.full_like(wt, 0.5)  # added into, as into a parameter diff
    winograd.weight_gradient(x, dy, pad, group, fast_conv.gemm, dw, accumulate=True)
    torch.testing.assert_close(dw, dw_ref + 0.5, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk_bytes", [1, 16 * 4 * 3 * 4 * 3, 1 << 30])
def test_winograd_chunks_of_tile_rows_and_of_images_give_the_same_result(monkeypatch, chunk_bytes):
    """1 byte: one tile row per chunk; 576: a few rows; 1 GiB: all images in one GEMM."""
    monkeypatch.setattr(winograd, "_CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 4, 9, 7, generator=gen, dtype=torch.float64)
    wt = torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64)
    y_ref = F.conv2d(x, wt, None, 1, 1, 1, 2)
    dy = torch.randn(y_ref.shape, generator=gen, dtype=torch.float64)
    _, dx_ref, dw_ref = _reference(x, wt, None, 1, 2, dy)
    torch.testing.assert_close(winograd.convolve(x, wt, None, 1, 2, fast_conv.gemm), y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(winograd.input_gradient(dy, wt, 1, 2, fast_conv.gemm), dx_ref, rtol=0, atol=1e-12)
    dw = winograd.weight_gradient(x, dy, 1, 2, fast_conv.gemm, torch.empty_like(wt))
    torch.testing.assert_close(dw, dw_ref, rtol=0, atol=1e-12)


def test_winograd_float32_error_is_below_the_golden_tolerance():
    """At FCN-8s' conv4 widths the float32 result is within 1e-5 of the output's scale of the
    float64 convolution (the golden tolerance is 1e-4), as torch's own direct kernel is."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 256, 20, 20, generator=gen)
    wt = torch.randn(256, 256, 3, 3, generator=gen) * 0.02
    exact = F.conv2d(x.double(), wt.double(), None, 1, 1)
    ours = winograd.convolve(x, wt, None, 1, 1, fast_conv.gemm).double()
    assert float((ours - exact).abs().max() / exact.abs().max()) < 1e-5


@pytest.mark.parametrize("plan", [(True, True, True), (False, False, True), (True, False, False), (False, True, False)])
def test_winograd_layer_function_gradcheck_for_each_plan(plan):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: fast_conv._WinogradConv.apply(x, w, b, 1, 2, plan), (x, w, b))


def test_winograd_applies_to_3x3_stride_1_only():
    w3 = torch.zeros(8, 8, 3, 3)
    assert winograd.applies(w3, [1, 1], [1, 1], [1, 1])
    assert winograd.applies(w3, [1, 1], [2, 2], [1, 1])
    assert not winograd.applies(w3, [2, 2], [1, 1], [1, 1])  # stride
    assert not winograd.applies(w3, [1, 1], [1, 1], [2, 2])  # dilation
    assert not winograd.applies(w3, [1, 1], [3, 3], [1, 1])  # the input gradient would pad −1
    assert not winograd.applies(w3, [1, 1], [1, 0], [1, 1])  # unequal padding
    assert not winograd.applies(torch.zeros(8, 8, 5, 5), [1, 1], [2, 2], [1, 1])


def test_winograd_plan_follows_the_measured_crossovers():
    def plan(c, o, size, n=1, group=1):
        return fast_conv.winograd_plan(torch.zeros(n, c, size, size), torch.zeros(o, c // group, 3, 3), group)
    assert plan(512, 512, 57) == (True, True, True)  # FCN-8s conv4_2
    assert plan(256, 256, 114) == (True, True, True)  # conv3_2
    assert plan(128, 256, 114) == (False, False, True)  # conv3_1: only the weight gradient wins
    assert plan(128, 128, 227) == (False, False, True)  # conv2_2
    assert plan(64, 128, 227) == (False, False, False)  # conv2_1
    assert plan(384, 384, 28, n=1, group=2) == (False, False, True)  # FCN-AlexNet conv4 at batch 1
    assert plan(384, 384, 28, n=8, group=2) == (True, True, True)  # ... at batch 8


def test_choose_picks_winograd_only_on_the_cpu_in_float32():
    x, w = torch.zeros(1, 256, 20, 20), torch.zeros(256, 256, 3, 3)
    assert fast_conv.choose(x, w, [1, 1], [1, 1], [1, 1], 1).kind == "winograd fwd/dx/dw"
    assert fast_conv.choose(x.double(), w.double(), [1, 1], [1, 1], [1, 1], 1) is None
    assert fast_conv.choose(torch.zeros(1, 64, 20, 20), torch.zeros(64, 64, 3, 3), [1, 1], [1, 1], [1, 1], 1) is None


# -- the BLAS wrapper ---------------------------------------------------------------------------------
def _operands(gen, m, k, n, transposed_a, transposed_b):
    a = torch.randn(k, m, generator=gen).t() if transposed_a else torch.randn(m, k, generator=gen)
    b = torch.randn(n, k, generator=gen).t() if transposed_b else torch.randn(k, n, generator=gen)
    return a, b


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("transposed_a,transposed_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_operand_layouts_and_accumulation(monkeypatch, library, transposed_a, transposed_b):
    monkeypatch.setattr(fast_conv, "_GEMM", library)
    gen = torch.Generator().manual_seed(2)
    a, b = _operands(gen, 5, 7, 3, transposed_a, transposed_b)
    expected = a.double() @ b.double()
    out = torch.full((5, 3), 9.0)
    torch.testing.assert_close(fast_conv.gemm(a, b, out).double(), expected, rtol=1e-5, atol=1e-5)
    fast_conv.gemm(a, b, out, accumulate=True)
    torch.testing.assert_close(out.double(), 2 * expected, rtol=1e-5, atol=1e-5)
    wide = torch.zeros(5, 8)  # out as a strided view (leading dimension 8)
    fast_conv.gemm(a, b, wide[:, 2:5])
    torch.testing.assert_close(wide[:, 2:5].double(), expected, rtol=1e-5, atol=1e-5)
    assert float(wide[:, :2].abs().sum() + wide[:, 5:].abs().sum()) == 0.0
    out_t = torch.zeros(3, 5)  # a transposed out: outᵀ = bᵀ aᵀ
    fast_conv.gemm(a, b, out_t.t())
    torch.testing.assert_close(out_t.t().double(), expected, rtol=1e-5, atol=1e-5)


def test_gemm_without_the_cblas_symbol_gives_the_same_sums(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    a, b = _operands(gen, 4, 6, 5, True, False)
    with_cblas = fast_conv.gemm(a, b, torch.ones(4, 5), accumulate=True).clone()
    monkeypatch.setattr(fast_conv, "_GEMM", "numpy")
    monkeypatch.setattr(fast_conv, "_cblas", lambda: None)
    torch.testing.assert_close(fast_conv.gemm(a, b, torch.ones(4, 5), accumulate=True), with_cblas)


def test_numpy_openblas_cblas_is_found_on_this_machine():
    """numpy's wheel carries OpenBLAS; without its cblas_sgemm the accumulating GEMM falls
    back to a product plus an add (the speed this module is for would be lost unseen)."""
    if not list(fast_conv._numpy_blas_libraries()):
        pytest.skip("this numpy links a system BLAS, not a bundled OpenBLAS")
    assert fast_conv._cblas() is not None


def test_the_cblas_lookup_warms_openblas_up_once(monkeypatch):
    """The first lookup runs prime_openblas (numpy's OpenBLAS ran skinny products 2.7-2.9× slower
    until one wide product has run in the process: bench/gemm_choice.py --cold); later ones don't."""
    calls = []
    monkeypatch.setattr(fast_conv, "prime_openblas", lambda: calls.append(1))
    monkeypatch.setattr(fast_conv, "_cblas_searched", False)
    monkeypatch.setattr(fast_conv, "_cblas_sgemm", None)
    fast_conv._cblas()
    fast_conv._cblas()
    assert calls == [1]


# -- weight gradients added into engine.Net's parameter diffs ----------------------------------------
NET = """name: "kernels"
force_backward: true
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 256 dim: 13 dim: 12 } } }
layer { name: "c3" type: "Convolution" bottom: "data" top: "c3"
  convolution_param { num_output: 256 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.05 }
                      bias_filler { type: "gaussian" std: 1 } } }
layer { name: "fc6" type: "Convolution" bottom: "c3" top: "fc6"
  convolution_param { num_output: 1024 kernel_size: 4 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "fc7" type: "Convolution" bottom: "fc6" top: "fc7" loss_weight: 1
  convolution_param { num_output: 1024 kernel_size: 1 weight_filler { type: "gaussian" std: 0.05 }
                      bias_filler { type: "gaussian" std: 1 } } }
"""


def test_net_param_diffs_accumulate_inside_the_gemm(monkeypatch):
    """Each kernel adds its weight gradient into the weight's diff (beta = 1); two backward
    passes give twice the float64 gradient, and no weight gradient is handed back to the net."""
    from caffeseg.engine.net import Net
    from caffeseg.engine.proto import caffe_pb2
    from caffeseg.engine.prototxt import parse_net
    net = Net.from_param(parse_net(NET), caffe_pb2.TRAIN)
    kinds = {}
    for name, bottom in (("c3", "data"), ("fc6", "c3"), ("fc7", "fc6")):
        impl = net.layer_dict[name].impl
        kinds[name] = fast_conv.choose(net.blobs[bottom].tensor, net.params[name][0].tensor, impl.stride,
                                       impl.pad, impl.dilation, impl.group).kind
    assert kinds == {"c3": "winograd fwd/dx/dw", "fc6": "im2col", "fc7": "pointwise"}
    returned = []
    original = fast_conv._weight_gradient

    def spy(ctx, compute):
        dw = original(ctx, compute)
        returned.append(dw)
        return dw

    monkeypatch.setattr(fast_conv, "_weight_gradient", spy)
    rs = np.random.RandomState(0)
    x = rs.randn(2, 256, 13, 12).astype(np.float32)
    net.blobs["data"].data[...] = x
    for _ in range(2):
        net.forward()
        net.backward()
    assert len(returned) == 6 and all(dw is None for dw in returned)
    weights = {n: [p.tensor.double().clone().requires_grad_() for p in net.params[n]] for n in ("c3", "fc6", "fc7")}
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(F.conv2d(F.conv2d(xt, *weights["c3"], 1, 1), *weights["fc6"]), *weights["fc7"])
    np.testing.assert_allclose(net.blobs["fc7"].data, y.detach().numpy(), rtol=0, atol=1e-5 * float(y.detach().abs().max()))
    flat = [p for n in weights for p in weights[n]]
    grads = torch.autograd.grad(y, [xt] + flat, torch.ones_like(y))
    np.testing.assert_allclose(net.blobs["data"].diff, grads[0].numpy(), rtol=0, atol=1e-5 * float(grads[0].abs().max()))
    i = 1
    for name in weights:
        for j in range(len(weights[name])):
            expected = 2 * grads[i].numpy()
            i += 1
            np.testing.assert_allclose(net.params[name][j].diff, expected, rtol=0,
                                       atol=1e-5 * float(np.abs(expected).max()), err_msg=f"{name}:{j}")


def test_without_a_net_the_weight_gradient_is_returned():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(1, 3, 6, 6, generator=gen, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=gen, requires_grad=True)
    y = fast_conv._WinogradConv.apply(x, w, None, 1, 1, (True, True, True))
    (dw,) = torch.autograd.grad(y.sum(), (w,))
    ref = torch.autograd.grad(F.conv2d(x, w, None, 1, 1).sum(), (w,))[0]
    torch.testing.assert_close(dw, ref)


# -- Caffe's golden cases through these kernels ------------------------------------------------------
@pytest.mark.parametrize("kind,name", [("nets", "fcn8s_slim"), ("nets", "fcn_alexnet_slim_rgb"),
                                       ("layers", "conv_basic"), ("layers", "conv_nobias_stride"),
                                       ("layers", "conv_rect_stride_pad")])
def test_golden_cases_with_every_convolution_on_these_kernels(monkeypatch, kind, name):
    """The golden nets are slim, below the sizes where ``choose`` takes these kernels; forced
    onto them (Winograd for every 3×3 stride-1 pass, im2col/1×1 GEMMs for the rest), every blob,
    diff and parameter gradient still matches BVLC Caffe at the golden tolerance."""
    monkeypatch.setattr(fast_conv, "_MIN_WORK", 0)
    monkeypatch.setattr(fast_conv, "winograd_plan", lambda x, weight, group: (True, True, True))
    used = {"winograd": 0, "gemm": 0}
    convolve, gemm_forward = winograd.convolve, fast_conv._gemm_forward

    def count(key, fn):
        def counted(*args, **kwargs):
            used[key] += 1
            return fn(*args, **kwargs)
        return counted

    monkeypatch.setattr(winograd, "convolve", count("winograd", convolve))
    monkeypatch.setattr(fast_conv, "_gemm_forward", count("gemm", gemm_forward))
    check_case(load_golden(kind, name))
    assert used["winograd"] + used["gemm"] > 0
    if kind == "nets":
        assert used["winograd"] > 0 and used["gemm"] > 0
