"""Caffe's rules for the indexing, slicing, windowing, reduction and source layers (BatchReindex,
Filter, Embed, Slice, Tile, Im2col, SPP, Reduction, MVN, Parameter, DummyData), run through
``engine.Net`` on tiny inputs. Expected values are worked out by hand from Caffe's C++."""
from __future__ import annotations

import numpy as np
import pytest

from caffeseg import engine
from caffeseg.engine.layer_types.base import LayerError
from caffeseg.engine.net import NetError
from caffeseg.engine.prototxt import parse_net


def net(text: str, phase=engine.TRAIN) -> engine.Net:
    return engine.Net(parse_net(text), phase)


def inputs(**shapes) -> str:
    return "".join(f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
                   + " ".join(f"dim: {d}" for d in s) + " } } }\n" for n, s in shapes.items())


def feed(n: engine.Net, **arrays) -> None:
    for name, value in arrays.items():
        value = np.asarray(value, dtype=np.float32)
        n.blobs[name].reshape(*value.shape)
        n.blobs[name].data[...] = value


# -- BatchReindex ------------------------------------------------------------------------------
REINDEX = inputs(x=[3, 2], idx=[4]) + \
    'layer { name: "re" type: "BatchReindex" bottom: "x" bottom: "idx" top: "y" }\n'


def test_batch_reindex_picks_repeats_and_accumulates_diffs():
    n = net(REINDEX)
    feed(n, x=[[1, 2], [3, 4], [5, 6]], idx=[2, 0, 2, 1])
    n.forward()
    assert n.blobs["y"].data.tolist() == [[5, 6], [1, 2], [5, 6], [3, 4]]


def test_batch_reindex_backward_adds_repeated_items_and_zeroes_unpicked():
    # a learnable Bias in front gives x a gradient without asking one for the indices
    n = net(inputs(x=[3, 2], idx=[3]) +
            'layer { name: "pre" type: "Bias" bottom: "x" top: "xs" }\n'
            'layer { name: "re" type: "BatchReindex" bottom: "xs" bottom: "idx" top: "y" loss_weight: 1 }\n')
    feed(n, x=np.zeros((3, 2)), idx=[2, 2, 0])
    n.forward()
    n.blobs["y"].diff[...] = [[1, 2], [10, 20], [100, 200]]
    n.backward()
    assert n.blobs["xs"].diff.tolist() == [[100, 200], [0, 0], [11, 22]]


def test_batch_reindex_refuses_the_index_gradient():
    n = net("force_backward: true\n" + REINDEX)
    feed(n, x=np.ones((3, 2)), idx=[0, 1, 2, 0])
    n.forward()
    with pytest.raises(LayerError, match=r"'re' \(BatchReindex\).*bottom 1 \(the indices\)"):
        n.backward()


@pytest.mark.parametrize("bad", [3, -1])
def test_batch_reindex_index_outside_the_batch_names_the_layer(bad):
    n = net(REINDEX)
    feed(n, x=np.ones((3, 2)), idx=[0, bad, 1, 1])
    with pytest.raises(LayerError, match=r"'re' \(BatchReindex\).*outside the batch of 3"):
        n.forward()


def test_batch_reindex_index_blob_must_have_one_axis():
    with pytest.raises(LayerError, match="index bottom must have 1 axis"):
        net(inputs(x=[3, 2], idx=[2, 2]) +
            'layer { name: "re" type: "BatchReindex" bottom: "x" bottom: "idx" top: "y" }')


# -- Filter ------------------------------------------------------------------------------------
FILTER = inputs(x=[4, 2], sel=[4, 1]) + \
    'layer { name: "pre" type: "Bias" bottom: "x" top: "xs" }\n' \
    'layer { name: "f" type: "Filter" bottom: "xs" bottom: "sel" top: "y" loss_weight: 1 }\n'


