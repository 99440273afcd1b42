"""Caffe's subtle layer rules on hand-made inputs, with expected values
worked out from the rules by hand, not from our code."""
from __future__ import annotations

import math

import pytest
import torch

from caffeseg.engine import layer_types  # noqa: F401
from caffeseg.engine import rng
from caffeseg.engine.layer_types.base import LayerError, layer_class
from caffeseg.engine.prototxt import parse_net
from caffeseg.engine.proto import caffe_pb2

FLT_MAX = float(torch.finfo(torch.float32).max)  # Caffe's FLT_MAX


def make(text, phase=caffe_pb2.TRAIN):
    lp = parse_net(f"layer {{ {text} }}").layer[0]
    return layer_class(lp.type)(lp, phase)


def run(layer, *inputs, params=None):
    xs = [torch.tensor(x, dtype=torch.float32, requires_grad=True) if not torch.is_tensor(x) else x
          for x in inputs]
    fresh = layer.setup([tuple(x.shape) for x in xs])
    shapes = layer.reshape([tuple(x.shape) for x in xs])
    tops = layer.forward(xs, params if params is not None else fresh)
    assert [tuple(t.shape) for t in tops] == [tuple(s) for s in shapes]
    return xs, tops


def grads(xs, top, dy):
    g = torch.autograd.grad((top * torch.tensor(dy, dtype=torch.float32)).sum(), xs, allow_unused=True)
    return [None if v is None else v.tolist() for v in g]


# -- Eltwise MAX ties: bottom 1 wins a tie with bottom 0 -----------------------------------------
def test_eltwise_max_tie_between_first_two_goes_to_bottom_1():
    layer = make('name: "m" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { operation: MAX }')
    xs, (y,) = run(layer, [1.0, 2.0, 3.0], [1.0, 1.0, 5.0])
    assert y.tolist() == [1.0, 2.0, 5.0]
    da, db = grads(xs, y, [1.0, 1.0, 1.0])
    assert da == [0.0, 1.0, 0.0] and db == [1.0, 0.0, 1.0]


def test_eltwise_max_tie_with_later_bottom_keeps_earlier_winner():
    layer = make('name: "m" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
                 'eltwise_param { operation: MAX }')
    xs, (y,) = run(layer, [3.0, 0.0], [1.0, 0.0], [3.0, 0.0])
    da, db, dc = grads(xs, y, [1.0, 1.0])
    assert da == [1.0, 0.0] and db == [0.0, 1.0] and dc == [0.0, 0.0]


def test_eltwise_coeff_with_prod_is_refused():
    with pytest.raises(LayerError, match="coeff"):
        run(make('name: "p" type: "Eltwise" bottom: "a" bottom: "b" top: "y" '
                 'eltwise_param { operation: PROD coeff: 1 coeff: 2 }'), [1.0], [2.0])


# -- Pooling: output size, AVE divisor, first-maximum ties ---------------------------------------
def test_max_pool_tie_gradient_goes_to_first_maximum():
    layer = make('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 stride: 2 }')
    xs, (y,) = run(layer, [[[[5.0, 5.0], [5.0, 5.0]]]])
    (dx,) = grads(xs, y, [[[[1.0]]]])
    assert dx == [[[[1.0, 0.0], [0.0, 0.0]]]]


def test_pool_without_pad_keeps_window_outside_input():
    # in 5, k 1, s 3: ceil((5-1)/3)+1 = 3 windows starting at 0, 3, 6 -> the last lies outside
    layer = make('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 1 stride: 3 }')
    xs, (y,) = run(layer, [[[[1.0, 2.0, 3.0, 4.0, 5.0]] * 5]])
    assert tuple(y.shape) == (1, 1, 3, 3)
    assert y[0, 0, 0].tolist() == [1.0, 4.0, -FLT_MAX]
    assert y[0, 0, 2].tolist() == [-FLT_MAX] * 3


def test_pool_clip_rule_with_padding():
    # in 4, k 2, s 2, pad 1: ceil((4+2-2)/2)+1 = 3; last window starts at 2*2-1 = 3 < 4+1 -> kept
    # in 3, k 2, s 2, pad 1: ceil(3/2)+1 = 3; last starts at 3 >= 3+1? no -> 3 kept
    # in 2, k 3, s 2, pad 1: ceil((2+2-3)/2)+1 = 2; last starts at 1 < 3 -> 2
    # in 5, k 2, s 3, pad 1: ceil((5+2-2)/3)+1 = 3; (3-1)*3 = 6 >= 5+1 -> clipped to 2
    layer = make('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE kernel_size: 2 stride: 3 pad: 1 }')
    assert layer.setup([(1, 1, 5, 5)]) == []
    assert layer.reshape([(1, 1, 5, 5)]) == [(1, 1, 2, 2)]


