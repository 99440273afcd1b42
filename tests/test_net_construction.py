"""Net construction rules of Caffe's ``Net::Init``, checked on tiny nets."""
from __future__ import annotations

import numpy as np
import pytest

from caffeseg import engine
from caffeseg.engine.net import NetError
from caffeseg.engine.proto import caffe_pb2

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
LABEL = 'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }\n'


def ip(name, bottom, top, n=2, extra=""):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" {extra} '
            f'inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 1 }} '
            f'bias_filler {{ type: "gaussian" std: 1 }} }} }}\n')


# data + label → InnerProduct "fc" → SoftmaxWithLoss "loss"
FC_LOSS = (INPUT + LABEL + ip("fc", "data", "fc") +
           'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n')


def make(tmp_path, text, phase=engine.TEST, **kwargs):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return engine.Net(str(path), phase, **kwargs)


STAGED = INPUT + "\n".join([
    'layer { name: "train_only" type: "ReLU" bottom: "data" top: "a" include { phase: TRAIN } }',
    'layer { name: "test_only" type: "ReLU" bottom: "data" top: "b" include { phase: TEST } }',
    'layer { name: "val_stage" type: "ReLU" bottom: "data" top: "c" include { stage: "val" } }',
    'layer { name: "not_deploy" type: "ReLU" bottom: "data" top: "d" exclude { stage: "deploy" } }',
    'layer { name: "deploy_rule" type: "ReLU" bottom: "data" top: "e" include { not_stage: "train" not_stage: "val" } }',
    'layer { name: "level_1_to_2" type: "ReLU" bottom: "data" top: "f" include { min_level: 1 max_level: 2 } }',
    'layer { name: "either" type: "ReLU" bottom: "data" top: "g" include { stage: "x" } include { phase: TRAIN } }',
    'layer { name: "both_stages" type: "ReLU" bottom: "data" top: "h" include { stage: "val" stage: "x" } }',
])


@pytest.mark.parametrize("phase,stages,level,expected", [
    (engine.TRAIN, ["train"], 0, ["data", "train_only", "not_deploy", "either"]),
    (engine.TEST, ["val"], 0, ["data", "test_only", "val_stage", "not_deploy"]),
    (engine.TEST, ["deploy"], 0, ["data", "test_only", "deploy_rule"]),
    (engine.TEST, [], 1, ["data", "test_only", "not_deploy", "deploy_rule", "level_1_to_2"]),
    (engine.TEST, [], 3, ["data", "test_only", "not_deploy", "deploy_rule"]),
    (engine.TEST, ["val", "x"], 2, ["data", "test_only", "val_stage", "not_deploy", "level_1_to_2", "either",
                                    "both_stages"]),
])
def test_netstate_filtering(tmp_path, phase, stages, level, expected):
    net = make(tmp_path, STAGED, phase, stages=stages, level=level)
    assert [n for n in net._layer_names if not n.endswith("_split")] == expected


def test_include_and_exclude_together_is_an_error(tmp_path):
    text = INPUT + 'layer { name: "bad" type: "ReLU" bottom: "data" top: "r" include { phase: TRAIN } exclude { phase: TEST } }'
    with pytest.raises(NetError, match="'bad'.*both include and exclude"):
        make(tmp_path, text)


def test_layer_phase_field_overrides_the_net_phase(tmp_path):
    text = INPUT + 'layer { name: "drop" type: "Dropout" bottom: "data" top: "y" phase: TEST }'
    net = make(tmp_path, text, engine.TRAIN)
    net.blobs["data"].data[...] = 1.0
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, 1.0)  # Dropout at TEST is the identity


def test_outputs_are_unconsumed_blobs_sorted_by_name(tmp_path):
    text = (FC_LOSS +
            'layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" }\n'
            'layer { name: "zz" type: "ReLU" bottom: "data" top: "zz" }\n')
    net = make(tmp_path, text, engine.TRAIN)
    assert net.outputs == ["accuracy", "loss", "zz"]
    assert net.inputs == ["data", "label"]


def test_anonymous_loss_top_is_computed_but_not_an_output(tmp_path):
    text = (INPUT + 'layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "l2" type: "EuclideanLoss" bottom: "data" bottom: "t" }\n')
    net = make(tmp_path, text, engine.TRAIN)
    assert net.outputs == []
    assert "(automatic)" not in net.blobs
    net.blobs["data"].data[...] = 1.0
    net.forward()
    assert net.last_loss == pytest.approx(6.0 / 2 / 2)  # Σ d² / (2N)


