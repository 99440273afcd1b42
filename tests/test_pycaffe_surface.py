"""pycaffe's public surface on the engine: how ``import caffe`` resolves, NetSpec, coord_map,
draw, the Net batching/hook/HDF5 methods, backward without forward, Python-layer exceptions,
io.oversample / array_to_datum, Classifier, Detector and the process-wide helpers.

Expected values are worked out by hand in each test (closed forms), never taken from the
code under test.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from caffeseg import engine
from caffeseg.engine import caffe_shim
from caffeseg.engine.net import WeightsMismatchError

ROOT = Path(__file__).resolve().parents[1]
caffe = caffe_shim.install()
L, P = caffe.layers, caffe.params


def _run_script(tmp_path, code, pythonpath=()):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ)
    # the proxy as an installed package would be: after whatever the user put on PYTHONPATH
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in pythonpath] + [str(ROOT / "engine" / "pycaffe_proxy"), str(ROOT)])
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


# ---------------------------------------------------------------------------------------------
# import caffe
# ---------------------------------------------------------------------------------------------
def test_plain_script_import_caffe_gets_the_engine_and_its_submodules(tmp_path):
    out = _run_script(tmp_path, """
        import caffe
        from caffeseg import engine
        import caffe.io, caffe.draw, caffe.coord_map, caffe.net_spec
        from caffe.proto import caffe_pb2
        from caffe.pycaffe import Net
        from caffeseg.engine import caffe_shim
        assert caffe is engine
        assert caffe.io is engine.io and caffe.draw is engine.draw and caffe.net_spec is engine.net_spec
        assert caffe_pb2 is engine.proto.caffe_pb2 and Net is engine.Net
        assert not caffe_shim.real_pycaffe_available()
        print("ok")
        """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_real_pycaffe_earlier_on_the_path_wins_over_the_proxy(tmp_path):
    fake = tmp_path / "realcaffe" / "caffe"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("IS_REAL = True\n")
    out = _run_script(tmp_path, """
        from caffeseg.engine import caffe_shim
        from caffeseg.jobs import scheduler
        assert caffe_shim.real_pycaffe_available() and scheduler._real_pycaffe_importable()
        import caffe
        print(getattr(caffe, "IS_REAL", False))
        """, pythonpath=[tmp_path / "realcaffe"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_the_proxy_is_not_taken_for_real_pycaffe_by_the_scheduler(tmp_path):
    out = _run_script(tmp_path, """
        from caffeseg.jobs import scheduler
        print(scheduler._real_pycaffe_importable())
        """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_process_wide_helpers():
    assert caffe.__version__ == "1.0.0"
    assert caffe.has_nccl() is True  # engine.parallel: torch.distributed (tests/test_parallel.py)
    caffe.NCCL(None, b"uid")  # constructing it joins no process group
    assert caffe.NCCL.new_uid().startswith(b"tcp://127.0.0.1:")
    assert "Convolution" in caffe.layer_type_list() and "Python" in caffe.layer_type_list()
    assert caffe.layer_type_list() == sorted(caffe.layer_type_list())
    caffe.set_solver_count(3)
    caffe.set_solver_rank(2)
    assert (caffe.solver_count(), caffe.solver_rank()) == (3, 2)
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)
    with pytest.raises(ValueError):
        caffe.set_solver_count(0)
    caffe.set_multiprocess(True)
    caffe.set_multiprocess(False)
    timer = caffe.Timer()
    timer.start()
    timer.stop()
    first = timer.ms
    assert first >= 0.0 and timer.ms == first  # stopped: the value stays
    with pytest.raises(ValueError, match="init_log level"):
        caffe.init_log(7)


def test_log_writes_an_info_record(caplog):
    caffe.init_log(0)
    with caplog.at_level("INFO", logger="caffeseg.engine"):
        caffe.log("hello from pycaffe")
    assert "hello from pycaffe" in caplog.text


# ---------------------------------------------------------------------------------------------
# NetSpec
# ---------------------------------------------------------------------------------------------
def test_netspec_names_params_and_in_place():
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[2, 1, 4, 4]), dict(dim=[2, 1, 1, 1])], ntop=2)
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=5, pad=1,
                           param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)])
    n.relu = L.ReLU(n.conv, in_place=True)
    pool = L.Pooling(n.relu, pool=P.Pooling.AVE, kernel_size=2)   # unnamed: Pooling1
    n.loss = L.SoftmaxWithLoss(L.InnerProduct(pool, num_output=3), n.label, loss_weight=0.5,
                               include=dict(phase=caffe.TRAIN))
    net = n.to_proto()
    layers = {layer.name: layer for layer in net.layer}
    assert [layer.name for layer in net.layer] == ["data", "conv", "relu", "Pooling1", "InnerProduct1", "loss"]
    assert list(layers["data"].top) == ["data", "label"]
    assert [list(s.dim) for s in layers["data"].dummy_data_param.shape] == [[2, 1, 4, 4], [2, 1, 1, 1]]
    conv = layers["conv"].convolution_param
    # scalars given for repeated fields become one-element lists
    assert list(conv.kernel_size) == [3] and list(conv.pad) == [1] and conv.num_output == 5
    assert [(p.lr_mult, p.decay_mult) for p in layers["conv"].param] == [(1, 1), (2, 0)]
    assert list(layers["relu"].bottom) == list(layers["relu"].top) == ["conv"]
    assert layers["Pooling1"].pooling_param.pool == caffe.proto.caffe_pb2.PoolingParameter.AVE
    assert list(layers["Pooling1"].bottom) == ["conv"]
    assert list(layers["InnerProduct1"].top) == ["InnerProduct1"]
    loss = layers["loss"]
    assert list(loss.bottom) == ["InnerProduct1", "label"] and list(loss.loss_weight) == [0.5]
    assert loss.include[0].phase == caffe.TRAIN
    # the spec builds on the engine
    built = caffe.Net(net, caffe.TRAIN)
    assert built.blobs["Pooling1"].shape == (2, 5, 3, 3)  # (4 - 2)/1 + 1: stride defaults to 1


def test_netspec_zero_tops_anonymous_to_proto_and_type_error():
    data = L.DummyData(shape=dict(dim=[3]), ntop=2)
    silence = L.Silence(*data, ntop=0)
    assert isinstance(silence, caffe.net_spec.Function)
    net = caffe.to_proto(data[0], data[1])
    assert [(layer.name, list(layer.top)) for layer in net.layer] == [("DummyData1", ["DummyData1", "DummyData2"])]
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(data, ntop=0)
    n = caffe.NetSpec()
    n["x"] = data[0]
    assert n.x is data[0] and list(n.tops) == ["x"]
    with pytest.raises(AttributeError):
        n.missing


# ---------------------------------------------------------------------------------------------
# coord_map
# ---------------------------------------------------------------------------------------------
def test_coord_maps_by_hand():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 32, 32]))
    n.conv = L.Convolution(n.data, kernel_size=3, pad=100, num_output=2)
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.up = L.Deconvolution(n.pool, convolution_param=dict(kernel_size=4, stride=2, num_output=2))
    # conv: a = 1, b = pad - (k-1)/2 = 100 - 1 = 99
    ax, a, b = caffe.coord_map.coord_map_from_to(n.conv, n.data)
    assert ax == 1 and a == 1 and b == -99  # from conv back to data: the inverse shift
    # pool k=2 s=2: a = 1/2, b = (0 - 1/2)/2 = -1/4; deconv k=4 s=2: a = 2, b = 3/2
    ax, a, b = caffe.coord_map.coord_map_from_to(n.up, n.conv)
    np.testing.assert_allclose(a, 1.0)
    np.testing.assert_allclose(b, -(2 * -0.25 + 1.5))  # up = 2*(pool) + 1.5, pool = conv/2 - 1/4
    n.crop = caffe.coord_map.crop(n.up, n.data)
    crop = n.to_proto().layer[-1]
    assert crop.type == "Crop" and list(crop.bottom) == ["up", "data"]
    # up coordinate = conv + 1 = data + 99 + 1: crop 100 from the upsampled map
    assert crop.crop_param.axis == 2 and list(crop.crop_param.offset) == [100]
    built = caffe.Net(n.to_proto(), caffe.TEST)
    assert built.blobs["crop"].shape == (1, 2, 32, 32)


def test_coord_map_refuses_unmapped_and_negative_offsets():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.ip = L.InnerProduct(n.data, num_output=4)
    with pytest.raises(RuntimeError, match="Could not compute map"):
        caffe.coord_map.coord_map_from_to(n.ip, n.data)
    n.small = L.Convolution(n.data, kernel_size=3, pad=0, num_output=1)  # 6x6: small = data - 1
    assert list(caffe.coord_map.crop(n.data, n.small).fn.params["crop_param"]["offset"]) == [1]
    with pytest.raises(AssertionError, match="negative offset"):
        caffe.coord_map.crop(n.small, n.data)  # would need data before the small map's origin


# ---------------------------------------------------------------------------------------------
# draw
# ---------------------------------------------------------------------------------------------
def _small_spec():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4, param=[dict(lr_mult=2), dict(lr_mult=0)])
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    net = n.to_proto()
    net.name = "small"
    return net


def test_draw_graph_structure_and_labels():
    net = _small_spec()
    graph = caffe.draw.get_pydot_graph(net, "TB", display_lrm=True)
    labels = sorted(node.get_name() for node in graph.get_nodes())
    # 4 layers + 3 blobs (data, conv, pool)
    assert len(labels) == 7
    assert '"conv (Convolution) kernel size: 3 stride: 1 pad: 0 lr mult: 2.0, 0.0"' in labels
    assert '"pool (Pooling MAX) kernel size: 2 stride: 2 pad: 0"' in labels
    edges = graph.get_edges()
    assert len(edges) == 7  # one per bottom and per top: data 0+1, conv, relu and pool 1+1 each
    conv_out = [e for e in edges if e.get_source().startswith('"conv (') and e.get_destination() == "conv"]
    assert conv_out and conv_out[0].get("label") == "4"
    with pytest.raises(ValueError, match="do not have a learning rate multiplier"):
        caffe.draw.get_layer_lr_mult(net.layer[2])
    assert "digraph small" in caffe.draw.draw_net(net, "LR", ext="raw").decode()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed (make graphviz-deps)")
def test_draw_net_to_file_renders_with_graphviz(tmp_path):
    target = tmp_path / "net.svg"
    caffe.draw.draw_net_to_file(_small_spec(), str(target), rankdir="LR", phase=caffe.TEST)
    text = target.read_text()
    # LR layout: the label's parts are lines of their own
    assert text.lstrip().startswith("<?xml") and ">(Pooling MAX)<" in text and ">pool<" in text


# ---------------------------------------------------------------------------------------------
# Net methods
# ---------------------------------------------------------------------------------------------
IP_NET = """
name: "ip" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "out"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 0.5 } } }
"""


def _ip_net(tmp_path, text=IP_NET, phase=None):
    path = tmp_path / "ip.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), caffe.TEST if phase is None else phase)


def test_forward_all_batches_pads_and_drops_padding(tmp_path):
    net = _ip_net(tmp_path)
    W, bias = net.params["ip"][0].data.copy(), net.params["ip"][1].data.copy()
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    out = net.forward_all(data=x)
    assert set(out) == {"out"} and out["out"].shape == (5, 2)
    np.testing.assert_allclose(out["out"], x @ W.T + bias, rtol=1e-5)
    with_data = net.forward_all(blobs=["data"], data=x)
    np.testing.assert_array_equal(with_data["data"], x)
    # the last batch held sample 4 and one zero row
    np.testing.assert_array_equal(net.blobs["data"].data, np.stack([x[4], np.zeros(3, np.float32)]))
    batches = list(net._batch({"data": x}))
    assert [b["data"].shape[0] for b in batches] == [2, 2, 2]


def test_forward_backward_all_returns_input_diffs(tmp_path):
    net = _ip_net(tmp_path)
    W = net.params["ip"][0].data.copy()
    x = np.ones((3, 3), np.float32)
    top_diff = np.array([[1, 0], [0, 1], [2, 3]], np.float32)
    outs, diffs = net.forward_backward_all(data=x, out=top_diff)
    assert outs["out"].shape == (3, 2)
    np.testing.assert_allclose(diffs["data"], top_diff @ W, rtol=1e-5)


def test_backward_without_forward_uses_current_blobs(tmp_path):
    net = _ip_net(tmp_path)
    W = net.params["ip"][0].data.copy()
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    net.blobs["data"].data[...] = x
    net.blobs["out"].diff[...] = np.array([[1, -1], [0.5, 2]], np.float32)
    diffs = net.backward()  # no forward ever ran
    np.testing.assert_allclose(diffs["data"], net.blobs["out"].diff @ W, rtol=1e-5)
    # dW = top_diff^T x, db = sum of top diffs
    np.testing.assert_allclose(net.params["ip"][0].diff, net.blobs["out"].diff.T @ x, rtol=1e-5)
    np.testing.assert_allclose(net.params["ip"][1].diff, [1.5, 1.0], rtol=1e-6)
    assert set(net.backward(start="ip", end="ip")) == {"data"}  # end's bottoms


def test_clear_param_diffs_zeroes_in_place(tmp_path):
    net = _ip_net(tmp_path)
    net.forward(data=np.ones((2, 3), np.float32))
    net.blobs["out"].diff[...] = 1
    net.backward()
    view = net.params["ip"][0].diff
    assert np.abs(view).sum() > 0
    net.clear_param_diffs()
    assert not view.any() and not net.params["ip"][1].diff.any()


def test_hooks_run_around_each_layer_in_order(tmp_path):
    net = _ip_net(tmp_path)
    seen = []
    net.before_forward(lambda i: seen.append(("bf", i)))
    net.after_forward(lambda i: seen.append(("af", i)))
    net.before_backward(lambda i: seen.append(("bb", i)))
    net.after_backward(lambda i: seen.append(("ab", i)))
    net.forward()
    net.backward()
    assert seen == [("bf", 0), ("af", 0), ("bf", 1), ("af", 1), ("bb", 1), ("ab", 1), ("bb", 0), ("ab", 0)]


def test_index_views(tmp_path):
    net = _ip_net(tmp_path)
    assert list(net.blobs) == ["data", "out"] and net._blobs == [net.blobs["data"], net.blobs["out"]]
    assert net._inputs == [0] and net._outputs == [1]
    assert net._bottom_ids(1) == [0] and net._top_ids(1) == [1] and net._bottom_ids(0) == []
    assert list(net.layer_dict) == ["data", "ip"] and net.layer_dict["ip"].type == "InnerProduct"
    net.blobs["data"].data[...] = 1
    loss = net._forward(0, 1)
    assert loss == 0.0  # no loss layer
    np.testing.assert_allclose(net.blobs["out"].data, net.params["ip"][0].data.sum(1)[None].repeat(2, 0) + 0.5,
                               rtol=1e-5)


SHARED_NET = """
name: "shared"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
  inner_product_param { num_output: 3 bias_term: false weight_filler { type: "gaussian" std: 1 } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
  inner_product_param { num_output: 3 bias_term: false weight_filler { type: "gaussian" std: 1 } } }
