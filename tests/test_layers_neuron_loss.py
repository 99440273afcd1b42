"""Caffe's rules for the neuron layers (AbsVal, BNLL, Clip, ELU, Exp, Log, PReLU, Swish,
Threshold), ArgMax and the losses ContrastiveLoss, HingeLoss, MultinomialLogisticLoss,
InfogainLoss and SigmoidCrossEntropyLoss, run through ``engine.Net``. Expected values are worked
out by hand here from the formulas in BVLC's layer sources, not produced by the engine."""
from __future__ import annotations

import math

import numpy as np
import pytest

from caffeseg import engine
from caffeseg.engine.blobproto import write_binaryproto
from caffeseg.engine.layer_types.base import LayerError
from caffeseg.engine.net import NetError
from caffeseg.engine.prototxt import parse_net


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def make_net(body: str, inputs: dict, force_backward=True):
    """A TRAIN net of Input layers (one per ``inputs`` entry, shaped like its array) + ``body``."""
    text = "force_backward: true\n" if force_backward else ""
    for name, value in inputs.items():
        dims = " ".join(f"dim: {d}" for d in np.shape(value))
        text += f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'
    net = engine.Net(parse_net(text + body), engine.TRAIN)
    for name, value in inputs.items():
        net.blobs[name].data[...] = np.asarray(value, dtype=np.float32)
    return net


def forward_backward(body, inputs, top="y", top_diff=None, force_backward=True):
    """Forward, then backward with ``top_diff`` on ``top`` (a loss top keeps its loss weight)."""
    net = make_net(body, inputs, force_backward)
    net.forward()
    if top_diff is not None:
        net.blobs[top].diff[...] = np.asarray(top_diff, dtype=np.float32)
    net.backward()
    return net


def close(actual, expected, rel=1e-5):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=rel, atol=1e-7)


# -- neurons ----------------------------------------------------------------------------
def test_absval_gradient_is_sign_with_zero_at_zero():
    net = forward_backward('layer { name: "a" type: "AbsVal" bottom: "x" top: "y" }',
                           {"x": [-2.0, 0.0, 3.0]}, top_diff=[1.0, 5.0, 2.0])
    close(net.blobs["y"].data, [2.0, 0.0, 3.0])
    close(net.blobs["x"].diff, [-1.0, 0.0, 2.0])


def test_absval_refuses_in_place():
    with pytest.raises(NetError, match="'a'.*in place"):
        make_net('layer { name: "a" type: "AbsVal" bottom: "x" top: "x" }', {"x": [1.0]})


def test_bnll_values_and_capped_gradient():
    net = forward_backward('layer { name: "b" type: "BNLL" bottom: "x" top: "y" }',
                           {"x": [0.0, -1.0, 2.0, 60.0]}, top_diff=[1.0, 1.0, 1.0, 3.0])
    close(net.blobs["y"].data, [math.log(2.0), math.log(1 + math.exp(-1)), 2 + math.log(1 + math.exp(-2)), 60.0])
    # dx = dy·e^m/(e^m + 1), m = min(x, 50)
    close(net.blobs["x"].diff, [0.5, sigmoid(-1.0), sigmoid(2.0), 3 * sigmoid(50.0)])


def test_clip_bounds_pass_gradient_and_in_place_passes_everything():
    body = 'layer { name: "c" type: "Clip" bottom: "x" top: "y" clip_param { min: -0.5 max: 0.8 } }'
    x = [-1.0, -0.5, 0.0, 0.8, 2.0]
    net = forward_backward(body, {"x": x}, top_diff=[1.0] * 5)
    close(net.blobs["y"].data, [-0.5, -0.5, 0.0, 0.8, 0.8])
    close(net.blobs["x"].diff, [0.0, 1.0, 1.0, 1.0, 0.0])
    # in place, Caffe's backward tests the clipped values, all inside [min, max]
    in_place = 'layer { name: "c" type: "Clip" bottom: "p" top: "p" clip_param { min: -0.5 max: 0.8 } }'
    net = forward_backward('layer { name: "copy" type: "Power" bottom: "x" top: "p" }\n' + in_place,
                           {"x": x}, top="p", top_diff=[1.0] * 5)
    close(net.blobs["p"].data, [-0.5, -0.5, 0.0, 0.8, 0.8])
    close(net.blobs["x"].diff, [1.0] * 5)