def test_loss_weight_comes_from_the_loss_layer_class_not_the_type_name(tmp_path):
    text = (FC_LOSS +
            'layer { name: "weighted" type: "ReLU" bottom: "data" top: "r" loss_weight: 0.5 }\n'
            'layer { name: "plain" type: "ReLU" bottom: "fc" top: "p" }\n')
    net = make(tmp_path, text, engine.TRAIN)
    assert net.blob_loss_weights["loss"] == 1.0
    assert net.blob_loss_weights["r"] == 0.5
    assert net.blob_loss_weights["p"] == 0.0
    assert net.blobs["loss"].diff == 1.0  # Caffe fills a loss top's diff with its weight


def test_python_layer_named_loss_weighs_zero(tmp_path, monkeypatch):
    (tmp_path / "mylosses.py").write_text(
        "import caffe\n"
        "class SumLoss(caffe.Layer):\n"
        "    def setup(self, bottom, top): pass\n"
        "    def reshape(self, bottom, top): top[0].reshape(1)\n"
        "    def forward(self, bottom, top): top[0].data[...] = bottom[0].data.sum()\n"
        "    def backward(self, top, propagate_down, bottom): bottom[0].diff[...] = top[0].diff\n")
    text = INPUT + ('layer { name: "MyLoss" type: "Python" bottom: "data" top: "loss" '
                    'python_param { module: "mylosses" layer: "SumLoss" } }\n')
    net = make(tmp_path, text, engine.TRAIN)
    assert net.blob_loss_weights["loss"] == 0.0
    weighted = make(tmp_path, text.replace('top: "loss"', 'top: "loss" loss_weight: 2'), engine.TRAIN)
    assert weighted.blob_loss_weights["loss"] == 2.0
    weighted.blobs["data"].data[...] = 1.5
    weighted.forward()
    assert weighted.last_loss == pytest.approx(2 * 9.0)


def test_loss_weight_count_must_match_tops(tmp_path):
    text = INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" loss_weight: 1 loss_weight: 2 }'
    with pytest.raises(NetError, match="'r'.*2 loss_weight"):
        make(tmp_path, text)


def test_implicit_split_names_and_gradient_sum(tmp_path):
    text = ("force_backward: true\n" + INPUT + ip("a", "data", "ya") + ip("b", "data", "yb") +
            'layer { name: "relu" type: "ReLU" bottom: "ya" top: "ya" }\n'
            'layer { name: "sum" type: "Eltwise" bottom: "ya" bottom: "yb" bottom: "ya" top: "y" }\n')
    net = make(tmp_path, text, engine.TRAIN)
    assert list(net.blobs) == ["data", "data_data_0_split_0", "data_data_0_split_1", "ya", "yb",
                               "ya_relu_0_split_0", "ya_relu_0_split_1", "y"]
    assert net._layer_names == ["data", "data_data_0_split", "a", "b", "relu", "ya_relu_0_split", "sum"]
    assert net.bottom_names["sum"] == ["ya_relu_0_split_0", "yb", "ya_relu_0_split_1"]
    x = np.random.RandomState(0).randn(2, 3).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    net.blobs["y"].diff[...] = 1.0
    net.backward()
    wa, wb = net.params["a"][0].data, net.params["b"][0].data
    mask = (x @ wa.T + net.params["a"][1].data > 0).astype(np.float32)
    # ya is used twice in the sum, so its gradient is 2·mask; the split sums both paths
    expected = (2 * mask) @ wa + np.ones((2, 2), np.float32) @ wb
    np.testing.assert_allclose(net.params["a"][0].diff, (2 * mask).T @ x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.blobs["data"].diff, expected, rtol=1e-5, atol=1e-5)
    # each split top keeps the diff of its own consumer
    np.testing.assert_allclose(net.blobs["data_data_0_split_1"].diff, np.ones((2, 2), np.float32) @ wb,
                               rtol=1e-5, atol=1e-5)


def test_without_a_loss_or_force_backward_nothing_needs_backward(tmp_path):
    net = make(tmp_path, INPUT + ip("a", "data", "ya"), engine.TRAIN)
    assert not any(layer.need_backward for layer in net.layers)
    net.forward()
    net.blobs["ya"].diff[...] = 1.0
    net.backward()
    assert not net.params["a"][0].diff.any()


