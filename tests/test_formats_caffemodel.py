"""Binary caffemodel / solverstate reading and writing against BVLC Caffe's golden files."""

import glob
import os

import numpy as np
import pytest

from caffeseg.engine.blobproto import array_to_blobproto, blobproto_to_array, stored_shape
from caffeseg.engine.caffemodel import (CaffemodelError, layer_arrays, parse_caffemodel,
                               read_caffemodel, read_solverstate, write_caffemodel,
                               write_solverstate)
from caffeseg.engine.proto import caffe_pb2

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
LAYER_AND_NET_MODELS = sorted(glob.glob(os.path.join(GOLDEN, "layers", "*", "weights.caffemodel"))
                              + glob.glob(os.path.join(GOLDEN, "nets", "*", "weights.caffemodel")))
SOLVER_DIRS = sorted(glob.glob(os.path.join(GOLDEN, "solvers", "*")))
GRAY = os.path.join(GOLDEN, "nets", "fcn_alexnet_slim_gray")


def _assert_params_match(net, npz, prefix):
    """Every ``prefix:LAYER:I`` array in npz equals the model's blob exactly, and vice versa."""
    expected = {k: npz[k] for k in npz.files if k.startswith(prefix + ":")}
    seen = set()
    for name, arrays in layer_arrays(net).items():
        for i, array in enumerate(arrays):
            key = "%s:%s:%d" % (prefix, name, i)
            assert key in expected, "model blob %s missing from the golden npz" % key
            want = expected[key]
            np.testing.assert_array_equal(array.reshape(want.shape), want, err_msg=key)
            assert array.size == want.size
            seen.add(key)
    assert seen == set(expected), "golden params missing from the model: %s" % (set(expected) - seen)


@pytest.mark.parametrize("path", LAYER_AND_NET_MODELS,
                         ids=[os.path.relpath(p, GOLDEN) for p in LAYER_AND_NET_MODELS])
def test_golden_weights_equal_io_params(path):
    net = read_caffemodel(path)
    assert len(net.layer) > 0 and len(net.layers) == 0
    _assert_params_match(net, np.load(os.path.join(os.path.dirname(path), "io.npz")), "param")
    # New-format blobs carry their N-D shape: the arrays already have the golden shape.
    npz = np.load(os.path.join(os.path.dirname(path), "io.npz"))
    for name, arrays in layer_arrays(net).items():
        for i, array in enumerate(arrays):
            assert array.shape == npz["param:%s:%d" % (name, i)].shape


@pytest.mark.parametrize("case", SOLVER_DIRS, ids=[os.path.basename(d) for d in SOLVER_DIRS])
def test_golden_solver_models_and_state(case):
    trace = np.load(os.path.join(case, "trace.npz"))
    _assert_params_match(read_caffemodel(os.path.join(case, "init.caffemodel")), trace, "init")
    snap = read_caffemodel(os.path.join(case, "snap_iter_6.caffemodel"))
    # after:5 holds the parameters after the 6th (last) update, which the snapshot stores.
    for name, arrays in layer_arrays(snap).items():
        for i, array in enumerate(arrays):
            np.testing.assert_array_equal(array, trace["after:5:%s:%d" % (name, i)])

    state = read_solverstate(os.path.join(case, "snap_iter_6.solverstate"))
    assert state.iter == 6
    assert state.learned_net.endswith("snap_iter_6.caffemodel")
    param_shapes = [tuple(a.shape) for arrays in layer_arrays(snap).values() for a in arrays]
    history_shapes = [stored_shape(h) for h in state.history]
    # One history blob per learnable blob (Adam/AdaDelta keep a second set after the first).
    assert len(history_shapes) in (len(param_shapes), 2 * len(param_shapes))
    for k, shape in enumerate(history_shapes):
        assert shape == param_shapes[k % len(param_shapes)]