def test_clip_needs_min_and_max():
    with pytest.raises(LayerError, match="'c' \\(Clip\\).*max"):
        make_net('layer { name: "c" type: "Clip" bottom: "x" top: "y" clip_param { min: 0 } }', {"x": [1.0]})


def test_elu_alpha_and_gradient_at_zero():
    net = forward_backward('layer { name: "e" type: "ELU" bottom: "x" top: "y" elu_param { alpha: 0.5 } }',
                           {"x": [-1.0, 0.0, 2.0]}, top_diff=[2.0, 1.0, 1.0])
    close(net.blobs["y"].data, [0.5 * (math.exp(-1) - 1), 0.0, 2.0])
    # x <= 0: dy·(alpha + y); at 0 that is alpha
    close(net.blobs["x"].diff, [2 * (0.5 + 0.5 * (math.exp(-1) - 1)), 0.5, 1.0])


def test_exp_with_base_scale_shift():
    body = 'layer { name: "e" type: "Exp" bottom: "x" top: "y" exp_param { base: 2 scale: 0.5 shift: 1 } }'
    net = forward_backward(body, {"x": [2.0, -2.0]}, top_diff=[1.0, 1.0])
    close(net.blobs["y"].data, [4.0, 1.0])  # 2^(1 + 0.5x)
    close(net.blobs["x"].diff, [4.0 * math.log(2) * 0.5, 1.0 * math.log(2) * 0.5])


def test_exp_and_log_refuse_bad_bases():
    with pytest.raises(LayerError, match="'e' \\(Exp\\).*strictly positive"):
        make_net('layer { name: "e" type: "Exp" bottom: "x" top: "y" exp_param { base: -2 } }', {"x": [1.0]})
    with pytest.raises(LayerError, match="'l' \\(Log\\).*inf"):
        make_net('layer { name: "l" type: "Log" bottom: "x" top: "y" log_param { base: 1 } }', {"x": [1.0]})


def test_log_with_base_scale_shift():
    body = 'layer { name: "l" type: "Log" bottom: "x" top: "y" log_param { base: 10 scale: 2 shift: 0.5 } }'
    net = forward_backward(body, {"x": [4.75, 0.25]}, top_diff=[1.0, 3.0])
    close(net.blobs["y"].data, [1.0, 0.0])  # log10(2x + 0.5)
    close(net.blobs["x"].diff, [2 / (10 * math.log(10)), 3 * 2 / (1 * math.log(10))])


def test_swish_beta():
    net = forward_backward('layer { name: "s" type: "Swish" bottom: "x" top: "y" swish_param { beta: 2 } }',
                           {"x": [0.0, 1.0]}, top_diff=[1.0, 1.0])
    close(net.blobs["y"].data, [0.0, sigmoid(2.0)])
    # d/dx x·σ(2x) = σ(2x) + 2x·σ(2x)(1 − σ(2x))
    s = sigmoid(2.0)
    close(net.blobs["x"].diff, [0.5, s + 2 * s * (1 - s)])


def test_threshold_is_strict_and_has_no_backward():
    body = 'layer { name: "t" type: "Threshold" bottom: "x" top: "y" threshold_param { threshold: 0.3 } }'
    net = make_net(body, {"x": [0.2, 0.3, 0.31]})
    net.forward()
    close(net.blobs["y"].data, [0.0, 0.0, 1.0])
    with pytest.raises(NotImplementedError, match="'t' \\(Threshold\\).*NOT_IMPLEMENTED"):
        net.backward()
    # without force_backward nothing asks for its gradient: backward runs
    net = make_net(body, {"x": [0.2, 0.3, 0.31]}, force_backward=False)
    net.forward()
    net.backward()


# -- PReLU -------------------------------------------------------------------------------
def test_prelu_default_filler_and_shapes_of_its_slopes():
    x = np.zeros((1, 3, 2), np.float32)
    net = make_net('layer { name: "p" type: "PReLU" bottom: "x" top: "y" }\n'
                   'layer { name: "q" type: "PReLU" bottom: "x" top: "z" prelu_param { channel_shared: true } }',
                   {"x": x})
    assert net.params["p"][0].data.shape == (3,) and np.all(net.params["p"][0].data == np.float32(0.25))
    assert net.params["q"][0].data.shape == () and float(net.params["q"][0].data) == np.float32(0.25)