def test_ave_pool_divisor_counts_padding_but_not_overhang():
    # 1-D view along W: in 3, k 3, s 2, pad 1 -> out ceil((3+2-3)/2)+1 = 2.
    # window 0: [-1, 2) divisor 3 (pad counts), sum x0+x1
    # window 1: [1, 4) clipped at W+p = 4 -> divisor 3, sum x1+x2 (x3 is pad)
    layer = make('name: "p" type: "Pooling" bottom: "x" top: "y" '
                 'pooling_param { pool: AVE kernel_h: 1 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 0 pad_w: 1 }')
    xs, (y,) = run(layer, [[[[3.0, 6.0, 9.0]]]])
    assert y.flatten().tolist() == pytest.approx([9.0 / 3, 15.0 / 3])
    # overhang: in 4, k 3, s 2, pad 1 -> out ceil(3/2)+1 = 3; window 2 starts at 3, ends min(6, 5) = 5 -> divisor 2
    layer = make('name: "p" type: "Pooling" bottom: "x" top: "y" '
                 'pooling_param { pool: AVE kernel_h: 1 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 0 pad_w: 1 }')
    xs, (y,) = run(layer, [[[[1.0, 2.0, 4.0, 8.0]]]])
    assert y.flatten().tolist() == pytest.approx([3.0 / 3, 14.0 / 3, 8.0 / 2])
    (dx,) = grads(xs, y, [[[[1.0, 1.0, 1.0]]]])
    # x0: window 0; x1: windows 0 and 1; x2: window 1; x3: windows 1 and 2
    assert dx[0][0][0] == pytest.approx([1 / 3, 2 / 3, 1 / 3, 1 / 3 + 1 / 2])


def test_pool_mask_top_gives_caffe_flat_index():
    layer = make('name: "p" type: "Pooling" bottom: "x" top: "y" top: "mask" '
                 'pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }')
    xs, (y, mask) = run(layer, [[[[1.0, 9.0, 2.0], [3.0, 4.0, 8.0], [7.0, 5.0, 6.0]]]])
    assert y[0, 0].tolist() == [[1.0, 9.0], [7.0, 8.0]]
    assert mask[0, 0].tolist() == [[0.0, 1.0], [6.0, 5.0]]


def test_global_pooling_and_floor_mode():
    layer = make('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE global_pooling: true }')
    xs, (y,) = run(layer, [[[[1.0, 2.0], [3.0, 6.0]]]])
    assert y.flatten().tolist() == [3.0]
    layer = make('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR }')
    layer.setup([(1, 1, 5, 5)])
    assert layer.reshape([(1, 1, 5, 5)]) == [(1, 1, 2, 2)]


def test_pool_pad_not_smaller_than_kernel_is_refused():
    with pytest.raises(LayerError, match="pad"):
        make('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 pad: 2 }').setup([(1, 1, 4, 4)])


# -- Convolution sizes: C++ integer division; Deconvolution's blob layout ------------------------
def test_conv_truncating_division_still_gives_one_output():
    # in 2, k 4, s 3, pad 0: (2-4)/3 truncates to 0 -> 1 output; missing taps read 0
    layer = make('name: "c" type: "Convolution" bottom: "x" top: "y" '
                 'convolution_param { num_output: 1 kernel_size: 4 stride: 3 bias_term: false }')
    w = torch.ones(1, 1, 4, 4)
    xs, (y,) = run(layer, [[[[1.0, 2.0], [3.0, 4.0]]]], params=[w])
    assert y.tolist() == [[[[10.0]]]]


def test_deconv_output_size_and_weight_layout():
    layer = make('name: "d" type: "Deconvolution" bottom: "x" top: "y" '
                 'convolution_param { num_output: 6 group: 2 kernel_size: 4 stride: 2 pad: 1 }')
    params = layer.setup([(1, 4, 5, 5)])
    assert tuple(params[0].shape) == (4, 3, 4, 4) and tuple(params[1].shape) == (6,)
    assert layer.reshape([(1, 4, 5, 5)]) == [(1, 6, 10, 10)]  # 2*(5-1) + 4 - 2


def test_conv_default_weight_filler_is_zero_and_group_checked():
    layer = make('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_size: 1 }')
    w, b = layer.setup([(1, 3, 2, 2)])
    assert not w.any() and not b.any()
    with pytest.raises(LayerError, match="group"):
        make('name: "c" type: "Convolution" bottom: "x" top: "y" '
             'convolution_param { num_output: 2 kernel_size: 1 group: 2 }').setup([(1, 3, 2, 2)])