"""


def test_hdf5_round_trip_layout_and_shared_params(tmp_path):
    import h5py
    net = _ip_net(tmp_path, SHARED_NET)
    path = tmp_path / "w.h5"
    net.save_hdf5(str(path))
    with h5py.File(path, "r") as f:
        assert sorted(f["data"]) == ["a", "b", "data"]
        assert sorted(f["data/a"]) == ["0"] and sorted(f["data/b"]) == []  # b's weight is a's
        np.testing.assert_array_equal(f["data/a/0"][()], net.params["a"][0].data)
        assert "diff" not in f
    other = _ip_net(tmp_path, SHARED_NET)
    other.params["a"][0].data[...] = 0
    other.load_hdf5(str(path))
    np.testing.assert_array_equal(other.params["a"][0].data, net.params["a"][0].data)
    np.testing.assert_array_equal(other.params["b"][0].data, net.params["a"][0].data)
    net.save_hdf5(str(path), write_diff=True)
    with h5py.File(path, "r") as f:
        assert sorted(f["diff/b"]) == ["0"]


def test_load_hdf5_refuses_a_shape_mismatch(tmp_path):
    import h5py
    net = _ip_net(tmp_path)
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data/ip/0", data=np.zeros((4, 3), np.float32))
    with pytest.raises(WeightsMismatchError, match="layer 'ip'"):
        net.load_hdf5(str(path))
    with h5py.File(path, "w") as f:
        f.create_dataset("data/ip/0", data=np.zeros((2, 3), np.float32))
        f.create_dataset("data/ip/1", data=np.zeros((2,), np.float32))
        f.create_dataset("data/ip/2", data=np.zeros((2,), np.float32))
    with pytest.raises(WeightsMismatchError, match="incompatible number of blobs"):
        net.load_hdf5(str(path))


def test_layer_reshape_from_python(tmp_path):
    net = _ip_net(tmp_path)
    layer = net.layers[1]
    net.blobs["data"].reshape(4, 3)
    layer.reshape([net.blobs["data"]], [net.blobs["out"]])
    assert net.blobs["out"].shape == (4, 2)
    layer.setup([net.blobs["data"]], [net.blobs["out"]])  # weights are kept
    assert net.params["ip"][0].shape == (2, 3)


# ---------------------------------------------------------------------------------------------
# Python layers
# ---------------------------------------------------------------------------------------------
USER_MODULE = '''
import caffe


class LabelError(Exception):
    pass


class Raiser(caffe.Layer):
    def setup(self, bottom, top):
        if self.param_str == "setup":
            raise ValueError("bad param_str")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        if self.param_str == "custom":
            raise LabelError("label 7 out of range")
        if self.param_str == "oserror":
            raise OSError(2, "No such file", "missing.txt")
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff
'''


def _python_net(tmp_path, param_str):
    (tmp_path / "user_raiser.py").write_text(USER_MODULE)
    text = f"""
    name: "py" force_backward: true
    layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
    layer {{ name: "mine" type: "Python" bottom: "data" top: "out"
      python_param {{ module: "user_raiser" layer: "Raiser" param_str: "{param_str}" }} }}
    """
    path = tmp_path / "py.prototxt"
    path.write_text(text)
    return str(path)


def test_python_layer_exception_keeps_its_type_and_names_layer_file_line(tmp_path):
    with pytest.raises(ValueError) as info:
        caffe.Net(_python_net(tmp_path, "setup"), caffe.TEST)
    assert type(info.value) is ValueError
    message = str(info.value)
    assert "layer 'mine' (Python): setup raised ValueError: bad param_str" in message
    assert "user_raiser.py, line 12" in message

    net = caffe.Net(_python_net(tmp_path, "custom"), caffe.TEST)
    with pytest.raises(Exception) as info:
        net.forward()
    assert type(info.value).__name__ == "LabelError"
    assert "layer 'mine'" in str(info.value) and "label 7 out of range" in str(info.value)
    assert "user_raiser.py, line 19" in str(info.value)


def test_python_layer_oserror_keeps_its_arguments(tmp_path):
    net = caffe.Net(_python_net(tmp_path, "oserror"), caffe.TEST)
    with pytest.raises(OSError) as info:
        net.forward()
    assert info.value.errno == 2 and info.value.filename == "missing.txt"
    if sys.version_info >= (3, 11):
        assert any("layer 'mine'" in note for note in info.value.__notes__)


def test_python_layer_backward_without_forward_and_layer_calls(tmp_path):
    net = caffe.Net(_python_net(tmp_path, ""), caffe.TEST)
    net.blobs["out"].diff[...] = 3
    net.backward()
    np.testing.assert_array_equal(net.blobs["data"].diff, np.full((2, 3), 6, np.float32))
    layer = net.layer_dict["mine"]
    net.blobs["data"].reshape(5, 3)
    layer.reshape([net.blobs["data"]], [net.blobs["out"]])  # the user's reshape
    assert net.blobs["out"].shape == (5, 3)
    layer.setup([net.blobs["data"]], [net.blobs["out"]])


# ---------------------------------------------------------------------------------------------
# io, Classifier, Detector, Solver.share_weights
# ---------------------------------------------------------------------------------------------
def test_oversample_corners_center_and_mirrors():
    image = np.arange(5 * 6 * 2, dtype=np.float32).reshape(5, 6, 2)
    crops = caffe.io.oversample([image, image + 1000], (3, 4))
    assert crops.shape == (20, 3, 4, 2) and crops.dtype == np.float32
    # corners: (0,0) (0,2) (2,0) (2,2); center starts at (int(2.5-1.5), int(3-2)) = (1, 1)
    starts = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    for k, (y, x) in enumerate(starts):
        np.testing.assert_array_equal(crops[k], image[y:y + 3, x:x + 4])
        np.testing.assert_array_equal(crops[5 + k], image[y:y + 3, x:x + 4][:, ::-1])
        np.testing.assert_array_equal(crops[10 + k], image[y:y + 3, x:x + 4] + 1000)


def test_array_to_datum_leaves_label_unset_without_one():
    unlabeled = caffe.io.array_to_datum(np.ones((3, 2, 2), np.uint8))
    labeled = caffe.io.array_to_datum(np.ones((3, 2, 2), np.uint8), label=0)
    assert not unlabeled.HasField("label") and labeled.HasField("label") and labeled.label == 0
    assert len(unlabeled.SerializeToString()) < len(labeled.SerializeToString())


DEPLOY = """
name: "cls"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def _deploy(tmp_path):
    proto = tmp_path / "deploy.prototxt"
    proto.write_text(DEPLOY)
    weights = tmp_path / "w.caffemodel"
    caffe.Net(str(proto), caffe.TEST).save(str(weights))
    return str(proto), str(weights)