def test_prelu_per_channel_gradients_with_zero_on_the_negative_side():
    body = 'layer { name: "p" type: "PReLU" bottom: "x" top: "y" }'
    net = make_net(body, {"x": [[[-2.0, 0.0], [1.0, -1.0]]]})  # (1, 2 channels, 2)
    net.params["p"][0].data[...] = [0.5, -1.0]
    net.forward()
    close(net.blobs["y"].data, [[[-1.0, 0.0], [1.0, 1.0]]])
    net.blobs["y"].diff[...] = [[[1.0, 2.0], [3.0, 4.0]]]
    net.backward()
    # dx = dy·(1 if x > 0 else a_c): x = 0 takes the slope
    close(net.blobs["x"].diff, [[[0.5, 1.0], [3.0, -4.0]]])
    # da_c = Σ dy·x over x <= 0: channel 0: 1·(−2) + 2·0, channel 1: 4·(−1)
    close(net.params["p"][0].diff, [-2.0, -4.0])


def test_prelu_channel_shared_sums_over_everything_and_in_place_uses_the_input():
    body = ('layer { name: "copy" type: "Power" bottom: "x" top: "p" }\n'
            'layer { name: "pr" type: "PReLU" bottom: "p" top: "p" prelu_param { channel_shared: true '
            'filler { type: "constant" value: 0.1 } } }')
    net = make_net(body, {"x": [[-1.0, 2.0], [-3.0, 0.0]]})
    net.forward()
    close(net.blobs["p"].data, [[-0.1, 2.0], [-0.3, 0.0]])
    net.blobs["p"].diff[...] = [[1.0, 1.0], [2.0, 1.0]]
    net.backward()
    close(net.blobs["x"].diff, [[0.1, 1.0], [0.2, 0.1]])
    close(net.params["pr"][0].diff, 1 * -1.0 + 2 * -3.0)  # from the input, not the overwritten top


def test_prelu_input_axes_checked():
    with pytest.raises(LayerError, match="'p' \\(PReLU\\).*at least 2 axes"):
        make_net('layer { name: "p" type: "PReLU" bottom: "x" top: "y" }', {"x": [1.0, 2.0]})
    with pytest.raises(LayerError, match="'p' \\(PReLU\\).*at most 4 axes"):
        make_net('layer { name: "p" type: "PReLU" bottom: "x" top: "y" }', {"x": np.zeros((1, 1, 1, 1, 1))})
    net = make_net('layer { name: "p" type: "PReLU" bottom: "x" top: "y" }', {"x": np.zeros((1, 2))})
    net.blobs["x"].reshape(1, 3)
    with pytest.raises(LayerError, match="3 channels.*2 slopes"):
        net.forward()


# -- ArgMax ------------------------------------------------------------------------------
def test_argmax_per_item_with_values_and_caffe_tie_order():
    body = 'layer { name: "am" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 2 out_max_val: true } }'
    net = make_net(body, {"x": [[1.0, 5.0, 5.0, 2.0], [7.0, 0.0, 3.0, 3.0]]})
    net.forward()
    # (N, 2, k, 1): indices then values; equal values: std::greater on (value, index) puts the larger index first
    assert net.blobs["y"].data.shape == (2, 2, 2)
    close(net.blobs["y"].data, [[[2.0, 1.0], [5.0, 5.0]], [[0.0, 3.0], [7.0, 3.0]]])


def test_argmax_along_an_axis_and_shape_rules():
    x = [[[1.0, 9.0], [4.0, 2.0], [3.0, 8.0]]]  # (1, 3, 2)
    net = make_net('layer { name: "a" type: "ArgMax" bottom: "x" top: "i" argmax_param { axis: 1 } }\n'
                   'layer { name: "b" type: "ArgMax" bottom: "x" top: "v" argmax_param { axis: -2 top_k: 2 '
                   'out_max_val: true } }\n'
                   'layer { name: "c" type: "ArgMax" bottom: "x" top: "f" }', {"x": x})
    net.forward()
    close(net.blobs["i"].data, [[[1.0, 0.0]]])
    close(net.blobs["v"].data, [[[4.0, 9.0], [3.0, 8.0]]])
    assert net.blobs["f"].data.shape == (1, 1, 1)
    close(net.blobs["f"].data, [[[1.0]]])  # flat index of 9
    with pytest.raises(LayerError, match="'a' \\(ArgMax\\).*top_k 4 exceeds"):
        make_net('layer { name: "a" type: "ArgMax" bottom: "x" top: "i" argmax_param { axis: 1 top_k: 4 } }',
                 {"x": x})
    with pytest.raises(LayerError, match="'a' \\(ArgMax\\).*top_k 7 exceeds the 6 values"):
        make_net('layer { name: "a" type: "ArgMax" bottom: "x" top: "i" argmax_param { top_k: 7 } }', {"x": x})


