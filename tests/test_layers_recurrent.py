"""LSTM, RNN and LSTMUnit: Caffe's rules worked by hand (the golden numbers are in
tests/golden/layers/{lstm,rnn,lstm_unit}, run by the shared golden tests)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caffeseg import engine
from caffeseg.engine.layer_types.base import LayerError
from caffeseg.engine.layer_types.recurrent import LSTMLayer, LSTMUnitLayer, RNNLayer
from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.prototxt import parse_net


def _build(cls, bottoms: str, tops: str, extra: str = "", num_output: int = 3, shapes=()):
    text = (f'layer {{ name: "r" type: "{cls.type}" {bottoms} {tops} recurrent_param {{ num_output: {num_output} '
            f'weight_filler {{ type: "uniform" min: -0.5 max: 0.5 }} bias_filler {{ type: "uniform" min: -0.3 max: 0.3 }} '
            f'{extra} }} }}')
    layer = cls(parse_net(text).layer[0], caffe_pb2.TRAIN)
    params = layer.setup(list(shapes))
    layer.reshape(list(shapes))
    return layer, params


def _sigmoid(v):
    return 1 / (1 + math.exp(-v))


def test_rnn_by_hand_with_cont_cut_and_state_carried_to_the_next_forward():
    layer, params = _build(RNNLayer, 'bottom: "x" bottom: "c"', 'top: "o"', num_output=1, shapes=[(2, 1, 1), (2, 1)])
    assert [tuple(p.shape) for p in params] == [(1, 1), (1,), (1, 1), (1, 1), (1,)]
    w_xh, b_h, w_hh, w_ho, b_o = 0.5, 0.1, -0.7, 1.3, -0.2
    params = [torch.tensor(v).reshape(s) for v, s in zip([w_xh, b_h, w_hh, w_ho, b_o], [(1, 1), (1,), (1, 1), (1, 1), (1,)])]
    x = torch.tensor([1.0, -2.0]).reshape(2, 1, 1)
    (o,) = layer.forward([x, torch.tensor([[0.0], [1.0]])], params)
    h1 = math.tanh(w_xh * 1 + b_h)
    h2 = math.tanh(w_hh * h1 + w_xh * -2 + b_h)
    np.testing.assert_allclose(o.ravel().numpy(), [math.tanh(w_ho * h1 + b_o), math.tanh(w_ho * h2 + b_o)], rtol=1e-6)
    # second forward: cont 1 at t = 0 continues from h2; cont 0 at t = 1 cuts it again
    (o,) = layer.forward([x, torch.tensor([[1.0], [0.0]])], params)
    g1 = math.tanh(w_hh * h2 + w_xh * 1 + b_h)
    g2 = math.tanh(w_xh * -2 + b_h)
    np.testing.assert_allclose(o.ravel().numpy(), [math.tanh(w_ho * g1 + b_o), math.tanh(w_ho * g2 + b_o)], rtol=1e-6)


def test_lstm_unit_by_hand_with_fractional_cont_uses_caffes_backward():
    """c = f·c_prev + i·g with f = cont·σ(x_f); Caffe's backward takes df/dx_f as f(1 - f)."""
    layer = LSTMUnitLayer(parse_net('layer { name: "u" type: "LSTMUnit" bottom: "c0" bottom: "x" bottom: "k" '
                                    'top: "c" top: "h" }').layer[0], caffe_pb2.TRAIN)
    assert layer.reshape([(1, 1, 1), (1, 1, 4), (1, 1)]) == [(1, 1, 1), (1, 1, 1)]
    xi, xf, xo, xg, c0, cont = 0.3, -0.4, 0.8, 0.2, 1.5, 0.5
    x = torch.tensor([xi, xf, xo, xg]).reshape(1, 1, 4).requires_grad_()
    c_prev = torch.tensor([c0]).reshape(1, 1, 1).requires_grad_()
    c, h = layer.forward([c_prev, x, torch.tensor([[cont]])], [])
    i, f, o, g = _sigmoid(xi), cont * _sigmoid(xf), _sigmoid(xo), math.tanh(xg)
    c_want = f * c0 + i * g
    assert c.item() == pytest.approx(c_want, rel=1e-6)
    assert h.item() == pytest.approx(o * math.tanh(c_want), rel=1e-6)
    dc, dh = 0.7, -1.1
    torch.autograd.backward([c, h], [torch.full_like(c, dc), torch.full_like(h, dh)])
    c_term = dc + dh * o * (1 - math.tanh(c_want) ** 2)
    np.testing.assert_allclose(c_prev.grad.ravel().numpy(), [c_term * f], rtol=1e-5)
    want = [c_term * g * i * (1 - i), c_term * c0 * f * (1 - f), dh * math.tanh(c_want) * o * (1 - o),
            c_term * i * (1 - g * g)]
    np.testing.assert_allclose(x.grad.ravel().numpy(), want, rtol=1e-5)
    # the exact derivative of cont·σ(x_f) differs: Caffe's rule is kept on purpose
    assert abs(want[1] - c_term * c0 * cont * _sigmoid(xf) * (1 - _sigmoid(xf))) > 1e-3


