"""Prototxt parsing/printing, Caffe's upgrades of legacy nets and solvers, clear errors."""

import glob
import os

import pytest

from caffeseg.engine.prototxt import (PrototxtError, format_message, parse_net, parse_solver, read_net,
                             read_solver)
from caffeseg.engine.proto import caffe_pb2

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
PROTOTXTS = sorted(glob.glob(os.path.join(GOLDEN, "**", "*.prototxt"), recursive=True))


def _is_solver(path):
    return os.path.basename(path) == "solver.prototxt"


@pytest.mark.parametrize("path", PROTOTXTS, ids=[os.path.relpath(p, GOLDEN) for p in PROTOTXTS])
def test_golden_prototxt_round_trips(path):
    if _is_solver(path):
        msg = read_solver(path)
        again = parse_solver(format_message(msg))
        assert again.type in ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
    else:
        msg = read_net(path)
        again = parse_net(format_message(msg))
        assert len(msg.layer) > 0
    assert again == msg
    assert format_message(again) == format_message(msg)


def test_net_fields_survive():
    net = read_net(os.path.join(GOLDEN, "solvers", "sgd_step", "net.prototxt"))
    conv = [l for l in net.layer if l.name == "conv1"][0]
    assert conv.type == "Convolution"
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert list(conv.convolution_param.kernel_size) == [3]
    assert conv.convolution_param.HasField("num_output")
    assert not conv.convolution_param.HasField("group")  # presence kept for proto2 rules


def test_solver_fields_and_snapshot_prefix(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "n.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\n')
    solver = read_solver(str(path))
    assert solver.base_lr == pytest.approx(0.01)
    assert solver.type == "SGD"  # schema default
    # Caffe: no snapshot_prefix -> solver path without its extension.
    assert solver.snapshot_prefix == str(tmp_path / "solver")
    snapdir = tmp_path / "snaps"
    snapdir.mkdir()
    path.write_text('snapshot_prefix: "%s"\nlr_policy: "fixed"\n' % snapdir)
    assert read_solver(str(path)).snapshot_prefix == os.path.join(str(snapdir), "solver")


@pytest.mark.parametrize("enum,name", [("SGD", "SGD"), ("NESTEROV", "Nesterov"),
                                       ("ADAGRAD", "AdaGrad"), ("RMSPROP", "RMSProp"),
                                       ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_enum_upgrade(enum, name):
    solver = parse_solver("solver_type: %s\nbase_lr: 0.1" % enum)
    assert solver.type == name
    assert not solver.HasField("solver_type")


def test_solver_type_and_type_together_is_an_error():
    with pytest.raises(PrototxtError, match="solver_type"):
        parse_solver('solver_type: ADAM\ntype: "Adam"', "s.prototxt")


def test_legacy_input_dim_becomes_input_layer():
    net = parse_net('name: "n"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 5\n'
                    'input_dim: 7\ninput: "aux"\ninput_dim: 2\ninput_dim: 1\ninput_dim: 1\n'
                    'input_dim: 1\nlayer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert len(net.input) == len(net.input_dim) == len(net.input_shape) == 0
    first = net.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["data", "aux"])
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 3, 5, 7], [2, 1, 1, 1]]
    assert net.layer[1].name == "r"


def test_legacy_input_shape_becomes_input_layer():
    net = parse_net('input: "data"\ninput_shape { dim: 2 dim: 10 }\n'
                    'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert net.layer[0].type == "Input"
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 10]


def test_legacy_input_without_shape_is_dropped():
    net = parse_net('input: "data"\nlayer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert [l.name for l in net.layer] == ["r"] and len(net.input) == 0


def test_legacy_input_dim_count_mismatch_is_clear():
    with pytest.raises(PrototxtError, match="4 input_dim values"):
        parse_net('input: "data"\ninput_dim: 1\ninput_dim: 3', "deploy.prototxt")


def test_batchnorm_with_three_params_is_frozen():
    net = parse_net('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" '
                    'param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 3 } param { } }')
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(0, 0)] * 3


V1_NET = '''
name: "v1"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "up" type: DECONVOLUTION bottom: "conv1" top: "up" blobs_lr: 0
         convolution_param { num_output: 2 kernel_size: 4 stride: 2 } }
layers { name: "d" type: DATA top: "x" data_param { source: "db" crop_size: 5 mean_file: "m" }
         include { phase: TRAIN } }
'''


def test_v1_prototxt_upgrade():
    net = parse_net(V1_NET)
    assert [(l.name, l.type) for l in net.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"),
        ("up", "Deconvolution"), ("d", "Data")]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(1, 1), (2, 0)]
    assert net.layer[3].param[0].lr_mult == 0
    data = net.layer[4]
    assert data.transform_param.crop_size == 5 and data.transform_param.mean_file == "m"
    assert not data.data_param.HasField("crop_size") and data.data_param.source == "db"
    assert data.include[0].phase == caffe_pb2.TRAIN
    assert len(net.layers) == 0


