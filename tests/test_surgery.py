"""Net surgery on small synthetic classifiers with the real layer names."""
import os

import numpy as np
import pytest

from caffeseg.engine.blobproto import array_to_blobproto, blobproto_to_array
from caffeseg.engine.caffemodel import read_caffemodel, write_caffemodel
from caffeseg.engine.proto import caffe_pb2
from caffeseg.jobs import surgery

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_NETS = os.path.join(ROOT, "tests", "golden", "nets")

# Slim AlexNet: the real grouping (conv2/4/5 in 2 groups) and a 6x6 pool5, smaller widths.
ALEXNET = [("conv1", (16, 3, 11, 11)), ("conv2", (32, 8, 5, 5)), ("conv3", (48, 32, 3, 3)),
           ("conv4", (48, 24, 3, 3)), ("conv5", (32, 24, 3, 3)),
           ("fc6", (64, 32 * 6 * 6)), ("fc7", (64, 64)), ("fc8", (10, 64))]
VGG16 = [(name, (w, c, 3, 3)) for name, w, c in [
    ("conv1_1", 4, 3), ("conv1_2", 4, 4), ("conv2_1", 8, 4), ("conv2_2", 8, 8), ("conv3_1", 8, 8),
    ("conv3_2", 8, 8), ("conv3_3", 8, 8), ("conv4_1", 16, 8), ("conv4_2", 16, 16), ("conv4_3", 16, 16),
    ("conv5_1", 16, 16), ("conv5_2", 16, 16), ("conv5_3", 16, 16)]] + [
    ("fc6", (24, 16 * 7 * 7)), ("fc7", (24, 24)), ("fc8", (5, 24))]


def random_params(spec, seed=0):
    rng = np.random.RandomState(seed)
    return {name: (rng.randn(*shape).astype(np.float32), rng.randn(shape[0]).astype(np.float32))
            for name, shape in spec}


def legacy_blob(array):
    """A V1-era BlobProto: num/channels/height/width, 2-D IP weights stored as 1x1xOxK."""
    dims = (1,) * (4 - array.ndim) + array.shape
    bp = caffe_pb2.BlobProto()
    bp.num, bp.channels, bp.height, bp.width = dims
    bp.data.extend(array.ravel().tolist())
    return bp


def write_classifier(path, params, legacy=False):
    net = caffe_pb2.NetParameter()
    net.name = "classifier"
    if legacy:  # V1 layout (NetParameter.layers, enum types), like bvlc_alexnet.caffemodel
        for name, (weight, bias) in params.items():
            layer = net.layers.add()
            layer.name = name
            layer.type = (caffe_pb2.V1LayerParameter.INNER_PRODUCT if name.startswith("fc")
                          else caffe_pb2.V1LayerParameter.CONVOLUTION)
            layer.blobs.extend([legacy_blob(weight), legacy_blob(bias)])
        relu = net.layers.add()
        relu.name, relu.type = "relu1", caffe_pb2.V1LayerParameter.RELU
    else:
        for name, (weight, bias) in params.items():
            layer = net.layer.add()
            layer.name = name
            layer.type = "InnerProduct" if name.startswith("fc") else "Convolution"
            layer.blobs.extend([array_to_blobproto(weight), array_to_blobproto(bias)])
    write_caffemodel(str(path), net)


def stored(path):
    return {l.name: [blobproto_to_array(b) for b in l.blobs] for l in read_caffemodel(str(path)).layer}