def test_filter_keeps_selected_items_and_routes_their_diffs_back():
    n = net(FILTER)
    feed(n, x=[[1, 2], [3, 4], [5, 6], [7, 8]], sel=[[0], [2.5], [0], [1]])
    assert n.blobs["y"].shape == (4, 2)  # before the selector is seen: the full batch, as Caffe
    n.forward()
    assert n.blobs["y"].data.tolist() == [[3, 4], [7, 8]]
    n.blobs["y"].diff[...] = [[1, 2], [3, 4]]
    n.backward()
    assert n.blobs["xs"].diff.tolist() == [[0, 0], [1, 2], [0, 0], [3, 4]]


def test_filter_refuses_the_selector_gradient():
    n = net("force_backward: true\n" + FILTER)
    feed(n, x=np.ones((4, 2)), sel=[[1], [0], [1], [1]])
    n.forward()
    with pytest.raises(LayerError, match=r"'f' \(Filter\).*bottom 1 \(the selector\)"):
        n.backward()


def test_filter_shape_rules():
    with pytest.raises(LayerError, match="every axis but the first must be 1"):
        net(inputs(x=[4, 2], sel=[4, 2]) + 'layer { name: "f" type: "Filter" bottom: "x" bottom: "sel" top: "y" }')
    with pytest.raises(LayerError, match="selector's first dimension 3"):
        net(inputs(x=[4, 2], sel=[3]) + 'layer { name: "f" type: "Filter" bottom: "x" bottom: "sel" top: "y" }')
    with pytest.raises(LayerError, match="one top per filtered bottom"):
        net(inputs(x=[4, 2], sel=[4]) +
            'layer { name: "f" type: "Filter" bottom: "x" bottom: "sel" top: "y" top: "z" }')


# -- Embed -------------------------------------------------------------------------------------
EMBED = inputs(idx=[2, 2]) + \
    'layer { name: "e" type: "Embed" bottom: "idx" top: "y" loss_weight: 1 embed_param { num_output: 2 ' \
    'input_dim: 3 weight_filler { type: "constant" value: 0 } bias_filler { type: "constant" value: 0.5 } } }\n'


def test_embed_looks_up_rows_adds_bias_and_accumulates_row_gradients():
    n = net(EMBED)
    n.params["e"][0].data[...] = [[1, 2], [3, 4], [5, 6]]
    assert n.params["e"][1].data.tolist() == [0.5, 0.5]  # bias_filler
    feed(n, idx=[[2, 0], [2, 2]])
    n.forward()
    assert n.blobs["y"].data.tolist() == [[[5.5, 6.5], [1.5, 2.5]], [[5.5, 6.5], [5.5, 6.5]]]
    n.blobs["y"].diff[...] = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    n.backward()
    assert n.params["e"][0].diff.tolist() == [[3, 4], [0, 0], [13, 16]]
    assert n.params["e"][1].diff.tolist() == [16, 20]


def test_embed_without_bias_has_one_blob():
    n = net(inputs(idx=[3]) + 'layer { name: "e" type: "Embed" bottom: "idx" top: "y" '
            'embed_param { num_output: 4 input_dim: 5 bias_term: false } }')
    assert [b.shape for b in n.params["e"]] == [(5, 4)]
    assert n.blobs["y"].shape == (3, 4)


@pytest.mark.parametrize("bad", [3, -1, 1.5])
def test_embed_index_must_be_an_integer_row(bad):
    n = net(EMBED)
    feed(n, idx=[[0, bad], [1, 1]])
    with pytest.raises(LayerError, match=r"'e' \(Embed\).*index .* not an integer in \[0, 3\)"):
        n.forward()


def test_embed_refuses_the_index_gradient_and_needs_positive_sizes():
    n = net("force_backward: true\n" + EMBED)
    feed(n, idx=[[0, 1], [2, 0]])
    n.forward()
    with pytest.raises(LayerError, match=r"'e' \(Embed\).*bottom 0 \(the indices\)"):
        n.backward()
    with pytest.raises(LayerError, match="input_dim must be positive"):
        net(inputs(idx=[2]) + 'layer { name: "e" type: "Embed" bottom: "idx" top: "y" embed_param { num_output: 2 } }')


