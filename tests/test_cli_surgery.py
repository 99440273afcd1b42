"""`caffeseg surgery`: the channel surgeries in both directions, human output and --json."""
import json

import numpy as np

from caffeseg import cli
from caffeseg.engine.blobproto import array_to_blobproto, blobproto_to_array
from caffeseg.engine.caffemodel import read_caffemodel, write_caffemodel
from caffeseg.engine.proto import caffe_pb2


def write_conv1(path, channels):
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="conv1", type="Convolution")
    weight = np.arange(4 * channels * 3 * 3, dtype=np.float32).reshape(4, channels, 3, 3)
    layer.blobs.add().CopyFrom(array_to_blobproto(weight))
    layer.blobs.add().CopyFrom(array_to_blobproto(np.ones(4, np.float32)))
    write_caffemodel(str(path), net)
    return weight


def test_gray_to_rgb_prints_the_report_as_text(tmp_path, capsys):
    weight = write_conv1(tmp_path / "gray.caffemodel", 1)
    code = cli.main(["surgery", "gray-to-rgb", str(tmp_path / "gray.caffemodel"), str(tmp_path / "rgb.caffemodel")])
    out = capsys.readouterr().out
    assert code == 0
    assert "reshaped   conv1" in out and "4x1x3x3 -> 4x3x3x3" in out and "SurgeryReport(" not in out
    conv1 = read_caffemodel(str(tmp_path / "rgb.caffemodel")).layer[0]
    np.testing.assert_allclose(blobproto_to_array(conv1.blobs[0])[:, 2], weight[:, 0] / 3, rtol=1e-6)


def test_rgb_to_gray_json(tmp_path, capsys):
    write_conv1(tmp_path / "rgb.caffemodel", 3)
    code = cli.main(["--json", "surgery", "rgb-to-gray", str(tmp_path / "rgb.caffemodel"), str(tmp_path / "g.caffemodel")])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["reshaped"]["conv1"] == [[4, 3, 3, 3], [4, 1, 3, 3]]


def test_wrong_direction_is_one_line_naming_the_other_surgery(tmp_path, capsys):
    write_conv1(tmp_path / "rgb.caffemodel", 3)
    code = cli.main(["surgery", "gray-to-rgb", str(tmp_path / "rgb.caffemodel"), str(tmp_path / "x.caffemodel")])
    err = capsys.readouterr().err
    assert code != 0 and "rgb-to-gray" in err and "Traceback" not in err