def _softmax_rows(W, b, rows):
    z = rows @ W.T + b
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_classifier_predict_center_crop_and_oversample(tmp_path):
    proto, weights = _deploy(tmp_path)
    clf = caffe.Classifier(proto, weights, image_dims=(6, 6), mean=np.array([0.1, 0.2, 0.3]),
                           raw_scale=2.0, channel_swap=(2, 1, 0))
    W, b = clf.params["ip"][0].data, clf.params["ip"][1].data
    rng = np.random.RandomState(0)
    images = [rng.rand(6, 6, 3).astype(np.float32) for _ in range(3)]  # already 6x6: resize is identity

    def net_input(crop):  # H×W×K -> K×H×W, swap channels, raw scale, minus mean
        x = crop.transpose(2, 0, 1)[[2, 1, 0]] * 2.0
        return (x - np.array([0.1, 0.2, 0.3], np.float32)[:, None, None]).ravel()

    center = clf.predict(images, oversample=False)
    expected = _softmax_rows(W, b, np.stack([net_input(im[1:5, 1:5]) for im in images]))
    np.testing.assert_allclose(center, expected, rtol=1e-4, atol=1e-6)

    ten = clf.predict(images, oversample=True)
    starts = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    per_image = []
    for im in images:
        crops = [im[y:y + 4, x:x + 4] for y, x in starts]
        crops += [c[:, ::-1] for c in crops]
        per_image.append(_softmax_rows(W, b, np.stack([net_input(c) for c in crops])).mean(0))
    np.testing.assert_allclose(ten, np.stack(per_image), rtol=1e-4, atol=1e-6)