# -- Slice and Tile ----------------------------------------------------------------------------
def test_slice_points_equal_split_and_legacy_slice_dim():
    n = net("force_backward: true\n" + inputs(x=[2, 5]) +
            'layer { name: "s" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: -1 slice_point: 2 } }\n'
            'layer { name: "r" type: "Slice" bottom: "x" top: "c" top: "d" slice_param { slice_dim: 0 } }\n')
    feed(n, x=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    n.forward()
    assert n.blobs["a"].data.tolist() == [[0, 1], [5, 6]]
    assert n.blobs["b"].data.tolist() == [[2, 3, 4], [7, 8, 9]]
    assert n.blobs["c"].data.tolist() == [[0, 1, 2, 3, 4]] and n.blobs["d"].shape == (1, 5)
    for top in "abcd":
        n.blobs[top].diff[...] = 1.0
    n.blobs["a"].diff[...] = [[10, 20], [30, 40]]
    n.backward()
    # the implicit split sums both slices' diffs: (a|b) + (c;d)
    assert n.blobs["x"].diff.tolist() == [[11, 21, 2, 2, 2], [31, 41, 2, 2, 2]]
    n.blobs["a"].data[...] = -1  # a top is a copy: writing it leaves the bottom alone
    assert n.blobs["x"].data[0, 0] == 0


@pytest.mark.parametrize("param, message", [
    ("slice_param { axis: 1 slice_dim: 1 }", "not both"),
    ("slice_param { axis: 1 }", "do not divide axis 1 of size 5"),
    ("slice_param { slice_point: 1 slice_point: 2 slice_point: 3 }", "3 slice_point value"),
    ("slice_param { slice_point: 6 }", "beyond axis 1 of size 5"),
    ("slice_param { slice_dim: 2 }", "slice_dim 2 out of range"),
])
def test_slice_rules(param, message):
    with pytest.raises(LayerError, match=message):
        net(inputs(x=[2, 5]) + f'layer {{ name: "s" type: "Slice" bottom: "x" top: "a" top: "b" {param} }}')


def test_tile_repeats_the_trailing_block_and_sums_diffs():
    n = net("force_backward: true\n" + inputs(x=[2, 2]) +
            'layer { name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: 0 tiles: 2 } }')
    feed(n, x=[[1, 2], [3, 4]])
    n.forward()
    assert n.blobs["y"].data.tolist() == [[1, 2], [3, 4], [1, 2], [3, 4]]
    n.blobs["y"].diff[...] = [[1, 2], [3, 4], [10, 20], [30, 40]]
    n.backward()
    assert n.blobs["x"].diff.tolist() == [[11, 22], [33, 44]]
    with pytest.raises(LayerError, match="tiles .* must be given"):
        net(inputs(x=[2, 2]) + 'layer { name: "t" type: "Tile" bottom: "x" top: "y" }')


# -- Im2col and SPP ----------------------------------------------------------------------------
def test_im2col_2d_columns_and_col2im_backward():
    n = net("force_backward: true\n" + inputs(x=[1, 1, 3, 3]) +
            'layer { name: "c" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 2 } }')
    feed(n, x=np.arange(9).reshape(1, 1, 3, 3))
    n.forward()
    y = n.blobs["y"].data
    assert y.shape == (1, 4, 2, 2)
    # row (i, j) of the kernel holds x[y + i, x + j] for each output position
    assert y[0, :, 0, 0].tolist() == [0, 1, 3, 4] and y[0, :, 1, 1].tolist() == [4, 5, 7, 8]
    n.blobs["y"].diff[...] = 1.0
    n.backward()
    # each pixel's diff counts the windows that read it
    assert n.blobs["x"].diff[0, 0].tolist() == [[1, 2, 1], [2, 4, 2], [1, 2, 1]]


def test_im2col_1d_uses_caffes_truncating_output_size():
    # size 2, kernel 3, stride 2: (2 − 3) / 2 truncates to 0, so one output whose window overhangs
    n = net(inputs(x=[1, 2, 2]) +
            'layer { name: "c" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 3 stride: 2 } }')
    feed(n, x=[[[1, 2], [3, 4]]])
    n.forward()
    assert n.blobs["y"].data.tolist() == [[[1], [2], [0], [3], [4], [0]]]
    with pytest.raises(LayerError, match="kernel_h and kernel_w can only be used with 2 spatial axes"):
        net(inputs(x=[1, 2, 4]) + 'layer { name: "c" type: "Im2col" bottom: "x" top: "y" '
            'convolution_param { kernel_h: 2 kernel_w: 2 } }')


def test_spp_pools_a_pyramid_and_concatenates():
    n = net(inputs(x=[1, 1, 4, 4]) +
            'layer { name: "p" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 2 } }')
    feed(n, x=np.arange(16).reshape(1, 1, 4, 4))
    n.forward()
    # level 0: max of all (15); level 1: 2×2 bins of 2×2 pixels
    assert n.blobs["y"].data.tolist() == [[15, 5, 7, 13, 15]]


def test_spp_refuses_more_bins_than_pixels_and_non_4d_input():
    with pytest.raises(LayerError, match=r"'p' \(SPP\).*level 1 \(2x2 bins\) on a 1x4 input.*pad"):
        net(inputs(x=[1, 1, 1, 4]) + 'layer { name: "p" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 2 } }')
    with pytest.raises(LayerError, match="4 axes"):
        net(inputs(x=[1, 4, 4]) + 'layer { name: "p" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 1 } }')


# -- Reduction and MVN -------------------------------------------------------------------------
def test_reduction_operations_axes_coeff_and_the_0_axis_top():
    n = net("force_backward: true\n" + inputs(x=[2, 2]) +
            'layer { name: "all" type: "Reduction" bottom: "x" top: "s" reduction_param { coeff: 2 } }\n'
            'layer { name: "abs" type: "Reduction" bottom: "x" top: "a" reduction_param { operation: ASUM axis: 1 } }\n'
            'layer { name: "sq" type: "Reduction" bottom: "x" top: "q" reduction_param { operation: SUMSQ axis: -1 } }\n'
            'layer { name: "mean" type: "Reduction" bottom: "x" top: "m" reduction_param { operation: MEAN axis: 1 coeff: 3 } }\n')
    feed(n, x=[[0, -2], [3, 1]])
    n.forward()
    assert n.blobs["s"].data.shape == () and float(n.blobs["s"].data) == 4.0
    assert n.blobs["a"].data.tolist() == [2, 4]
    assert n.blobs["q"].data.tolist() == [4, 10]
    assert n.blobs["m"].data.tolist() == [-3, 6]
    n.blobs["s"].diff[...] = 1.0
    n.blobs["a"].diff[...] = [10, 100]
    n.blobs["q"].diff[...] = 0.0
    n.blobs["m"].diff[...] = 0.0
    n.backward()
    # SUM: coeff·dy = 2 everywhere; ASUM: sign(x)·dy with sign(0) = 0
    assert n.blobs["x"].diff.tolist() == [[2 + 0, 2 - 10], [2 + 100, 2 + 100]]


def test_mvn_uses_caffes_eps_and_backward():
    n = net("force_backward: true\n" + inputs(x=[1, 1, 2]) +
            'layer { name: "n" type: "MVN" bottom: "x" top: "y" mvn_param { eps: 1 } }')
    feed(n, x=[[[1, 3]]])
    n.forward()
    # mean 2, std 1; y = (x − 2) / (1 + eps); a 3-axis bottom gives Caffe's 4-axis top
    assert n.blobs["y"].data.shape == (1, 1, 2, 1)
    assert n.blobs["y"].data.ravel().tolist() == [-0.5, 0.5]
    n.blobs["y"].diff[...] = np.array([1.0, 0.0]).reshape(1, 1, 2, 1)
    n.backward()
    # (dy − mean(dy) − y·mean(y·dy)) / (std + eps) = ([1, 0] − 0.5 − [-0.5, 0.5]·(−0.25)) / 2
    assert n.blobs["x"].diff.ravel().tolist() == [0.1875, -0.1875]


def test_mvn_mean_only_and_across_channels():
    n = net("force_backward: true\n" + inputs(x=[1, 2, 1, 2]) +
            'layer { name: "n" type: "MVN" bottom: "x" top: "y" mvn_param { normalize_variance: false } }\n'
            'layer { name: "a" type: "MVN" bottom: "x" top: "z" mvn_param { normalize_variance: false across_channels: true } }\n')
    feed(n, x=[[[[1, 3]], [[10, 20]]]])
    n.forward()
    assert n.blobs["y"].data.ravel().tolist() == [-1, 1, -5, 5]
    assert n.blobs["z"].data.ravel().tolist() == [-7.5, -5.5, 1.5, 11.5]
    with pytest.raises(LayerError, match="at most 4 axes"):
        net(inputs(x=[1, 1, 1, 1, 2]) + 'layer { name: "n" type: "MVN" bottom: "x" top: "y" }')


# -- Parameter and DummyData -------------------------------------------------------------------
def test_parameter_top_is_the_blob_and_its_diff_goes_to_the_blob():
    n = net(inputs(x=[2]) +
            'layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 2 } } }\n'
            'layer { name: "prod" type: "Eltwise" bottom: "w" bottom: "x" top: "y" loss_weight: 1 '
            'eltwise_param { operation: PROD } }\n')
    assert n.params["p"][0].data.tolist() == [0, 0]  # Caffe's fresh blob is zero
    n.params["p"][0].data[...] = [2, 3]
    feed(n, x=[5, 7])
    n.forward()
    assert n.blobs["w"].data.tolist() == [2, 3] and n.blobs["y"].data.tolist() == [10, 21]
    n.blobs["y"].diff[...] = [1, 10]
    n.backward()
    assert n.params["p"][0].diff.tolist() == [5, 70]


def test_dummy_data_fills_constant_tops_once_and_random_ones_every_forward():
    engine.set_random_seed(3)
    n = net('layer { name: "d" type: "DummyData" top: "c" top: "g" dummy_data_param { '
            'shape { dim: 2 } shape { dim: 1000 } data_filler { type: "constant" value: 4 } '
            'data_filler { type: "gaussian" std: 1 } } }\n'
            'layer { name: "l" type: "DummyData" top: "a" dummy_data_param { num: 2 channels: 1 height: 1 width: 3 } }')
    assert n.blobs["a"].shape == (2, 1, 1, 3)
    n.forward()
    assert n.blobs["c"].data.tolist() == [4, 4] and not n.blobs["a"].data.any()
    first = n.blobs["g"].data.copy()
    assert 0.8 < first.std() < 1.2
    n.blobs["c"].data[...] = 9  # Caffe never refills a constant top
    n.forward()
    assert n.blobs["c"].data.tolist() == [9, 9]
    assert not np.array_equal(n.blobs["g"].data, first)


@pytest.mark.parametrize("param, message", [
    ("shape { dim: 2 } num: 1 channels: 1 height: 1 width: 1", "not both"),
    ("num: 1 channels: 1 height: 1", "give 'width' once"),
    ("shape { dim: 2 } data_filler { } data_filler { } data_filler { }", "3 data_filler entries for 2 tops"),
    ("shape { dim: 2 dim: 2 } data_filler { type: \"bilinear\" }", "bilinear filler needs a 4-D blob"),
    ("", "give 'shape' once"),
])
def test_dummy_data_rules(param, message):
    with pytest.raises(LayerError, match=message):
        net(f'layer {{ name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param {{ {param} }} }}')


def test_layers_without_bottoms_refuse_bottoms():
    with pytest.raises(NetError, match=r"'p' \(Parameter\) takes exactly 0 bottom"):
        net(inputs(x=[2]) + 'layer { name: "p" type: "Parameter" bottom: "x" top: "w" }')


def test_index_gradient_requested_by_a_learnable_layer_below_is_refused():
    # without force_backward: a Bias (learnable, filled with 0) in front of the indices makes the
    # net ask BatchReindex for the index gradient, which Caffe refuses as well
    n = net(inputs(x=[3, 2], idx=[2]) +
            'layer { name: "shift" type: "Bias" bottom: "idx" top: "idx2" bias_param { axis: 0 } }\n'
            'layer { name: "re" type: "BatchReindex" bottom: "x" bottom: "idx2" top: "y" loss_weight: 1 }\n')
    feed(n, x=np.ones((3, 2)), idx=[1, 2])
    n.forward()
    with pytest.raises(LayerError, match=r"'re' \(BatchReindex\).*bottom 1"):
        n.backward()