def test_argmax_backward_is_not_implemented():
    net = make_net('layer { name: "am" type: "ArgMax" bottom: "x" top: "y" }', {"x": [[1.0, 2.0]]})
    net.forward()
    with pytest.raises(NotImplementedError, match="'am' \\(ArgMax\\)"):
        net.backward()


# -- ContrastiveLoss ---------------------------------------------------------------------
PAIRS = {"a": [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]], "b": [[0.0, 0.0], [0.6, 0.8], [3.0, 4.0]],
         "sim": [1.0, 0.7, 0.0]}  # d = 1, 1, 5; 0.7 truncates to 0: dissimilar


def test_contrastive_loss_margin_on_the_distance():
    body = ('layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" top: "loss" '
            'contrastive_loss_param { margin: 2 } }')
    net = forward_backward(body, PAIRS)
    close(net.blobs["loss"].data, (1.0 + (2 - 1) ** 2 + 0.0) / 3 / 2)
    alpha = 1.0 / 3
    beta = -alpha * (2 - 1) / (1 + 1e-4)  # dissimilar inside the margin: −α(m − d)/(d + 1e-4)
    expected_a = [[alpha, 0.0], [beta * -0.6, beta * -0.8], [0.0, 0.0]]
    close(net.blobs["a"].diff, expected_a)
    close(net.blobs["b"].diff, -np.array(expected_a))
    assert not net.blobs["sim"].diff.any()


def test_contrastive_loss_legacy_margin_on_the_squared_distance():
    body = ('layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" top: "loss" '
            'contrastive_loss_param { margin: 2 legacy_version: true } }')
    net = forward_backward(body, PAIRS)
    close(net.blobs["loss"].data, (1.0 + (2 - 1) + 0.0) / 3 / 2)
    alpha = 1.0 / 3
    close(net.blobs["a"].diff, [[alpha, 0.0], [-alpha * -0.6, -alpha * -0.8], [0.0, 0.0]])


def test_contrastive_loss_shapes_checked():
    with pytest.raises(LayerError, match="'l' \\(ContrastiveLoss\\).*\\(N, C\\)"):
        make_net('layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "s" }',
                 {"a": np.zeros((2, 3, 2)), "b": np.zeros((2, 3, 2)), "s": np.zeros(2)})
    with pytest.raises(LayerError, match="same number of channels"):
        make_net('layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "s" }',
                 {"a": np.zeros((2, 3)), "b": np.zeros((2, 4)), "s": np.zeros(2)})
    with pytest.raises(LayerError, match="one value per pair"):
        make_net('layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "s" }',
                 {"a": np.zeros((2, 3)), "b": np.zeros((2, 3)), "s": np.zeros((2, 2))})


# -- HingeLoss ---------------------------------------------------------------------------
def test_hinge_loss_l1_and_l2():
    inputs = {"x": [[0.5, -2.0, 0.2]], "label": [0.0]}
    # margins: true class max(0, 1 − 0.5), others max(0, 1 + x): 0.5, 0, 1.2
    net = forward_backward('layer { name: "h" type: "HingeLoss" bottom: "x" bottom: "label" top: "loss" }', inputs)
    close(net.blobs["loss"].data, 1.7)
    close(net.blobs["x"].diff, [[-1.0, 0.0, 1.0]])
    net = forward_backward('layer { name: "h" type: "HingeLoss" bottom: "x" bottom: "label" top: "loss" '
                           'hinge_loss_param { norm: L2 } }', inputs)
    close(net.blobs["loss"].data, 0.25 + 1.44)
    close(net.blobs["x"].diff, [[-1.0, 0.0, 2.4]])