def test_detector_classifies_windows(tmp_path):
    from PIL import Image
    proto, weights = _deploy(tmp_path)
    det = caffe.Detector(proto, weights)
    pixels = np.random.RandomState(1).randint(0, 256, (8, 8, 3)).astype(np.uint8)
    image_path = tmp_path / "im.png"
    Image.fromarray(pixels).save(image_path)
    windows = [np.array([0, 0, 4, 4]), np.array([2, 3, 6, 7])]
    found = det.detect_windows([(str(image_path), windows)])
    W, b = det.params["ip"][0].data, det.params["ip"][1].data
    image = pixels.astype(np.float32) / 255.0
    rows = np.stack([image[w[0]:w[2], w[1]:w[3]].transpose(2, 0, 1).ravel() for w in windows])
    expected = _softmax_rows(W, b, rows)
    assert [d["filename"] for d in found] == [str(image_path)] * 2
    np.testing.assert_allclose(np.stack([d["prediction"] for d in found]), expected, rtol=1e-4, atol=1e-6)
    assert tuple(det.crop_dims) == (4, 4, 3)


def test_solver_share_weights(tmp_path):
    train = tmp_path / "train.prototxt"
    train.write_text(IP_NET)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{train}" base_lr: 0.1 lr_policy: "fixed" max_iter: 1 snapshot_prefix: "{tmp_path}/s"\n')
    solver = caffe.SGDSolver(str(solver_file))
    other = _ip_net(tmp_path)
    solver.share_weights(other)
    solver.net.params["ip"][0].data[...] = 7
    assert (other.params["ip"][0].data == 7).all()