V0_NET = '''
name: "v0"
input: "data"
input_dim: 1 input_dim: 1 input_dim: 9 input_dim: 9
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2
                 biasterm: false blobs_lr: 1 weight_decay: 1
                 weight_filler { type: "gaussian" std: 0.01 } }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
         bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.1 beta: 0.5 }
         bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 5 } bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "fc" top: "fc" }
layers { layer { name: "loss" type: "softmax_loss" } bottom: "fc" bottom: "label" }
layers { layer { name: "d" type: "data" source: "db" batchsize: 4 meanfile: "m.binaryproto"
                 cropsize: 3 mirror: true scale: 0.5 } top: "x" }
'''


def test_v0_prototxt_upgrade():
    net = parse_net(V0_NET)
    assert [(l.name, l.type) for l in net.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("pool1", "Pooling"), ("norm1", "LRN"),
        ("fc", "InnerProduct"), ("drop", "Dropout"), ("loss", "SoftmaxWithLoss"), ("d", "Data")]
    conv = net.layer[1]
    assert list(conv.bottom) == ["data"]  # padding layer folded away
    cp = conv.convolution_param
    assert (list(cp.pad), list(cp.kernel_size), list(cp.stride)) == ([2], [3], [2])
    assert cp.num_output == 4 and cp.bias_term is False
    assert cp.weight_filler.type == "gaussian"
    assert conv.param[0].lr_mult == 1
    pool = net.layer[2].pooling_param
    assert (pool.pool, pool.kernel_size, pool.stride) == (caffe_pb2.PoolingParameter.AVE, 2, 2)
    lrn = net.layer[3].lrn_param
    assert (lrn.local_size, lrn.alpha, lrn.beta) == (3, pytest.approx(0.1), 0.5)
    assert net.layer[4].inner_product_param.num_output == 5
    assert net.layer[5].dropout_param.dropout_ratio == pytest.approx(0.3)
    data = net.layer[7]
    assert (data.data_param.source, data.data_param.batch_size) == ("db", 4)
    tp = data.transform_param
    assert (tp.mean_file, tp.crop_size, tp.mirror, tp.scale) == ("m.binaryproto", 3, True, 0.5)
    assert not data.data_param.HasField("mean_file")


def test_v0_padding_folds_only_into_conv_or_pool():
    with pytest.raises(PrototxtError, match='padding layer "p" feeds layer "r"'):
        parse_net('input: "data"\n'
                  'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "data" top: "p" }\n'
                  'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }', "v0.prototxt")


# ------------------------------------------------------------------ errors

def _error(text, source="fcn.prototxt", solver=False):
    with pytest.raises(PrototxtError) as info:
        (parse_solver if solver else parse_net)(text, source)
    return info.value


def test_unknown_field_names_location_and_suggests():
    err = _error('name: "x"\nlayer {\n  name: "c"\n  convolution_param {\n    kernal_size: 3\n'
                 '  }\n}\n')
    assert str(err).startswith("fcn.prototxt:5:5: ")
    assert (err.path, err.line, err.column) == ("fcn.prototxt", 5, 5)
    assert 'unknown field "kernal_size" in ConvolutionParameter' in err.message
    assert 'did you mean "kernel_size"' in err.message


def test_unknown_enum_value_suggests():
    err = _error('layer {\n  pooling_param { pool: MAXX }\n}')
    assert err.line == 2
    assert 'unknown value "MAXX"' in err.message and '"MAX"' in err.message


def test_solver_typo():
    err = _error('base_lr: 0.1\nmomentun: 0.9\n', "solver.prototxt", solver=True)
    assert str(err).startswith("solver.prototxt:2:1: ")
    assert 'unknown field "momentun" in SolverParameter (did you mean "momentum"?)' in str(err)


def test_repeated_singular_field():
    err = _error('name: "a"\nname: "b"\n')
    assert err.line == 2 and "more than once" in err.message


def test_syntax_error_has_location():
    err = _error('layer { name: "a" \n')
    assert err.line is not None and 'Expected "}"' in err.message
    err = _error('layer { name: conv1 }')
    assert (err.line, err.column) == (1, 15)
    assert err.message == 'expected a quoted string but found conv1 (write it as "conv1")'



def test_binary_file_as_prototxt(tmp_path):
    path = tmp_path / "weights.caffemodel"
    path.write_bytes(b"\x0a\x03abc\x82\x06\xff\xfe\x00")
    with pytest.raises(PrototxtError, match="not a text prototxt"):
        read_net(str(path))


def test_missing_prototxt_file():
    with pytest.raises(PrototxtError, match="nope.prototxt: file not found"):
        read_net("nope.prototxt")


def test_byte_order_mark_is_accepted():
    assert parse_net('\ufeffname: "bom"').name == "bom"


def test_v1_enum_type_in_current_layer_suggests_type_string():
    err = _error('layer {\n  name: "c"\n  type: CONVOLUTION\n}')
    assert err.line == 3
    assert 'write it as "Convolution"' in err.message


def test_v0_field_on_wrong_layer_type_warns():
    with pytest.warns(UserWarning, match='v0.prototxt: V0 field "num_output" is not used by '
                                         'V0 layer "r" of type "relu"'):
        net = parse_net('layers { layer { name: "r" type: "relu" num_output: 3 } '
                        'bottom: "x" top: "x" }', "v0.prototxt")
    assert net.layer[0].type == "ReLU"