def test_hinge_loss_label_out_of_range_and_label_gradient_refused():
    net = make_net('layer { name: "h" type: "HingeLoss" bottom: "x" bottom: "label" top: "loss" }',
                   {"x": [[0.5, -2.0, 0.2]], "label": [3.0]})
    with pytest.raises(LayerError, match="'h' \\(HingeLoss\\).*label 3 is outside \\[0, 3\\)"):
        net.forward()
    # a label computed by a learnable layer would get a gradient: Caffe refuses (LOG(FATAL))
    net = make_net('layer { name: "lb" type: "Bias" bottom: "label" top: "lab" bias_param { axis: 0 } }\n'
                   'layer { name: "h" type: "HingeLoss" bottom: "x" bottom: "lab" top: "loss" }',
                   {"x": [[0.5, -2.0, 0.2]], "label": [1.0]}, force_backward=False)
    net.forward()
    with pytest.raises(LayerError, match="'h' \\(HingeLoss\\).*cannot backpropagate to its label"):
        net.backward()


# -- MultinomialLogisticLoss -------------------------------------------------------------
def test_multinomial_logistic_loss_floors_probabilities_at_1e_20():
    net = forward_backward('layer { name: "m" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" '
                           'top: "loss" loss_weight: 2 }', {"p": [[0.2, 0.8], [0.0, 1.0]], "label": [1.0, 0.0]})
    floor = float(np.float32(1e-20))
    close(net.blobs["loss"].data, -(math.log(0.8) + math.log(floor)) / 2)
    # dp[n, label] = −w / (N·max(p, 1e-20)) with loss weight w = 2
    close(net.blobs["p"].diff, [[0.0, -2 / (2 * 0.8)], [-2 / (2 * floor), 0.0]])


def test_multinomial_logistic_loss_label_shape_checked():
    with pytest.raises(LayerError, match="'m' \\(MultinomialLogisticLoss\\).*one value per item"):
        make_net('layer { name: "m" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" }',
                 {"p": np.zeros((2, 3)), "label": np.zeros((2, 2))})


# -- InfogainLoss ------------------------------------------------------------------------
H = [[1.0, 0.5], [0.2, 2.0]]
SCORES = [[0.0, math.log(3.0)], [5.0, 1.0]]  # softmax of row 0: 0.25, 0.75


def test_infogain_loss_with_h_bottom_and_ignore_label():
    body = ('layer { name: "pre" type: "Bias" bottom: "x" top: "xs" }\n'
            'layer { name: "ig" type: "InfogainLoss" bottom: "xs" bottom: "label" bottom: "H" top: "loss" '
            'loss_param { ignore_label: 7 } }')
    net = forward_backward(body, {"x": SCORES, "label": [1.0, 7.0], "H": H}, force_backward=False)
    # the only counted cell (label 1): −(0.2·ln 0.25 + 2·ln 0.75), VALID normalizer = 1
    close(net.blobs["loss"].data, -(0.2 * math.log(0.25) + 2 * math.log(0.75)))
    # dx_l = p_l·Σ_m H[1, m] − H[1, l]; the ignored row gets 0
    close(net.blobs["xs"].diff, [[0.25 * 2.2 - 0.2, 0.75 * 2.2 - 2.0], [0.0, 0.0]], rel=1e-5)


def test_infogain_loss_from_source_with_probability_top(tmp_path, monkeypatch):
    write_binaryproto(str(tmp_path / "H.binaryproto"), np.array(H, np.float32).reshape(1, 1, 2, 2))
    monkeypatch.chdir(tmp_path)  # Caffe reads a relative source from the working directory
    body = ('layer { name: "ig" type: "InfogainLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" '
            'loss_weight: 1 loss_weight: 0 infogain_loss_param { source: "H.binaryproto" } '
            'loss_param { normalization: BATCH_SIZE } }')
    net = forward_backward(body, {"x": SCORES, "label": [1.0, 0.0]}, top="prob", top_diff=[[9.0, 9.0], [9.0, 9.0]])
    e = math.exp(4.0)
    p1 = [e / (e + 1), 1 / (e + 1)]
    close(net.blobs["prob"].data, [[0.25, 0.75], p1])
    row1 = -(1.0 * math.log(p1[0]) + 0.5 * math.log(p1[1]))
    close(net.blobs["loss"].data, (-(0.2 * math.log(0.25) + 2 * math.log(0.75)) + row1) / 2)
    # the prob top's diff is not used
    close(net.blobs["x"].diff, [[(0.25 * 2.2 - 0.2) / 2, (0.75 * 2.2 - 2.0) / 2],
                                [(p1[0] * 1.5 - 1.0) / 2, (p1[1] * 1.5 - 0.5) / 2]])