def test_split_of_a_loss_weighted_top_reserves_split_top_zero(tmp_path):
    text = INPUT + ip("fc", "data", "fc", extra="loss_weight: 2") + 'layer { name: "r" type: "ReLU" bottom: "fc" top: "r" }\n'
    net = make(tmp_path, text, engine.TRAIN)
    split = net.layer_dict["fc_fc_0_split"]
    assert split.param.loss_weight[:] == [2.0, 0.0]
    assert net.bottom_names["r"] == ["fc_fc_0_split_1"]
    assert net.blob_loss_weights["fc_fc_0_split_0"] == 2.0 and net.blob_loss_weights["fc"] == 0.0


def test_backward_gradients_through_a_loss(tmp_path):
    text = (INPUT + ip("a", "data", "ya") + ip("b", "data", "yb") +
            'layer { name: "sum" type: "Eltwise" bottom: "ya" bottom: "yb" top: "y" }\n'
            'layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 2 } } }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }\n'
            'force_backward: true\n')
    net = make(tmp_path, text, engine.TRAIN)
    x = np.random.RandomState(1).randn(2, 3).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    net.backward()
    y = net.blobs["y"].data
    dy = y / 2.0  # EuclideanLoss: (y - t) / N with t = 0
    wa, wb = net.params["a"][0].data, net.params["b"][0].data
    np.testing.assert_allclose(net.blobs["data"].diff, dy @ wa + dy @ wb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["a"][0].diff, dy.T @ x, rtol=1e-5, atol=1e-6)
    # param diffs accumulate over backward passes; bottom diffs are overwritten
    net.backward()
    np.testing.assert_allclose(net.params["a"][0].diff, 2 * dy.T @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["data"].diff, dy @ wa + dy @ wb, rtol=1e-5, atol=1e-6)


def test_need_backward_rules(tmp_path):
    text = (INPUT + 'layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 2 } } }\n' +
            ip("frozen", "data", "h", extra='param { lr_mult: 0 } param { lr_mult: 0 }') +
            ip("learn", "h", "y") +
            ip("side", "data", "s") +
            'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }\n')
    net = make(tmp_path, text, engine.TRAIN)
    need = {l.name: l.need_backward for l in net.layers}
    assert need == {"data": False, "t": False, "data_data_0_split": False, "frozen": False,
                    "learn": True, "side": False, "loss": True}
    assert net.layer_dict["frozen"].param_propagate_down == [False, False]
    assert net.layer_dict["loss"].bottom_need_backward == [True, False]
    net.blobs["data"].data[...] = 1.0
    net.forward()
    net.backward()
    assert not net.params["frozen"][0].diff.any()
    assert not net.blobs["data"].diff.any()
    assert net.params["learn"][0].diff.any()