def test_lstm_unit_cont_zero_forgets_and_blocks_c_prev_gradient():
    layer = LSTMUnitLayer(parse_net('layer { name: "u" type: "LSTMUnit" bottom: "c0" bottom: "x" bottom: "k" '
                                    'top: "c" top: "h" }').layer[0], caffe_pb2.TRAIN)
    c_prev = torch.full((1, 2, 3), 5.0, requires_grad=True)
    x = torch.randn(1, 2, 12, generator=torch.Generator().manual_seed(0))
    c, h = layer.forward([c_prev, x, torch.tensor([[0.0, 1.0]])], [])
    i, g = torch.sigmoid(x[0, 0, :3]), torch.tanh(x[0, 0, 9:])
    torch.testing.assert_close(c[0, 0], i * g)  # stream 0 restarts: no trace of c_prev
    c.sum().backward()
    assert not c_prev.grad[0, 0].any() and c_prev.grad[0, 1].abs().min() > 0


@pytest.mark.parametrize("cls,states", [(LSTMLayer, 2), (RNNLayer, 1)])
def test_expose_hidden_chained_steps_equal_one_long_forward(cls, states):
    """T = 4 in one forward equals four T = 1 forwards of an expose_hidden layer whose final
    state tops are fed back as its initial state bottoms (same weights)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 3, generator=gen)
    xs = torch.randn(2, 5, generator=gen)
    cont = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    whole, params = _build(cls, 'bottom: "x" bottom: "c" bottom: "s"', 'top: "y"', shapes=[(4, 2, 3), (4, 2), (2, 5)])
    (y_whole,) = whole.forward([x, cont, xs], params)
    names = " ".join(f'bottom: "{n}0"' for n in "hc"[:states])
    tops = " ".join(f'top: "{n}T"' for n in "hc"[:states])
    state_shapes = [(1, 2, 3)] * states
    step, step_params = _build(cls, f'bottom: "x" bottom: "c" bottom: "s" {names}', f'top: "y" {tops}',
                               "expose_hidden: true", shapes=[(1, 2, 3), (1, 2), (2, 5)] + state_shapes)
    assert [tuple(p.shape) for p in step_params] == [tuple(p.shape) for p in params]
    state = [torch.full(s, 9.0) for s in state_shapes]  # cont[0] = 0 for stream 0 only
    state[0][0, 1] = 0  # stream 1 continues: give it a zero start like the carried-state layer
    if states == 2:
        state[1][0, 1] = 0
    outputs = []
    for t in range(4):
        y, *state = step.forward([x[t:t + 1], cont[t:t + 1], xs] + state, params)
        outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs), y_whole, rtol=1e-5, atol=1e-6)


def test_carried_state_two_forwards_equal_one_of_twice_the_length():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, 2, generator=gen)
    cont = torch.ones(6, 3)
    cont[0] = 0
    cont[4, 1] = 0
    long, params = _build(LSTMLayer, 'bottom: "x" bottom: "c"', 'top: "h"', shapes=[(6, 3, 2), (6, 3)])
    (h_long,) = long.forward([x, cont], params)
    short, _ = _build(LSTMLayer, 'bottom: "x" bottom: "c"', 'top: "h"', shapes=[(3, 3, 2), (3, 3)])
    (a,) = short.forward([x[:3], cont[:3]], params)
    (b,) = short.forward([x[3:], cont[3:]], params)
    torch.testing.assert_close(torch.cat([a, b]), h_long, rtol=1e-5, atol=1e-6)


def test_fewer_streams_reuse_the_first_stored_states_more_start_from_zero():
    """Caffe's blob memory rule for the carried state when N changes between forwards."""
    x = torch.randn(1, 2, 2, generator=torch.Generator().manual_seed(3))
    ones = torch.ones(1, 2)
    layer, params = _build(RNNLayer, 'bottom: "x" bottom: "c"', 'top: "o"', shapes=[(1, 2, 2), (1, 2)])
    reference, _ = _build(RNNLayer, 'bottom: "x" bottom: "c"', 'top: "o"', shapes=[(1, 2, 2), (1, 2)])
    for net in (layer, reference):
        net.forward([x, ones], params)
        net.forward([x, ones], params)
    layer.reshape([(1, 1, 2), (1, 1)])
    (one_stream,) = layer.forward([x[:, :1], ones[:, :1]], params)
    (both,) = reference.forward([x, ones], params)
    torch.testing.assert_close(one_stream[0, 0], both[0, 0])  # stream 0's state carried over
    x3 = torch.cat([x, x[:, :1]], 1)
    layer.reshape([(1, 3, 2), (1, 3)])
    (three,) = layer.forward([x3, torch.ones(1, 3)], params)
    zero_start, _ = _build(RNNLayer, 'bottom: "x" bottom: "c"', 'top: "o"', shapes=[(1, 3, 2), (1, 3)])
    torch.testing.assert_close(three, zero_start.forward([x3, torch.ones(1, 3)], params)[0])  # outgrown: zeros