# ---------------------------------------------------------------------------------------------
# io.resize_image / load_image: pycaffe's skimage / scipy arithmetic, worked out by hand
# ---------------------------------------------------------------------------------------------
def test_resize_image_upsampling_blends_the_border_with_zero_like_skimage_constant_mode():
    image = np.array([[[2.0], [6.0]]], np.float32)  # 1 x 2 x 1, scaled to [0, 1] inside: [0, 1]
    # width 2 -> 4: input coordinates (o + 0.5)/2 - 0.5 = -0.25, 0.25, 0.75, 1.25; beyond the
    # ends the scaled image is 0: [0.75*0, 0.75*0 + 0.25*1, 0.25*0 + 0.75*1, 0.75*1 + 0.25*0]
    expected = np.array([0.0, 0.25, 0.75, 0.75]) * 4 + 2
    out = caffe.io.resize_image(image, (1, 4))
    assert out.shape == (1, 4, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0], expected, rtol=1e-6)
    nearest = caffe.io.resize_image(image, (1, 4), interp_order=0)  # round(-0.25..1.25) = 0, 0, 1, 1
    np.testing.assert_allclose(nearest[0, :, 0], [2, 2, 6, 6])
    np.testing.assert_array_equal(caffe.io.resize_image(np.full((3, 3, 3), 5.0), (2, 7)), np.full((2, 7, 3), 5.0))
    with pytest.raises(ValueError, match="interp_order 3"):
        caffe.io.resize_image(image, (1, 4), interp_order=3)