def test_infogain_loss_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inputs = {"x": SCORES, "label": [1.0, 0.0]}
    with pytest.raises(LayerError, match="'ig' \\(InfogainLoss\\).*infogain_loss_param.source"):
        make_net('layer { name: "ig" type: "InfogainLoss" bottom: "x" bottom: "label" }', inputs)
    with pytest.raises(LayerError, match="'ig' \\(InfogainLoss\\).*missing.binaryproto.*working directory"):
        make_net('layer { name: "ig" type: "InfogainLoss" bottom: "x" bottom: "label" '
                 'infogain_loss_param { source: "missing.binaryproto" } }', inputs)
    with pytest.raises(LayerError, match="normalize is deprecated"):
        make_net('layer { name: "ig" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" '
                 'loss_param { normalize: true } }', dict(inputs, H=H))
    with pytest.raises(LayerError, match="one loss_weight per top"):
        make_net('layer { name: "ig" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" '
                 'top: "loss" top: "prob" }', dict(inputs, H=H))
    with pytest.raises(LayerError, match="H has 3 values; 2 classes need 2x2"):
        make_net('layer { name: "ig" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" }',
                 dict(inputs, H=[1.0, 2.0, 3.0]))
    # force_backward lets the gradient ask for H (Caffe allows it, then fails in backward)
    net = make_net('layer { name: "ig" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" }',
                   dict(inputs, H=H))
    net.forward()
    with pytest.raises(LayerError, match="cannot backpropagate to its infogain matrix"):
        net.backward()
    net = make_net('layer { name: "ig" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" }',
                   dict(inputs, label=[2.0, 0.0], H=H))
    with pytest.raises(LayerError, match="label 2 is outside \\[0, 2\\)"):
        net.forward()


def test_in_place_log_and_bnll_read_the_top_in_backward_as_caffe_does():
    # Caffe's Backward_cpu reads bottom data, which in place already holds the top
    copy = 'layer { name: "copy" type: "Power" bottom: "x" top: "p" }\n'
    net = forward_backward(copy + 'layer { name: "l" type: "Log" bottom: "p" top: "p" log_param { shift: 1 } }',
                           {"x": [math.e - 1.0]}, top="p", top_diff=[1.0])
    close(net.blobs["p"].data, [1.0])  # ln(x + 1)
    close(net.blobs["x"].diff, [1.0 / (1.0 + 1.0)])  # 1/(y + 1), not 1/(x + 1) = 1/e
    net = forward_backward(copy + 'layer { name: "b" type: "BNLL" bottom: "p" top: "p" }',
                           {"x": [0.0]}, top="p", top_diff=[1.0])
    close(net.blobs["p"].data, [math.log(2.0)])
    close(net.blobs["x"].diff, [sigmoid(math.log(2.0))])  # e^y/(e^y + 1) with y = ln 2: 2/3


# -- SigmoidCrossEntropyLoss -------------------------------------------------------------
def test_sigmoid_cross_entropy_ignores_targets_whose_int_cast_is_the_ignore_label():
    # Caffe compares static_cast<int>(target) with ignore_label: with ignore_label 0 the targets
    # 0.5 and -0.7 truncate to 0 and are skipped; only the cell (x = -1, t = 1) counts.
    net = forward_backward('layer { name: "s" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" '
                           'top: "loss" loss_param { ignore_label: 0 } }',
                           {"x": [[2.0, -1.0, 0.5]], "t": [[0.5, 1.0, -0.7]]})
    # −log sigmoid(−1) = log(1 + e), normalized by the batch size N = 1 (BATCH_SIZE, the default)
    close(net.blobs["loss"].data, math.log(1.0 + math.e))
    # dx = (sigmoid(x) − t) · 1 / N at the counted cell, 0 at the ignored ones
    close(net.blobs["x"].diff, [[0.0, sigmoid(-1.0) - 1.0, 0.0]])


def test_sigmoid_cross_entropy_refuses_a_gradient_for_its_targets():
    # targets computed by a learnable layer would get a gradient: Caffe aborts (LOG(FATAL))
    net = make_net('layer { name: "tb" type: "Bias" bottom: "t" top: "target" bias_param { axis: 0 } }\n'
                   'layer { name: "s" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "target" top: "loss" }',
                   {"x": [[0.5, -2.0]], "t": [[1.0, 0.0]]}, force_backward=False)
    net.forward()
    with pytest.raises(LayerError, match="'s' \\(SigmoidCrossEntropyLoss\\).*cannot backpropagate to its target"):
        net.backward()