def test_param_order_shapes_and_fillers():
    text = ('layer { name: "r" type: "LSTM" bottom: "x" bottom: "c" bottom: "s" top: "h" recurrent_param { '
            'num_output: 2 weight_filler { type: "constant" value: 0.25 } bias_filler { type: "constant" value: -1 } } }')
    layer = LSTMLayer(parse_net(text).layer[0], caffe_pb2.TRAIN)
    params = layer.setup([(3, 4, 5, 2), (3, 4), (4, 7)])
    assert [tuple(p.shape) for p in params] == [(8, 10), (8,), (8, 7), (8, 2)]  # W_xc, b_c, W_xc_static, W_hc
    assert [float(p.unique()) for p in params] == [0.25, -1.0, 0.25, 0.25]
    assert layer.reshape([(3, 4, 5, 2), (3, 4), (4, 7)]) == [(3, 4, 2)]
    rnn = RNNLayer(parse_net(text.replace('"LSTM"', '"RNN"')).layer[0], caffe_pb2.TRAIN)
    shapes = [tuple(p.shape) for p in rnn.setup([(3, 4, 5), (3, 4), (4, 7)])]
    assert shapes == [(2, 5), (2,), (2, 7), (2, 2), (2, 2), (2,)]  # W_xh, b_h, W_xh_static, W_hh, W_ho, b_o


@pytest.mark.parametrize("bottoms,shapes,extra,message", [
    ('bottom: "x" bottom: "c"', [(3, 2, 4), (3, 3)], "", "cont has shape \\(3, 3\\)"),
    ('bottom: "x" bottom: "c"', [(3, 2), (3, 2)], "", "at least 3 axes"),
    ('bottom: "x" bottom: "c" bottom: "s"', [(3, 2, 4), (3, 2), (3, 5)], "", "static input has shape \\(3, 5\\)"),
    ('bottom: "x" bottom: "c" bottom: "s"', [(3, 2, 4), (3, 2), (2, 5)], "expose_hidden: true", "takes 4 or 5 bottoms"),
    ('bottom: "x"', [(3, 2, 4)], "", "takes 2 or 3 bottoms"),
])
def test_bad_shapes_and_counts_are_refused(bottoms, shapes, extra, message):
    with pytest.raises(LayerError, match=message):
        _build(LSTMLayer, bottoms, 'top: "h"', extra, shapes=shapes)


def test_timesteps_are_fixed_and_num_output_required():
    layer, _ = _build(RNNLayer, 'bottom: "x" bottom: "c"', 'top: "o"', shapes=[(3, 2, 4), (3, 2)])
    with pytest.raises(LayerError, match="number of timesteps changed from 3 to 4"):
        layer.reshape([(4, 2, 4), (4, 2)])
    with pytest.raises(LayerError, match="num_output must be positive"):
        _build(RNNLayer, 'bottom: "x" bottom: "c"', 'top: "o"', num_output=0, shapes=[(3, 2, 4), (3, 2)])
    with pytest.raises(LayerError, match="initial state bottom h_0 has shape"):
        _build(RNNLayer, 'bottom: "x" bottom: "c" bottom: "h0"', 'top: "o" top: "hT"', "expose_hidden: true",
               shapes=[(3, 2, 4), (3, 2), (1, 3, 3)])


def test_lstm_gradients_match_finite_differences_and_cont_gets_none(tmp_path):
    """Caffe's LSTMUnit backward equals the exact derivative for binary cont: gradcheck in float64."""
    layer, params = _build(LSTMLayer, 'bottom: "x" bottom: "c" bottom: "s"', 'top: "h"', num_output=2,
                           shapes=[(3, 2, 2), (3, 2), (2, 3)])
    gen = torch.Generator().manual_seed(4)
    cont = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    x = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    xs = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weights = [p.double().requires_grad_() for p in params]

    def run(x, xs, *weights):
        layer._carried = None  # every evaluation from a zero state
        return layer.forward([x, cont, xs], list(weights))[0]

    assert torch.autograd.gradcheck(run, (x, xs, *weights), eps=1e-6, atol=1e-6)
    net_text = """force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 2 dim: 2 } } }
layer { name: "c" type: "Input" top: "c" input_param { shape { dim: 3 dim: 2 } } }
layer { name: "r" type: "LSTM" bottom: "x" bottom: "c" top: "h" recurrent_param { num_output: 2
        weight_filler { type: "uniform" min: -1 max: 1 } } }
"""
    path = tmp_path / "net.prototxt"
    path.write_text(net_text)
    net = engine.Net(str(path), engine.TRAIN)
    net.blobs["x"].data[...] = x.detach().numpy()
    net.blobs["c"].data[...] = cont.numpy()
    net.forward()
    net.blobs["h"].diff[...] = 1
    net.blobs["c"].diff[...] = 7  # Caffe never writes a cont diff; the engine leaves none either
    net.backward()
    assert np.abs(net.blobs["x"].diff).sum() > 0
    assert not net.layer_dict["r"].bottom_need_backward[1]
    assert np.all(net.blobs["c"].diff == 7)
