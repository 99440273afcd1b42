"""Pretrained weights whose first convolution has other input channels than the dataset:
the refusal names every way out, with the channel surgery of the direction that fits."""
import numpy as np

from caffeseg.engine.proto import caffe_pb2
from caffeseg.jobs.model_job import check_pretrained
from tests.web_helpers import write_weights


def net_with_conv1():
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="conv1", type="Convolution")
    layer.convolution_param.num_output = 4
    return net


def weights(tmp_path, channels):
    path = tmp_path / ("w%d.caffemodel" % channels)
    write_weights(path, {"conv1": [np.zeros((4, channels, 3, 3), np.float32), np.zeros(4, np.float32)]})
    return str(path)


def test_gray_weights_on_rgb_data_offer_gray_to_rgb(tmp_path):
    path = weights(tmp_path, 1)
    [problem] = check_pretrained(net_with_conv1(), [path], data_channels=3)["mismatches"]
    assert "the data has 3 channels (RGB), the weights in %s were made for 1 channel (gray)" % path in problem
    rgb = str(tmp_path / "w1_rgb.caffemodel")
    assert "(1) convert them on the server with 'caffeseg surgery gray-to-rgb %s %s' and give w1_rgb.caffemodel" % (path, rgb) in problem
    assert "rgb-to-gray" not in problem
    assert "Pretrained Models tab" in problem and "channel conversion L" in problem


def test_rgb_weights_on_gray_data_offer_rgb_to_gray(tmp_path):
    path = weights(tmp_path, 3)
    [problem] = check_pretrained(net_with_conv1(), [path], data_channels=1)["mismatches"]
    assert "'caffeseg surgery rgb-to-gray %s %s'" % (path, str(tmp_path / "w3_gray.caffemodel")) in problem
    assert "channel conversion RGB" in problem


def test_matching_channels_pass(tmp_path):
    report = check_pretrained(net_with_conv1(), [weights(tmp_path, 3)], data_channels=3)
    assert report["matched"] == ["conv1"] and report["mismatches"] == []