def test_sgd_momentum_history_is_the_last_update():
    """Caffe's SGD does W -= V, so the stored momentum V equals after:4 - after:5."""
    case = os.path.join(GOLDEN, "solvers", "sgd_step")
    trace = np.load(os.path.join(case, "trace.npz"))
    state = read_solverstate(os.path.join(case, "snap_iter_6.solverstate"))
    assert state.current_step == 2  # "step" policy: iter 5 // stepsize 2, as Caffe stored it
    learnable = [("conv1", 0), ("conv1", 1), ("up", 0), ("score", 0), ("score", 1)]
    for hist, (layer, i) in zip(state.history, learnable):
        v = blobproto_to_array(hist)
        step = trace["after:4:%s:%d" % (layer, i)] - trace["after:5:%s:%d" % (layer, i)]
        np.testing.assert_allclose(v, step, rtol=1e-4, atol=1e-6 * max(1.0, np.abs(v).max()))


def test_v1_caffemodel_upgrades_to_the_same_weights():
    new = read_caffemodel(os.path.join(GRAY, "weights.caffemodel"))
    old = read_caffemodel(os.path.join(GRAY, "weights_v1.caffemodel"))
    assert len(old.layers) == 0 and len(old.layer) > 0
    with_blobs = lambda net: [(l.name, l.type) for l in net.layer if len(l.blobs)]
    assert with_blobs(old) == with_blobs(new)
    new_arrays = layer_arrays(new)
    for layer in old.layer:
        if not len(layer.blobs):
            continue
        targets = new_arrays[layer.name]
        for i, bp in enumerate(layer.blobs):
            # Legacy 4-D blobs (bias 1x1x1xN) fit the N-D target shape by Caffe's rule.
            np.testing.assert_array_equal(
                blobproto_to_array(bp, target_shape=targets[i].shape), targets[i])
    _assert_params_match(old, np.load(os.path.join(GRAY, "io.npz")), "param")


def test_v1_layer_fields_are_upgraded():
    net = caffe_pb2.NetParameter(name="old")
    v1 = net.layers.add(name="conv1", type=caffe_pb2.V1LayerParameter.CONVOLUTION,
                        bottom=["data"], top=["conv1"])
    v1.blobs_lr.extend([1, 2])
    v1.weight_decay.extend([1, 0])
    v1.param.extend(["w_shared"])
    v1.blob_share_mode.append(caffe_pb2.V1LayerParameter.PERMISSIVE)
    v1.convolution_param.num_output = 3
    v1.blobs.add(num=3, channels=1, height=2, width=2).data.extend(range(12))
    net.layers.add(name="loss", type=caffe_pb2.V1LayerParameter.SOFTMAX_LOSS, loss_weight=[2])
    data = net.layers.add(name="data", type=caffe_pb2.V1LayerParameter.DATA)
    data.data_param.scale = 0.5
    data.data_param.mirror = True
    data.data_param.source = "db"
    parsed = parse_caffemodel(net.SerializeToString())
    conv, loss, data = parsed.layer
    assert (conv.type, loss.type, data.type) == ("Convolution", "SoftmaxWithLoss", "Data")
    assert [p.lr_mult for p in conv.param] == [1, 2]
    assert [p.decay_mult for p in conv.param] == [1, 0]
    assert conv.param[0].name == "w_shared" and not conv.param[1].HasField("name")
    assert conv.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert conv.convolution_param.num_output == 3
    assert stored_shape(conv.blobs[0]) == (3, 1, 2, 2)
    assert list(loss.loss_weight) == [2]
    # Deprecated transform fields move into transform_param.
    assert data.transform_param.scale == 0.5 and data.transform_param.mirror
    assert not data.data_param.HasField("scale") and data.data_param.source == "db"


def test_write_read_round_trip(tmp_path):
    net = caffe_pb2.NetParameter(name="rt")
    layer = net.layer.add(name="fc", type="InnerProduct")
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    layer.blobs.extend([array_to_blobproto(w), array_to_blobproto(np.ones(3, np.float32))])
    path = str(tmp_path / "m.caffemodel")
    write_caffemodel(path, net)
    back = read_caffemodel(path)
    assert back == net
    np.testing.assert_array_equal(layer_arrays(back)["fc"][0], w)


