"""Rules of ``caffe.net_spec`` and ``caffe.coord_map`` beyond what BVLC's own tests cover
(those run unchanged in tests/test_bvlc_pycaffe_suite.py): deep graphs, argument routing
errors, and the coordinate-map cases pycaffe's code could not handle. Expected values are
worked out by hand in each test."""
from __future__ import annotations

import pytest

from caffeseg.engine import coord_map, net_spec

L, P = net_spec.layers, net_spec.params


def test_a_deep_chain_is_written_without_recursion_limits():
    top = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    for _ in range(3000):  # deeper than Python's default recursion limit
        top = L.ReLU(top)
    net = top.to_proto()
    assert len(net.layer) == 3001
    assert net.layer[-1].name == "ReLU3000" and list(net.layer[-1].bottom) == ["ReLU2999"]


def test_unnamed_in_place_layer_takes_a_name_from_the_shared_counter():
    data = L.Input(shape=dict(dim=[1, 2]))
    ip = L.InnerProduct(data, num_output=3)
    relu = L.ReLU(ip, in_place=True)
    net = net_spec.to_proto(L.InnerProduct(relu, num_output=1))
    assert [(layer.name, list(layer.bottom), list(layer.top)) for layer in net.layer] == [
        ("Input1", [], ["Input1"]),
        ("InnerProduct1", ["Input1"], ["InnerProduct1"]),
        ("ReLU1", ["InnerProduct1"], ["InnerProduct1"]),
        ("InnerProduct2", ["InnerProduct1"], ["InnerProduct2"])]


def test_tuples_fill_repeated_fields_and_a_message_object_is_copied():
    data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    rule = net_spec.caffe_pb2.NetStateRule(phase=1)
    conv = L.Convolution(data, kernel_size=(3, 5), num_output=2, include=rule,
                         weight_filler=net_spec.caffe_pb2.FillerParameter(type="xavier"))
    layer = conv.to_proto().layer[1]
    assert list(layer.convolution_param.kernel_size) == [3, 5]
    assert layer.include[0].phase == 1 and layer.convolution_param.weight_filler.type == "xavier"


def test_an_unknown_argument_names_the_layer_and_the_key():
    data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    with pytest.raises(AttributeError, match="Deconvolution layer: 'kernel_size' is not a field of "
                                             r"LayerParameter .*convolution_param=dict\(kernel_size"):
        L.Deconvolution(data, kernel_size=4).to_proto()
    with pytest.raises(AttributeError, match="Convolution layer: 'kernal_size' is not a field of "
                                             "LayerParameter or convolution_param"):
        L.Convolution(data, kernal_size=3).to_proto()


def test_a_netspec_entry_must_be_a_top_or_a_layer():
    n = net_spec.NetSpec()
    n.pair = L.DummyData(shape=dict(dim=[1]), ntop=2)
    with pytest.raises(TypeError, match="NetSpec entry 'pair' is a tuple"):
        n.to_proto()


def test_dilation_widens_the_kernel_in_the_map():
    n = net_spec.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    # k_eff = (3 - 1) * 2 + 1 = 5; b = pad - (5 - 1)/2 = 3 - 2 = 1, so data = conv - 1
    n.conv = L.Convolution(n.data, kernel_size=3, dilation=2, pad=3, num_output=1)
    axis, a, b = coord_map.coord_map_from_to(n.conv, n.data)
    assert axis == 1 and list(a) == [1] and list(b) == [-1]
    assert list(coord_map.crop(n.conv, n.data).fn.params["crop_param"]["offset"]) == [1]


def test_crop_through_a_crop_layer_alone():
    n = net_spec.NetSpec()
    n.big = L.Input(shape=dict(dim=[1, 1, 10, 10]))
    n.ref = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.cut = L.Crop(n.big, n.ref, axis=2, offset=1)   # cut = big - 1
    again = coord_map.crop(n.big, n.cut)
    assert again.fn.params["crop_param"] == {"axis": 2, "offset": [1]}
    with pytest.raises(AssertionError, match="negative offset"):
        coord_map.crop(n.cut, n.big)


def test_a_global_pooling_has_no_map():
    n = net_spec.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.pool = L.Pooling(n.data, pool=P.Pooling.AVE, global_pooling=True)
    with pytest.raises(coord_map.UndefinedMapException):
        coord_map.coord_map(n.pool.fn)
    with pytest.raises(RuntimeError, match="Could not compute map"):
        coord_map.coord_map_from_to(n.pool, n.data)


def test_compose_refuses_different_axes():
    with pytest.raises(coord_map.AxisMismatchException):
        coord_map.compose((1, 1, 0), (2, 1, 0))
    assert coord_map.compose((None, 2, 1), (1, 3, 4)) == (1, 6, 9)  # 2 * (3x + 4) + 1
    assert coord_map.inverse((1, 2.0, 6.0)) == (1, 0.5, -3.0)