# -- LRN: alpha/local_size across, alpha/local_size² within (k ignored) --------------------------
def test_lrn_within_channel_ignores_k_and_divides_alpha_by_size_squared():
    layer = make('name: "l" type: "LRN" bottom: "x" top: "y" '
                 'lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 9 beta: 1 k: 100 }')
    xs, (y,) = run(layer, [[[[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]]])
    # centre: 2 / (1 + 9/9 * 4) = 0.4
    assert y[0, 0, 1, 1].item() == pytest.approx(0.4)


def test_lrn_across_channels_divides_alpha_by_size():
    layer = make('name: "l" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 3 beta: 1 k: 2 }')
    xs, (y,) = run(layer, [[[[1.0]], [[2.0]], [[0.0]]]])
    # channel 0: window {0, 1}: 2 + 3/3*(1+4) = 7 -> 1/7; channel 1: 2 + (1+4+0) = 7 -> 2/7
    assert y.flatten().tolist() == pytest.approx([1 / 7, 2 / 7, 0.0])


# -- Losses and accuracy: SoftmaxWithLoss normalization, Accuracy ties ---------------------------
def test_softmax_loss_ignore_label_valid_normalizer_and_flt_min_clamp():
    layer = make('name: "s" type: "SoftmaxWithLoss" bottom: "x" bottom: "l" top: "loss" '
                 'loss_param { ignore_label: 255 }')
    x = torch.tensor([[[0.0, 0.0, 0.0]], [[200.0, 0.0, 0.0]]]).reshape(1, 2, 1, 3).requires_grad_(True)
    label = torch.tensor([[[[0.0, 1.0, 255.0]]]])
    fresh = layer.setup([tuple(x.shape), tuple(label.shape)])
    (loss,) = layer.forward([x, label], fresh)
    # position 0: p(label 0) = e^0/(e^0+e^200) underflows -> clamped to FLT_MIN: -log = 87.3365
    # position 1: p = 0.5 -> log 2; ignored position 2 excluded; VALID normalizer 2
    expected = (-math.log(1.17549435e-38) + math.log(2.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    (dx,) = torch.autograd.grad(loss, [x])
    assert dx[0, :, 0, 2].tolist() == [0.0, 0.0]
    assert dx[0, :, 0, 0].tolist() == pytest.approx([-0.5, 0.5])  # (p - onehot)/Z, not a clamped zero
    assert not layer.allow_force_backward(1)


def test_softmax_loss_normalizer_at_least_one():
    layer = make('name: "s" type: "SoftmaxWithLoss" bottom: "x" bottom: "l" top: "loss" '
                 'loss_param { ignore_label: 1 normalization: VALID }')
    xs, (loss,) = run(layer, [[1.0, 2.0]], torch.tensor([1.0]))
    assert loss.item() == 0.0


def test_softmax_loss_legacy_normalize_false_is_batch_size():
    layer = make('name: "s" type: "SoftmaxWithLoss" bottom: "x" bottom: "l" top: "loss" loss_param { normalize: false }')
    x = torch.zeros(2, 2, 1, 2, requires_grad=True)
    fresh = layer.setup([(2, 2, 1, 2), (2, 1, 1, 2)])
    (loss,) = layer.forward([x, torch.zeros(2, 1, 1, 2)], fresh)
    assert loss.item() == pytest.approx(4 * math.log(2) / 2)


def test_accuracy_tie_counts_as_wrong():
    layer = make('name: "a" type: "Accuracy" bottom: "x" bottom: "l" top: "acc"')
    xs, (acc,) = run(layer, [[1.0, 1.0], [2.0, 1.0]], torch.tensor([0.0, 0.0]))
    assert acc.item() == 0.5
    layer = make('name: "a" type: "Accuracy" bottom: "x" bottom: "l" top: "acc" accuracy_param { top_k: 2 }')
    xs, (acc,) = run(layer, [[3.0, 3.0, 3.0], [1.0, 2.0, 3.0]], torch.tensor([0.0, 1.0]))
    assert acc.item() == 0.5  # row 0: two others tie -> 2 "better" -> wrong; row 1: one better -> right


def test_sigmoid_cross_entropy_default_batch_size_normalization():
    layer = make('name: "s" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss"')
    xs, (loss,) = run(layer, [[0.0, 0.0], [0.0, 0.0]], torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert loss.item() == pytest.approx(4 * math.log(2) / 2, rel=1e-6)


# -- Dropout, BatchNorm, shapes --------------------------------------------------------------
def test_dropout_train_scales_kept_units_and_test_is_identity():
    rng.set_seed(7)
    layer = make('name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.75 }')
    x = torch.ones(20000)
    fresh = layer.setup([tuple(x.shape)])
    (y,) = layer.forward([x], fresh)
    assert set(y.unique().tolist()) <= {0.0, 4.0}
    kept = (y > 0).float().mean().item()
    assert abs(kept - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 20000)
    test_layer = make('name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.75 }',
                      caffe_pb2.TEST)
    test_layer.setup([tuple(x.shape)])
    assert torch.equal(test_layer.forward([x], [])[0], x)


def test_batchnorm_params_fixed_and_explicit_lr_refused():
    layer = make('name: "b" type: "BatchNorm" bottom: "x" top: "y"')
    assert layer.fixed_params
    with pytest.raises(LayerError, match="lr_mult"):
        make('name: "b" type: "BatchNorm" bottom: "x" top: "y" param { lr_mult: 1 }').setup([(2, 3)])


def test_batchnorm_global_stats_default_follows_phase():
    layer = make('name: "b" type: "BatchNorm" bottom: "x" top: "y"', caffe_pb2.TEST)
    layer.setup([(2, 1, 1, 1)])
    params = [torch.tensor([4.0]), torch.tensor([8.0]), torch.tensor([2.0])]  # mean 2, var 4
    (y,) = layer.forward([torch.tensor([[[[2.0]]], [[[6.0]]]])], params)
    assert y.flatten().tolist() == pytest.approx([0.0, 4.0 / math.sqrt(4 + 1e-5)])


def test_crop_single_offset_applies_to_every_cropped_axis_and_no_grad_to_reference():
    layer = make('name: "c" type: "Crop" bottom: "a" bottom: "b" top: "y" crop_param { offset: 1 }')
    a = torch.arange(16.0).reshape(1, 1, 4, 4)
    xs, (y,) = run(layer, a, torch.zeros(1, 1, 2, 2))
    assert y.flatten().tolist() == [5.0, 6.0, 9.0, 10.0]
    assert not layer.allow_force_backward(1)
    with pytest.raises(LayerError, match="offsets"):
        make('name: "c" type: "Crop" bottom: "a" bottom: "b" top: "y" crop_param { offset: 1 offset: 2 offset: 3 }').setup(
            [(1, 1, 4, 4), (1, 1, 2, 2)])


def test_reshape_copy_and_infer_dims_with_axis():
    layer = make('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: -1 } axis: 1 }')
    layer.setup([(2, 3, 4, 5)])
    assert layer.reshape([(2, 3, 4, 5)]) == [(2, 3, 20)]
    assert not layer.allows_in_place


def test_relu_gradient_at_zero_uses_negative_slope():
    layer = make('name: "r" type: "ReLU" bottom: "x" top: "y" relu_param { negative_slope: 0.1 }')
    xs, (y,) = run(layer, [-2.0, 0.0, 3.0])
    assert y.tolist() == pytest.approx([-0.2, 0.0, 3.0])
    assert grads(xs, y, [1.0, 1.0, 1.0])[0] == pytest.approx([0.1, 0.1, 1.0])


def test_power_constant_case_has_zero_gradient():
    layer = make('name: "p" type: "Power" bottom: "x" top: "y" power_param { power: 2 scale: 0 shift: 3 }')
    xs, (y,) = run(layer, [1.0, 2.0])
    assert y.tolist() == [9.0, 9.0]
    assert grads(xs, y, [1.0, 1.0])[0] in (None, [0.0, 0.0])


# -- broadcast / axis forms ------------------------------------------------------------------
def test_scale_two_bottom_form_with_bias_and_bias_two_bottoms():
    layer = make('name: "s" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { axis: 1 bias_term: true }')
    x = torch.ones(2, 3, 2)
    s = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (bias,) = layer.setup([(2, 3, 2), (3,)])
    assert tuple(bias.shape) == (3,) and not bias.any()  # [bias] only; the scale is bottom[1]
    (y,) = layer.forward([x, s], [bias + 0.5])
    assert y[1, :, 1].tolist() == [1.5, 2.5, 3.5]
    (ds,) = torch.autograd.grad(y.sum(), [s])
    assert ds.tolist() == [4.0, 4.0, 4.0]  # Σ over outer 2 × inner 2 of dy·x
    layer = make('name: "b" type: "Bias" bottom: "x" bottom: "b" top: "y"')
    assert layer.setup([(2, 3, 2), (3, 2)]) == []
    (y,) = layer.forward([x, torch.arange(6.0).reshape(3, 2)], [])
    assert y[0].tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]


def test_scale_default_filler_is_one_and_num_axes_zero_is_scalar():
    layer = make('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { num_axes: 0 }')
    (scale,) = layer.setup([(2, 3)])
    assert tuple(scale.shape) == () and scale.item() == 1.0
    (y,) = layer.forward([torch.ones(2, 3)], [torch.tensor(4.0)])
    assert y.tolist() == [[4.0] * 3] * 2


def test_inner_product_transpose_and_negative_axis():
    layer = make('name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                 'inner_product_param { num_output: 2 transpose: true axis: -1 bias_term: false }')
    (w,) = layer.setup([(3, 4)])
    assert tuple(w.shape) == (4, 2)
    x = torch.arange(12.0).reshape(3, 4)
    w = torch.arange(8.0).reshape(4, 2)
    (y,) = layer.forward([x], [w])
    assert y.tolist() == (x @ w).tolist()


def test_conv_channel_axis_two_flattens_leading_axes():
    layer = make('name: "c" type: "Convolution" bottom: "x" top: "y" '
                 'convolution_param { num_output: 1 kernel_size: 1 axis: 2 bias_term: false }')
    w, = layer.setup([(2, 3, 4, 5)])  # channel axis 2 (4 channels), one spatial axis of 5
    assert tuple(w.shape) == (1, 4, 1)
    assert layer.reshape([(2, 3, 4, 5)]) == [(2, 3, 1, 5)]
    x = torch.ones(2, 3, 4, 5)
    (y,) = layer.forward([x], [torch.ones(1, 4, 1)])
    assert y.shape == (2, 3, 1, 5) and torch.all(y == 4.0)


def test_concat_legacy_concat_dim_and_flatten_axes():
    layer = make('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { concat_dim: 0 }')
    layer.setup([(1, 2), (2, 2)])
    assert layer.reshape([(1, 2), (2, 2)]) == [(3, 2)]
    with pytest.raises(LayerError, match="differ"):
        layer.reshape([(1, 2), (2, 3)])
    layer = make('name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: 2 }')
    layer.setup([(2, 3, 4, 5)])
    assert layer.reshape([(2, 3, 4, 5)]) == [(2, 12, 5)]


def test_input_layer_shapes_one_for_all_or_one_per_top():
    layer = make('name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 2 } }')
    layer.setup([])
    assert layer.reshape([]) == [(1, 2), (1, 2)]
    layer = make('name: "in" type: "Input" top: "a" top: "b" top: "c" '
                 'input_param { shape { dim: 1 } shape { dim: 2 } }')
    with pytest.raises(LayerError, match="2 shapes for 3 tops"):
        layer.setup([])


def test_errors_name_the_layer():
    layer = make('name: "conv_bad" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 }')
    with pytest.raises(LayerError, match="layer 'conv_bad' \\(Convolution\\): kernel_size"):
        layer.setup([(1, 1, 4, 4)])
    layer = make('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 }')
    layer.setup([(1, 6)])
    with pytest.raises(LayerError, match="expect 6"):
        layer.reshape([(1, 7)])


def test_pool_pad_above_half_kernel_uses_caffe_windows():
    # PyTorch refuses pad > kernel/2; Caffe allows pad < kernel. 1-D along W: in 2, k 3, s 1, pad 2
    # -> out ceil((2+4-3)/1)+1 = 4, windows start at -2, -1, 0, 1, each divisor 3 (pad cells count)
    ave = make('name: "p" type: "Pooling" bottom: "x" top: "y" '
               'pooling_param { pool: AVE kernel_h: 1 kernel_w: 3 pad_h: 0 pad_w: 2 }')
    xs, (y,) = run(ave, [[[[3.0, 6.0]]]])
    assert y.flatten().tolist() == pytest.approx([1.0, 3.0, 3.0, 2.0])
    mx = make('name: "p" type: "Pooling" bottom: "x" top: "y" '
              'pooling_param { pool: MAX kernel_h: 1 kernel_w: 3 pad_h: 0 pad_w: 2 }')
    xs, (y,) = run(mx, [[[[3.0, 6.0]]]])
    assert y.flatten().tolist() == [3.0, 6.0, 6.0, 6.0]
    assert grads(xs, y, [[[[1.0, 1.0, 1.0, 1.0]]]])[0] == [[[[1.0, 3.0]]]]