def test_force_backward_overrides_lr_mult_zero_but_not_the_label(tmp_path):
    text = ("force_backward: true\n" + INPUT + LABEL +
            ip("frozen", "data", "fc", extra='param { lr_mult: 0 } param { lr_mult: 0 }') +
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n')
    net = make(tmp_path, text, engine.TRAIN)
    assert net.layer_dict["frozen"].param_propagate_down == [True, True]
    assert net.layer_dict["loss"].bottom_need_backward == [True, False]
    net.blobs["data"].data[...] = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.forward()
    net.backward()
    assert net.params["frozen"][0].diff.any() and net.blobs["data"].diff.any()
    # the learnable list still says lr_mult 0: the solver will not move it
    assert [(float(lr)) for _, lr, _ in net.learnable_params] == [0.0, 0.0]


def test_propagate_down_false_skips_that_bottom(tmp_path):
    text = (INPUT + ip("a", "data", "ya") +
            'layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 2 } } }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "ya" bottom: "t" top: "loss" '
            'propagate_down: false propagate_down: false }\n')
    net = make(tmp_path, text, engine.TRAIN)
    assert net.layer_dict["loss"].bottom_need_backward == [False, False]
    net.blobs["data"].data[...] = 1.0
    net.forward()
    net.backward()
    assert not net.params["a"][0].diff.any()


def test_shared_params_alias_data_and_accumulate_diffs(tmp_path):
    text = ("force_backward: true\n" + INPUT + ip("a", "data", "ya", extra='param { name: "w" } param { name: "bias" }') +
            ip("b", "data", "yb", extra='param { name: "w" lr_mult: 3 } param { name: "bias" }') +
            'layer { name: "sum" type: "Eltwise" bottom: "ya" bottom: "yb" top: "y" }\n')
    net = make(tmp_path, text, engine.TRAIN)
    assert net.params["a"][0] is net.params["b"][0]
    assert len(net.learnable_params) == 2
    assert net.learnable_params[0][1] == 3.0  # owner's implicit lr_mult takes the sharer's explicit one
    x = np.random.RandomState(2).randn(2, 3).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    net.blobs["y"].diff[...] = 1.0
    net.backward()
    np.testing.assert_allclose(net.params["a"][0].diff, 2 * np.ones((2, 2), np.float32).T @ x, rtol=1e-5)
    net.params["a"][0].data[...] = 0.5
    assert (net.params["b"][0].data == 0.5).all()


def test_permissive_sharing_needs_only_equal_counts(tmp_path):
    text = ("force_backward: true\n" + INPUT +
            ip("a", "data", "ya", extra='param { name: "w" } param { name: "ab" }') +
            ip("b", "ya", "yb", n=3, extra='param { name: "w" share_mode: PERMISSIVE } param { name: "bb" }'))
    net = make(tmp_path, text, engine.TRAIN)
    assert net.params["a"][0].shape == (2, 3) and net.params["b"][0].shape == (3, 2)
    net.params["a"][0].data[...] = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(net.params["b"][0].data, np.arange(6, dtype=np.float32).reshape(3, 2))
    x = np.random.RandomState(4).randn(2, 3).astype(np.float32)
    net.forward(data=x)
    net.backward(yb=np.ones((2, 3), np.float32))
    wb = net.params["b"][0].data
    ya = net.blobs["ya"].data
    grad_b = np.ones((2, 3), np.float32).T @ ya              # (3, 2), seen by layer b
    grad_a = (np.ones((2, 3), np.float32) @ wb).T @ x        # (2, 3), seen by layer a
    np.testing.assert_allclose(net.params["a"][0].diff, grad_a + grad_b.reshape(2, 3), rtol=1e-5, atol=1e-5)
    assert len(net.learnable_params) == 3


def test_shared_param_conflicts_are_errors(tmp_path):
    text = (INPUT + ip("a", "data", "ya", extra='param { name: "w" lr_mult: 1 }') +
            ip("b", "data", "yb", extra='param { name: "w" lr_mult: 2 }'))
    with pytest.raises(NetError, match="mismatched lr_mult"):
        make(tmp_path, text)
    text = INPUT + ip("a", "data", "ya", extra='param { name: "w" }') + ip("b", "data", "yb", n=3, extra='param { name: "w" }')
    with pytest.raises(NetError, match="'b'.*shape"):
        make(tmp_path, text)


def test_in_place_and_duplicate_tops(tmp_path):
    net = make(tmp_path, INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }')
    assert list(net.blobs) == ["data"]
    net.forward(data=-np.ones((2, 3), np.float32))
    assert (net.blobs["data"].data == 0).all()
    with pytest.raises(NetError, match="multiple sources"):
        make(tmp_path, INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "x" }\n'
                               'layer { name: "s" type: "ReLU" bottom: "data" top: "x" }')


def test_unknown_type_and_unknown_bottom_name_the_layer(tmp_path):
    with pytest.raises(NetError, match="'odd'.*unsupported type 'Frobnicate'"):
        make(tmp_path, INPUT + 'layer { name: "odd" type: "Frobnicate" bottom: "data" top: "y" }')
    with pytest.raises(NetError, match="'r'.*unknown bottom blob 'nope'"):
        make(tmp_path, INPUT + 'layer { name: "r" type: "ReLU" bottom: "nope" top: "y" }')


def test_net_from_a_netparameter_and_constructor_forms(tmp_path):
    path = tmp_path / "n.prototxt"
    path.write_text(INPUT + ip("fc", "data", "y"))
    trained = engine.Net(str(path), engine.TEST)
    trained.params["fc"][0].data[...] = 7.0
    trained.save(str(tmp_path / "w.caffemodel"))
    for net in (engine.Net(str(path), str(tmp_path / "w.caffemodel"), engine.TEST),
                engine.Net(str(path), engine.TEST, weights=str(tmp_path / "w.caffemodel"))):
        assert (net.params["fc"][0].data == 7.0).all()
    param = caffe_pb2.NetParameter()
    from caffeseg.engine.prototxt import read_net
    param.CopyFrom(read_net(str(path)))
    assert engine.Net.from_param(param, engine.TRAIN).phase == engine.TRAIN
    with pytest.raises(TypeError):
        engine.Net(str(path))