def test_resize_image_shrinking_blurs_first():
    row = np.array([0.0, 1.0, 0.0, 0.0])  # already in [0, 1]
    image = np.stack([row, row]).reshape(2, 4, 1)
    out = caffe.io.resize_image(image, (2, 2))
    # width 4 -> 2: Gaussian sigma (2 - 1)/2 = 0.5, radius int(4*0.5 + 0.5) = 2, zero-extended
    taps = np.exp(-2.0 * np.arange(-2, 3) ** 2)
    taps /= taps.sum()
    blurred = np.convolve(np.pad(row, 2), taps, mode="valid")
    # then sampled at (o + 0.5)*2 - 0.5 = 0.5 and 2.5 (the height axis is unchanged)
    expected = [(blurred[0] + blurred[1]) / 2, (blurred[2] + blurred[3]) / 2]
    np.testing.assert_allclose(out[0, :, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[1, :, 0], expected, rtol=1e-6)


def test_resize_image_other_channel_counts_align_corners_like_ndimage_zoom():
    image = np.array([[[0, 10], [4, 20], [8, 60]]], np.float32)  # 1 x 3 x 2
    out = caffe.io.resize_image(image, (1, 5))
    # coordinates o*(3-1)/(5-1) = 0, 0.5, 1, 1.5, 2: plain linear interpolation, no blur
    np.testing.assert_allclose(out[0, :, 0], [0, 2, 4, 6, 8])
    np.testing.assert_allclose(out[0, :, 1], [10, 15, 20, 40, 60])


def test_load_image_color_gray_and_16_bit(tmp_path):
    from PIL import Image
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    color = caffe.io.load_image(str(tmp_path / "rgb.png"))
    assert color.shape == (2, 2, 3) and color.dtype == np.float32
    np.testing.assert_allclose(color, rgb / 255.0)
    gray = caffe.io.load_image(str(tmp_path / "rgb.png"), color=False)
    np.testing.assert_allclose(gray[:, :, 0], [[0.2125, 0.7154], [0.0721, 1.0]], rtol=1e-5)
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "deep.png")
    deep = caffe.io.load_image(str(tmp_path / "deep.png"))
    assert deep.shape == (1, 2, 3)
    np.testing.assert_allclose(deep[0, :, 0], [0.0, 1.0])


