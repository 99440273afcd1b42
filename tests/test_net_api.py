"""The pycaffe surface of ``engine.Net``/``Blob``, weights I/O and the module-level names."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from caffeseg import engine
from caffeseg.engine.net import NetError, WeightsMismatchError

CONV_NET = """
name: "tiny"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: {c} dim: 6 dim: 6 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 2 kernel_size: 3 weight_filler {{ type: "gaussian" std: 1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "{head}" type: "Convolution" bottom: "pool1" top: "score"
        convolution_param {{ num_output: 2 kernel_size: 1 weight_filler {{ type: "gaussian" std: 1 }} }} }}
"""


def conv_net(tmp_path, c=1, head="score", phase=engine.TEST, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(CONV_NET.format(c=c, head=head))
    return engine.Net(str(path), phase)


def test_blob_views_are_writable_in_place(tmp_path):
    net = conv_net(tmp_path)
    blob = net.blobs["data"]
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 1, 6, 6)
    assert blob.shape == (1, 1, 6, 6) and blob.count == 36
    view = blob.data
    view[...] = 2.0
    assert float(blob.tensor.sum()) == 72.0
    with pytest.raises(AttributeError):
        blob.data = np.zeros((1, 1, 6, 6))
    blob.reshape(2, 1, 5, 5)
    assert blob.shape == (2, 1, 5, 5) and blob.diff.shape == (2, 1, 5, 5)


def test_forward_returns_outputs_and_reshape_propagates(tmp_path):
    net = conv_net(tmp_path)
    x = np.random.RandomState(0).randn(1, 1, 6, 6).astype(np.float32)
    out = net.forward(data=x)
    assert set(out) == {"score"} and out["score"].shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(net.blobs["data"].data, x)
    net.blobs["data"].reshape(3, 1, 10, 10)
    net.reshape()
    assert net.blobs["score"].shape == (3, 2, 4, 4)
    out = net.forward()
    assert out["score"].shape == (3, 2, 4, 4)
    with pytest.raises(ValueError, match="do not match the net inputs"):
        net.forward(other=x)


def test_forward_start_end_and_extra_blobs(tmp_path):
    net = conv_net(tmp_path)
    net.blobs["data"].data[...] = 1.0
    out = net.forward(end="relu1")
    assert set(out) == {"conv1"}
    net.blobs["pool1"].data[...] = 0.0
    out = net.forward(start="score", blobs=["pool1"])
    assert set(out) == {"score", "pool1"}
    np.testing.assert_allclose(out["score"], np.broadcast_to(net.params["score"][1].data[None, :, None, None],
                                                             (1, 2, 2, 2)))
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        net.forward(start="nope")


def test_backward_with_top_diff_keywords_and_ranges(tmp_path):
    text = CONV_NET.format(c=1, head="score").replace('name: "tiny"', 'name: "tiny" force_backward: true')
    path = tmp_path / "fb.prototxt"
    path.write_text(text)
    net = engine.Net(str(path), engine.TRAIN)
    net.forward(data=np.random.RandomState(1).randn(1, 1, 6, 6).astype(np.float32))
    diffs = net.backward(score=np.ones((1, 2, 2, 2), np.float32))
    assert set(diffs) == {"data"} and diffs["data"].any()
    with pytest.raises(ValueError, match="do not match the net outputs"):
        net.backward(nope=np.ones(1))
    # backward down to pool1 only: conv1 diffs do not change
    before = net.params["conv1"][0].diff.copy()
    net.backward(start="score", end="pool1")
    np.testing.assert_array_equal(net.params["conv1"][0].diff, before)


def test_pycaffe_collections(tmp_path):
    net = conv_net(tmp_path)
    assert list(net.params) == ["conv1", "score"]
    assert [b.shape for b in net.params["conv1"]] == [(2, 1, 3, 3), (2,)]
    assert net._layer_names == ["data", "conv1", "relu1", "pool1", "score"]
    assert [l.type for l in net.layers] == ["Input", "Convolution", "ReLU", "Pooling", "Convolution"]
    assert net.layer_dict["conv1"].blobs[0] is net.params["conv1"][0]
    assert net.inputs == ["data"] and net.outputs == ["score"]
    assert net.top_names["pool1"] == ["pool1"] and net.bottom_names["relu1"] == ["conv1"]


def test_save_then_copy_from_round_trip_and_unmatched_layers_keep_their_init(tmp_path):
    source = conv_net(tmp_path, name="a.prototxt")
    source.params["conv1"][0].data[...] = 0.25
    source.save(str(tmp_path / "a.caffemodel"))
    other = conv_net(tmp_path, head="new_head", name="b.prototxt")
    init = other.params["new_head"][0].data.copy()
    other.copy_from(str(tmp_path / "a.caffemodel"))
    assert (other.params["conv1"][0].data == 0.25).all()
    np.testing.assert_array_equal(other.params["new_head"][0].data, init)


def test_copy_from_rgb_weights_into_a_gray_net_explains_the_fix(tmp_path):
    rgb = conv_net(tmp_path, c=3, name="rgb.prototxt")
    rgb.save(str(tmp_path / "rgb.caffemodel"))
    gray = conv_net(tmp_path, c=1, name="gray.prototxt")
    with pytest.raises(WeightsMismatchError) as err:
        gray.copy_from(str(tmp_path / "rgb.caffemodel"))
    text = str(err.value)
    for part in ("rgb.caffemodel", "'conv1'", "(2, 3, 3, 3)", "(2, 1, 3, 3)", "grayscale", "RGB",
                 "sum over the RGB axis"):
        assert part in text, part


def test_copy_from_blob_count_mismatch_names_the_layer(tmp_path):
    net = conv_net(tmp_path, name="a.prototxt")
    net.save(str(tmp_path / "a.caffemodel"))
    path = tmp_path / "other.prototxt"
    path.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 6 dim: 6 } } }\n'
                    'layer { name: "conv1" type: "Convolution" bottom: "data" top: "c" '
                    'convolution_param { num_output: 2 kernel_size: 3 bias_term: false } }\n')
    other = engine.Net(str(path), engine.TEST)
    with pytest.raises(WeightsMismatchError, match="number of blobs for layer 'conv1'"):
        other.copy_from(str(tmp_path / "a.caffemodel"))


def test_share_with_aliases_parameter_values(tmp_path):
    train = conv_net(tmp_path, phase=engine.TRAIN, name="t.prototxt")
    test = conv_net(tmp_path, name="v.prototxt")
    test.share_with(train)
    train.params["conv1"][0].data[...] = 3.0
    assert (test.params["conv1"][0].data == 3.0).all()
    train.params["conv1"][0].tensor.sub_(1.0)  # the solver updates in place
    assert (test.params["conv1"][0].data == 2.0).all()


def test_module_names_and_proto_alias():
    from caffeseg.engine import caffe_shim
    caffe = caffe_shim.install()
    import sys
    assert sys.modules["caffe.proto.caffe_pb2"].NetParameter is engine.proto.caffe_pb2.NetParameter
    assert caffe.TRAIN == 0 and caffe.TEST == 1
    for name in ("Net", "Layer", "io", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
                 "get_solver", "SGDSolver", "AdamSolver"):
        assert getattr(engine, name) is not None, name


def test_set_mode_gpu_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        engine.set_mode_gpu()
    engine.set_mode_cpu()


def test_set_random_seed_makes_fillers_reproducible(tmp_path):
    engine.set_random_seed(5)
    a = conv_net(tmp_path).params["conv1"][0].data.copy()
    engine.set_random_seed(5)
    b = conv_net(tmp_path).params["conv1"][0].data.copy()
    np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_net_host_writes_reach_the_device(tmp_path):
    engine.set_mode_gpu()
    try:
        net = conv_net(tmp_path)
    finally:
        engine.set_mode_cpu()
    assert net.blobs["data"].tensor.is_cuda
    cpu = conv_net(tmp_path, name="cpu.prototxt")
    for name in net.params:
        for g, c in zip(net.params[name], cpu.params[name]):
            g.data[...] = c.data
    x = np.random.RandomState(3).randn(1, 1, 6, 6).astype(np.float32)
    net.blobs["data"].data[...] = x
    cpu.blobs["data"].data[...] = x
    np.testing.assert_allclose(net.forward()["score"], cpu.forward()["score"], rtol=1e-4, atol=1e-4)
    # device-side in-place updates (the solvers) show in the next host read, and back
    weights = net.params["conv1"][0]
    before = weights.data.copy()
    weights.tensor.sub_(1.0)
    np.testing.assert_allclose(weights.data, before - 1.0)
    weights.data[...] = 5.0
    assert float(weights.tensor.min()) == 5.0
    weights.grad_tensor.fill_(2.0)
    assert (weights.diff == 2.0).all()


def test_caffe_io_conversions_and_transformer(tmp_path):
    from caffeseg.engine import io
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(io.datum_to_array(io.array_to_datum(arr, label=3)), arr)
    values = np.random.RandomState(0).randn(2, 3, 4).astype(np.float32)
    np.testing.assert_array_equal(io.blobproto_to_array(io.array_to_blobproto(values)), values)
    t = io.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([1.0, 2.0, 3.0]))
    image = np.random.RandomState(1).rand(4, 5, 3).astype(np.float32)
    out = t.preprocess("data", image)
    assert out.shape == (3, 4, 5)
    np.testing.assert_allclose(out[0], image[:, :, 2] * 255 - 1.0, rtol=1e-6)
    np.testing.assert_allclose(t.deprocess("data", out), image, rtol=1e-5, atol=1e-6)
    from PIL import Image
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "im.png")
    loaded = io.load_image(str(tmp_path / "im.png"))
    assert loaded.shape == (4, 5, 3) and loaded.max() <= 1.0
    assert io.load_image(str(tmp_path / "im.png"), color=False).shape == (4, 5, 1)


def test_net_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
    with pytest.raises(NetError, match="bad.prototxt.*'r'.*unknown bottom blob 'x'"):
        engine.Net(str(path), engine.TEST)


def test_backward_through_the_autograd_engine_equals_torch_autograd_grad(tmp_path, monkeypatch):
    """The net calls autograd's engine directly (skipping torch.autograd.grad's checks); the
    public function, used when a torch lacks that entry point, must give the same diffs."""
    from caffeseg.engine import net as net_module
    text = CONV_NET.format(c=2, head="score").replace('name: "tiny"', 'name: "tiny" force_backward: true')
    (tmp_path / "fb.prototxt").write_text(text)
    rs = np.random.RandomState(4)
    x, top_diff = rs.randn(1, 2, 6, 6), rs.randn(1, 2, 2, 2)
    results = []
    for engine_entry in (net_module._run_backward, None):
        monkeypatch.setattr(net_module, "_run_backward", engine_entry)
        engine.set_random_seed(3)
        net = engine.Net(str(tmp_path / "fb.prototxt"), engine.TRAIN)
        net.forward(data=x)
        net.backward(score=top_diff)
        results.append([net.blobs["data"].diff.copy(), net.blobs["conv1"].diff.copy()]
                       + [b.diff.copy() for blobs in net.params.values() for b in blobs])
    assert net_module._run_backward is None or results[0][0].any()
    for direct, public in zip(*results):
        np.testing.assert_array_equal(direct, public)