@pytest.mark.parametrize("legacy", [False, True])
def test_alexnet_to_fcn(tmp_path, legacy):
    params = random_params(ALEXNET)
    write_classifier(tmp_path / "alexnet.caffemodel", params, legacy=legacy)
    report = surgery.alexnet_to_fcn(tmp_path / "alexnet.caffemodel", tmp_path / "fcn.caffemodel", num_classes=2)
    out = stored(tmp_path / "fcn.caffemodel")

    assert set(out) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "upscore"}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        np.testing.assert_array_equal(out[name][0], params[name][0])
        np.testing.assert_array_equal(out[name][1], params[name][1])
    assert out["fc6"][0].shape == (64, 32, 6, 6) and out["fc7"][0].shape == (64, 64, 1, 1)
    # channel c, row y, column x of the conv kernel is input c*36 + y*6 + x of the IP (Caffe's NCHW flatten)
    assert out["fc6"][0][5, 3, 2, 4] == params["fc6"][0][5, 3 * 36 + 2 * 6 + 4]
    np.testing.assert_array_equal(out["fc7"][0][:, :, 0, 0], params["fc7"][0])
    np.testing.assert_array_equal(out["fc6"][1], params["fc6"][1])
    assert out["upscore"][0].shape == (2, 1, 63, 63) and len(out["upscore"]) == 1

    assert report.dropped == ["fc8"]
    assert report.left_to_filler == ["score_fr"]
    assert report.reshaped["fc6"] == ((64, 1152), (64, 32, 6, 6))
    text = report.summary()
    assert "reshaped   fc6" in text and "dropped    fc8" in text and "filler     score_fr" in text


def test_vgg16_to_fcn8s_and_gray_option(tmp_path):
    params = random_params(VGG16, seed=1)
    write_classifier(tmp_path / "vgg.caffemodel", params)
    report = surgery.vgg16_to_fcn8s(tmp_path / "vgg.caffemodel", tmp_path / "fcn8s.caffemodel",
                                    num_classes=3, gray=True)
    out = stored(tmp_path / "fcn8s.caffemodel")
    assert out["fc6"][0].shape == (24, 16, 7, 7)
    assert out["fc7"][0].shape == (24, 24, 1, 1)
    np.testing.assert_allclose(out["conv1_1"][0], params["conv1_1"][0].sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(out["conv5_3"][0], params["conv5_3"][0])
    assert out["upscore8_seg"][0].shape == (3, 1, 16, 16)
    assert out["upscore2_seg"][0].shape == (3, 1, 4, 4)
    assert "fc8" not in out and report.dropped == ["fc8"]
    assert report.left_to_filler == ["score_fr_seg", "score_pool4_seg", "score_pool3_seg"]


def test_fc6_as_convolution_computes_the_same_as_the_inner_product(tmp_path):
    """Independent check of the layout with OpenCV's Caffe importer: IP on a 32x6x6 map == 6x6 conv."""
    import cv2
    params = random_params(ALEXNET, seed=2)
    write_classifier(tmp_path / "alexnet.caffemodel", params)
    surgery.alexnet_to_fcn(tmp_path / "alexnet.caffemodel", tmp_path / "fcn.caffemodel")
    conv_w, conv_b = stored(tmp_path / "fcn.caffemodel")["fc6"]
    x = np.random.RandomState(3).randn(1, 32, 6, 6).astype(np.float32)

    def run(layer_type, param_text, blobs):
        proto = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 32 dim: 6 dim: 6 } } }\n'
                 'layer { name: "fc6" type: "%s" bottom: "x" top: "y" %s }\n' % (layer_type, param_text))
        (tmp_path / "n.prototxt").write_text(proto)
        model = caffe_pb2.NetParameter()
        layer = model.layer.add(name="fc6", type=layer_type)
        layer.blobs.extend([array_to_blobproto(b) for b in blobs])
        write_caffemodel(str(tmp_path / "n.caffemodel"), model)
        net = cv2.dnn.readNetFromCaffe(str(tmp_path / "n.prototxt"), str(tmp_path / "n.caffemodel"))
        net.setInput(x)
        return net.forward().reshape(-1)

    ip = run("InnerProduct", "inner_product_param { num_output: 64 }", params["fc6"])
    conv = run("Convolution", "convolution_param { num_output: 64 kernel_size: 6 }", [conv_w, conv_b])
    np.testing.assert_allclose(conv, ip, rtol=1e-4, atol=1e-4)