def test_transformer_order_of_operations_and_its_inverse():
    t = caffe.io.Transformer({"data": (1, 3, 2, 2)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    image = np.random.RandomState(3).rand(2, 2, 3).astype(np.float32)
    x = t.preprocess("data", image)
    # K×H×W, BGR, ×255, minus the per-channel mean (given in the swapped order), ×0.5
    expected = (image.transpose(2, 0, 1)[[2, 1, 0]] * 255 - np.array([10, 20, 30])[:, None, None]) * 0.5
    assert x.dtype == np.float32 and x.shape == (3, 2, 2)
    np.testing.assert_allclose(x, expected, rtol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", x[None]), image, rtol=1e-5, atol=1e-6)


def test_transformer_resizes_an_elementwise_mean_of_another_size():
    t = caffe.io.Transformer({"data": (1, 1, 1, 4)})
    t.set_mean("data", np.array([[[2.0, 6.0]]]))  # 1 x 1 x 2 mean for a 1 x 1 x 4 input
    # as resize_image: [2, 6] -> [2, 3, 5, 5] (see the resize test above)
    np.testing.assert_allclose(t.mean["data"][0, 0], [2, 3, 5, 5], rtol=1e-6)
    with pytest.raises(ValueError, match="mean has 2 channels"):
        t.set_mean("data", np.array([1.0, 2.0]))


def test_missing_files_raise_runtime_error_as_pycaffe(tmp_path):
    from caffeseg.engine.net import NetError
    with pytest.raises(RuntimeError, match="Could not open file .*nope.prototxt") as info:
        caffe.Net(str(tmp_path / "nope.prototxt"), caffe.TEST)
    assert isinstance(info.value, NetError)  # and the engine's own error class
    path = tmp_path / "ip.prototxt"
    path.write_text(IP_NET)
    with pytest.raises(RuntimeError, match="Could not open file .*none.caffemodel"):
        caffe.Net(str(path), caffe.TEST, weights=str(tmp_path / "none.caffemodel"))


def test_draw_without_graphviz_says_what_to_install(monkeypatch):
    monkeypatch.setattr(caffe.draw.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        caffe.draw.draw_net(_small_spec(), "LR", ext="png")
    assert caffe.draw.draw_net(_small_spec(), "LR", ext="raw").startswith(b"digraph")


LOSS_NET = """
name: "loss" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "data" bottom: "target" top: "loss" }
"""


def test_forward_all_keeps_one_scalar_per_batch_and_strips_only_sample_rows(tmp_path):
    net = _ip_net(tmp_path, LOSS_NET)
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    out = net.forward_all(blobs=["data"], data=x, target=np.zeros_like(x))
    # batches [x0 x1], [x2 x3], [x4 0]: Euclidean loss sum((d - t)^2) / 2 / batch size
    losses = [float((x[i:i + 2] ** 2).sum()) / 4 for i in (0, 2)] + [float((x[4] ** 2).sum()) / 4]
    np.testing.assert_allclose(out["loss"], losses, rtol=1e-6)
    np.testing.assert_array_equal(out["data"], x)