def test_solverstate_round_trip(tmp_path):
    state = caffe_pb2.SolverState(iter=42, learned_net="x_iter_42.caffemodel", current_step=3)
    state.history.extend([array_to_blobproto(np.full((2, 3), 0.25, np.float32))])
    path = str(tmp_path / "x.solverstate")
    write_solverstate(path, state)
    assert read_solverstate(path) == state


def test_large_caffemodel_over_64mb(tmp_path):
    """Protobuf's historical 64 MB default limit must not apply (Caffe allows 2 GiB)."""
    big = np.linspace(-1, 1, 17_000_000, dtype=np.float32)  # 68 MB of floats
    net = caffe_pb2.NetParameter(name="big")
    net.layer.add(name="fc", type="InnerProduct").blobs.append(array_to_blobproto(big))
    path = str(tmp_path / "big.caffemodel")
    write_caffemodel(path, net)
    assert os.path.getsize(path) > 64 * 2 ** 20
    arrays = layer_arrays(read_caffemodel(path))
    np.testing.assert_array_equal(arrays["fc"][0], big)


# ------------------------------------------------------------ bad input

def test_missing_file():
    with pytest.raises(CaffemodelError, match="file not found"):
        read_caffemodel("/nonexistent/x.caffemodel")


def test_empty_file(tmp_path):
    path = tmp_path / "e.caffemodel"
    path.write_bytes(b"")
    with pytest.raises(CaffemodelError, match="empty"):
        read_caffemodel(str(path))


def test_truncated_caffemodel(tmp_path):
    raw = open(os.path.join(GRAY, "weights.caffemodel"), "rb").read()
    path = tmp_path / "t.caffemodel"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CaffemodelError, match=r"t\.caffemodel.*truncated or corrupt"):
        read_caffemodel(str(path))


@pytest.mark.parametrize("garbage", [
    b"this is plainly not a protobuf file\n" * 10,
    b"\x08\x05",                              # parses: one unknown varint field
    bytes(range(256)),
    b"name: \"net\"\nlayer { name: \"a\" }\n",  # a prototxt passed as caffemodel
])
def test_garbage_caffemodel(tmp_path, garbage):
    path = tmp_path / "g.caffemodel"
    path.write_bytes(garbage)
    with pytest.raises(CaffemodelError) as err:
        read_caffemodel(str(path))
    assert "g.caffemodel" in str(err.value)
    assert "not a" in str(err.value)


def test_hdf5_caffemodel_is_explained(tmp_path):
    path = tmp_path / "h.caffemodel.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(CaffemodelError, match="HDF5"):
        read_caffemodel(str(path))


def test_caffemodel_read_as_solverstate_is_rejected():
    with pytest.raises(CaffemodelError, match="not a Caffe solver state"):
        read_solverstate(os.path.join(GRAY, "weights.caffemodel"))


def test_solverstate_read_as_caffemodel_is_rejected():
    with pytest.raises(CaffemodelError, match="not a"):
        read_caffemodel(os.path.join(GOLDEN, "solvers", "adam", "snap_iter_6.solverstate"))


def test_both_layer_and_layers_is_rejected():
    net = caffe_pb2.NetParameter()
    net.layer.add(name="a", type="ReLU")
    net.layers.add(name="b", type=caffe_pb2.V1LayerParameter.RELU)
    with pytest.raises(CaffemodelError, match="both"):
        parse_caffemodel(net.SerializeToString(), "both.caffemodel")


def test_unknown_top_level_field_with_layers_only_warns():
    net = caffe_pb2.NetParameter(name="fork")
    net.layer.add(name="a", type="ReLU")
    raw = net.SerializeToString() + b"\xb8\x06\x01"  # field 103, varint: a fork's extra field
    with pytest.warns(UserWarning, match="103"):
        parsed = parse_caffemodel(raw, "fork.caffemodel")
    assert [l.name for l in parsed.layer] == ["a"]