def test_bilinear_kernel_equals_caffes_filler():
    """Caffe's bilinear filler values, as stored by BVLC Caffe in the golden slim nets."""
    golden = np.load(os.path.join(GOLDEN_NETS, "fcn_alexnet_slim_gray", "io.npz"))["param:upscore:0"]
    np.testing.assert_allclose(surgery.bilinear_upsampling_weight(2, 63), golden, atol=1e-7)
    golden8 = np.load(os.path.join(GOLDEN_NETS, "fcn8s_slim", "io.npz"))
    for key in golden8.files:
        if key.startswith("param:upscore") and key.endswith(":0"):
            weight = golden8[key]
            size = weight.shape[-1]
            for i in range(weight.shape[0]):  # diagonal = the per-class bilinear kernel
                np.testing.assert_allclose(weight[i, i if weight.shape[1] > 1 else 0],
                                           surgery.bilinear_kernel(size), atol=1e-7)
    np.testing.assert_allclose(surgery.bilinear_kernel(4)[0] / surgery.bilinear_kernel(4)[0].max(),
                               [1 / 3, 1, 1, 1 / 3])


def test_rgb_to_gray_conv1(tmp_path):
    params = random_params(ALEXNET, seed=4)
    write_classifier(tmp_path / "rgb.caffemodel", params, legacy=True)
    report = surgery.rgb_to_gray_conv1(tmp_path / "rgb.caffemodel", tmp_path / "gray.caffemodel")
    out = stored(tmp_path / "gray.caffemodel")
    assert out["conv1"][0].shape == (16, 1, 11, 11)
    np.testing.assert_allclose(out["conv1"][0][:, 0], params["conv1"][0].sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(out["conv1"][1].ravel(), params["conv1"][1])  # other blobs untouched (legacy layout kept)
    np.testing.assert_array_equal(out["conv2"][0], params["conv2"][0])
    np.testing.assert_array_equal(out["fc6"][0].reshape(64, -1), params["fc6"][0])
    assert report.reshaped == {"conv1": ((16, 3, 11, 11), (16, 1, 11, 11))}
    # a gray image replicated to 3 channels gives the same response with RGB and summed filters
    rng = np.random.RandomState(5)
    patch = rng.rand(11, 11).astype(np.float32)
    rgb = np.sum(params["conv1"][0][0] * np.stack([patch] * 3))
    assert np.sum(out["conv1"][0][0, 0] * patch) == pytest.approx(rgb, rel=1e-5)


def test_gray_to_rgb_conv1(tmp_path):
    params = random_params(ALEXNET, seed=6)
    gray_w = params["conv1"][0][:, :1].copy()
    params["conv1"] = (gray_w, params["conv1"][1])
    write_classifier(tmp_path / "gray.caffemodel", params)
    report = surgery.gray_to_rgb_conv1(tmp_path / "gray.caffemodel", tmp_path / "rgb.caffemodel")
    out = stored(tmp_path / "rgb.caffemodel")
    assert out["conv1"][0].shape == (16, 3, 11, 11)
    for c in range(3):  # each channel carries a third of the gray filter
        np.testing.assert_allclose(out["conv1"][0][:, c], gray_w[:, 0] / 3, rtol=1e-6)
    np.testing.assert_array_equal(out["conv2"][0], params["conv2"][0])
    assert report.reshaped == {"conv1": ((16, 1, 11, 11), (16, 3, 11, 11))}
    # a gray patch stored as three equal channels: the RGB net answers as the gray net did
    patch = np.random.RandomState(7).rand(11, 11).astype(np.float32)
    gray = np.sum(gray_w[0, 0] * patch)
    assert np.sum(out["conv1"][0][0] * np.stack([patch] * 3)) == pytest.approx(gray, rel=1e-5)


def test_channel_surgery_in_the_wrong_direction_names_the_right_one(tmp_path):
    params = random_params(ALEXNET, seed=8)
    write_classifier(tmp_path / "rgb.caffemodel", params)
    with pytest.raises(surgery.SurgeryError, match="no convolution with 1 input channel: .*already for "
                                                    "3-channel data.*rgb-to-gray"):
        surgery.gray_to_rgb_conv1(tmp_path / "rgb.caffemodel", tmp_path / "out.caffemodel")
    params["conv1"] = (params["conv1"][0][:, :1].copy(), params["conv1"][1])
    write_classifier(tmp_path / "gray.caffemodel", params)
    with pytest.raises(surgery.SurgeryError, match="no convolution with 3 input channels: .*already for "
                                                    "1-channel data.*gray-to-rgb"):
        surgery.rgb_to_gray_conv1(tmp_path / "gray.caffemodel", tmp_path / "out.caffemodel")


def test_errors_name_the_file_and_layer(tmp_path):
    params = random_params(ALEXNET)
    del params["fc7"]
    write_classifier(tmp_path / "broken.caffemodel", params)
    with pytest.raises(surgery.SurgeryError, match=r"broken.caffemodel: no weights for layer\(s\) fc7"):
        surgery.alexnet_to_fcn(tmp_path / "broken.caffemodel", tmp_path / "out.caffemodel")
    params = random_params(ALEXNET)
    params["fc6"] = (np.zeros((64, 32 * 35), np.float32), params["fc6"][1])
    write_classifier(tmp_path / "odd.caffemodel", params)
    with pytest.raises(surgery.SurgeryError, match="fc6.*not a square kernel"):
        surgery.alexnet_to_fcn(tmp_path / "odd.caffemodel", tmp_path / "out.caffemodel")
    params = random_params(ALEXNET)
    params["conv1"] = (np.zeros((16, 1, 11, 11), np.float32), params["conv1"][1])
    write_classifier(tmp_path / "gray.caffemodel", params)
    with pytest.raises(surgery.SurgeryError, match="conv1.*needs 3"):
        surgery.alexnet_to_fcn(tmp_path / "gray.caffemodel", tmp_path / "out.caffemodel", gray=True)
    assert not (tmp_path / "out.caffemodel").exists()


@pytest.mark.parametrize("gray", [False, True])
def test_surgery_output_loads_into_fcn_alexnet_with_the_engine(tmp_path, gray):
    """The converted file fills prototxt/fcn_alexnet.prototxt (at the synthetic widths) by name."""
    from caffeseg import engine
    from caffeseg.engine.prototxt import format_message
    from test_prototxt_nets import derive
    params = random_params(ALEXNET, seed=6)
    write_classifier(tmp_path / "alexnet.caffemodel", params, legacy=True)
    surgery.alexnet_to_fcn(tmp_path / "alexnet.caffemodel", tmp_path / "fcn.caffemodel", gray=gray)
    widths = {name: shape[0] for name, shape in ALEXNET}
    net_param = derive("fcn_alexnet", "deploy", [1, 1 if gray else 3, 40, 50])
    for layer in net_param.layer:
        if layer.name in widths:
            layer.convolution_param.num_output = widths[layer.name]
    (tmp_path / "deploy.prototxt").write_text(format_message(net_param))
    net = engine.Net(str(tmp_path / "deploy.prototxt"), engine.TEST, weights=str(tmp_path / "fcn.caffemodel"))
    np.testing.assert_array_equal(net.params["fc6"][0].data.reshape(64, -1), params["fc6"][0])
    expected_conv1 = params["conv1"][0].sum(axis=1, keepdims=True) if gray else params["conv1"][0]
    np.testing.assert_allclose(net.params["conv1"][0].data, expected_conv1, rtol=1e-6)
    np.testing.assert_allclose(net.params["upscore"][0].data, surgery.bilinear_upsampling_weight(2, 63))
    assert net.forward()["score"].shape == (1, 2, 40, 50)
