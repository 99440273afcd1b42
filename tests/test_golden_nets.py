"""The golden segmentation nets (FCN-AlexNet gray/RGB, FCN-8s at slim widths) through
``engine.Net``: every blob, input diff and parameter diff matches BVLC Caffe's run."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import build, check_case, golden_case_names, load_golden, run_forward_backward

CASES = golden_case_names("nets")

# The gray net feeds 16-bit-range values (up to ~4000) into conv1, whose outputs reach ~1.2e4.
# Caffe's conv1 is im2col + OpenBLAS sgemm, whose kernel sums K in two interleaved float32 FMA
# accumulators (even and odd k, added at the end: test_gray_conv1_is_openblas_summation_order
# reproduces Caffe's conv1 bit for bit that way). PyTorch sums in one accumulator, a few ULPs
# away, and Caffe's LRN keeps a float32 running window sum of squares (~1e8) whose rounding
# amplifies those last bits to ~3e-4 relative at norm1 (2-3x the golden tolerance); max-pool
# argmax choices downstream follow. Given Caffe's own conv1 bits, every later blob, input diff
# and parameter gradient matches to ~1e-6 (test_gray_net_from_caffes_conv1_matches_everything):
# the only difference is BLAS rounding order in conv1, which no other BLAS would reproduce
# either. strict: if the end-to-end case ever passes, the mark must go.
KNOWN_LRN_PRECISION = pytest.mark.xfail(
    strict=True, reason="conv1 BLAS summation order differs from OpenBLAS by float32 ULPs; Caffe's LRN running sum amplifies them past 1e-4")


def _marked(name):
    return pytest.param(name, marks=KNOWN_LRN_PRECISION) if name == "fcn_alexnet_slim_gray" else name


def test_cases_are_present():
    assert set(CASES) == {"fcn8s_slim", "fcn_alexnet_slim_gray", "fcn_alexnet_slim_rgb"}


@pytest.mark.parametrize("name", [_marked(n) for n in CASES])
def test_net_case(name):
    check_case(load_golden("nets", name))


def test_gray_net_within_its_conditioning():
    """The gray case at the precision its conditioning allows: every blob to 1e-3·max, the loss
    to 1e-4, and the gradients of the layers above pool5 (no LRN/argmax in between) exactly."""
    from conftest import assert_close_to_caffe
    case = load_golden("nets", "fcn_alexnet_slim_gray")
    net = build(case)
    run_forward_backward(net, case)
    for name, expected in case.keys("blob").items():
        atol = 1e-3 * float(np.abs(expected).max())
        np.testing.assert_allclose(net.blobs[name].data, expected, rtol=0, atol=atol, err_msg=name)
    assert float(net.blobs["loss"].data) == pytest.approx(float(case.io["blob:loss"]), rel=1e-4)
    for layer in ("fc6", "fc7", "score_fr", "upscore"):
        for i, blob in enumerate(net.params[layer]):
            assert_close_to_caffe(blob.diff, case.io[f"pgrad:{layer}:{i}"], f"pgrad:{layer}:{i}")


def _feed_inputs(net, case):
    for name, value in case.keys("input").items():
        net.blobs[name].data[...] = value


def _conv1_in_openblas_order(case):
    """Caffe's conv1 recomputed in numpy as OpenBLAS's sgemm sums it: im2col, then for every
    output two float32 accumulators (even and odd k) updated by fused multiply-adds in k order,
    added together, then the bias (Caffe's second gemm with the bias multiplier)."""
    image = case.io["input:data"][0, 0].astype(np.float32)
    weight = case.io["param:conv1:0"]
    bias = case.io["param:conv1:1"]
    kernel, stride, pad = weight.shape[-1], 4, 100
    padded = np.pad(image, pad)
    out = (padded.shape[0] - kernel) // stride + 1
    accumulators = [np.zeros((weight.shape[0], out, out), np.float32) for _ in range(2)]
    for k in range(kernel * kernel):
        ky, kx = divmod(k, kernel)
        patch = padded[ky:ky + stride * out:stride, kx:kx + stride * out:stride].astype(np.float64)
        products = weight[:, 0, ky, kx].astype(np.float64)[:, None, None] * patch  # exact in float64
        acc = accumulators[k % 2]
        accumulators[k % 2] = (acc.astype(np.float64) + products).astype(np.float32)  # one rounding: FMA
    return (accumulators[0] + accumulators[1]) + bias[:, None, None]


def test_gray_conv1_is_openblas_summation_order():
    """Why the gray case is xfail: Caffe's conv1 equals the two-accumulator FMA order bit for
    bit; the engine's conv1 (one accumulator) differs from it by float32 rounding only."""
    case = load_golden("nets", "fcn_alexnet_slim_gray")
    caffe_conv1 = case.io["blob:conv1"]  # after the in-place ReLU
    np.testing.assert_array_equal(np.maximum(_conv1_in_openblas_order(case)[None], 0), caffe_conv1)
    net = build(case)
    _feed_inputs(net, case)
    net.forward(end="relu1")
    ours = net.blobs["conv1"].data
    assert not np.array_equal(ours, caffe_conv1)  # else the xfail above must go
    assert float(np.abs(ours - caffe_conv1).max()) <= 1e-6 * float(np.abs(caffe_conv1).max())


def test_gray_net_from_caffes_conv1_matches_everything():
    """With Caffe's conv1 output in place of ours, every later blob, the input diff and every
    parameter gradient (conv1's included) match Caffe at the golden tolerance."""
    from conftest import assert_close_to_caffe
    case = load_golden("nets", "fcn_alexnet_slim_gray")
    net = build(case)
    _feed_inputs(net, case)
    net.forward(end="relu1")
    net.blobs["conv1"].data[...] = case.io["blob:conv1"]
    net.forward(start="relu1")
    for name, diff in case.keys("topdiff").items():
        net.blobs[name].diff[...] = diff
    net.backward()
    for name, expected in case.keys("blob").items():
        assert_close_to_caffe(net.blobs[name].data, expected, f"blob:{name}")
    for name, expected in case.keys("diff").items():
        assert_close_to_caffe(net.blobs[name].diff, expected, f"diff:{name}")
    for key, expected in case.keys("pgrad").items():
        layer, index = key.split(":")
        assert_close_to_caffe(net.params[layer][int(index)].diff, expected, f"pgrad:{key}")
    assert len(case.keys("pgrad")) == 2 * 8 + 1  # 8 layers with weight+bias, upscore weight


def test_v1_weights_give_identical_results():
    case = load_golden("nets", "fcn_alexnet_slim_gray")
    current = build(case)
    legacy = build(case, "weights_v1.caffemodel")
    for name, blobs in current.params.items():
        for i, blob in enumerate(blobs):
            np.testing.assert_array_equal(legacy.params[name][i].data, blob.data, err_msg=f"{name}:{i}")
    run_forward_backward(current, case)
    run_forward_backward(legacy, case)
    if current.device.type == "cpu":
        # identical weights give bit-identical results on the (deterministic) CPU path
        for name in current.blobs:
            np.testing.assert_array_equal(legacy.blobs[name].data, current.blobs[name].data, err_msg=name)
        for name, blobs in current.params.items():
            for i, blob in enumerate(blobs):
                np.testing.assert_array_equal(legacy.params[name][i].diff, blob.diff, err_msg=f"pgrad {name}:{i}")
        return
    # CUDA (CAFFESEG_TEST_GPU): reductions are not bit-reproducible and this case amplifies
    # last-bit differences in its gradients (see KNOWN_LRN_PRECISION), so compare the forward
    for name in current.blobs:
        np.testing.assert_allclose(legacy.blobs[name].data, current.blobs[name].data, rtol=0,
                                   atol=1e-5 * float(np.abs(current.blobs[name].data).max()), err_msg=name)


def test_fcn8s_split_names_match_caffe():
    net = build(load_golden("nets", "fcn8s_slim"))
    splits = [n for n in net._layer_names if n.endswith("_split")]
    assert "data_data_0_split" in splits
    assert all(net.layer_dict[n].type == "Split" for n in splits)
