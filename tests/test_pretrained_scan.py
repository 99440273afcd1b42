"""Uploaded caffemodels: layer names read by streaming the protobuf wire format (never the whole
file), and the upload written straight into its store folder."""
import glob
import io
import os

import numpy as np
import pytest

from caffeseg.engine.caffemodel import read_caffemodel
from caffeseg.engine.proto import caffe_pb2
from caffeseg.jobs import pretrained

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = sorted(glob.glob(os.path.join(HERE, "golden", "nets", "*", "weights*.caffemodel")))

NET = 'name: "up"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n' \
      'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }\n'


class CountingFile(io.FileIO):
    bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data

    def readinto(self, b):
        n = super().readinto(b)
        self.bytes_read += n or 0
        return n


def test_golden_models_have_v1_and_current_layers():
    assert len(GOLDEN) >= 4 and any(p.endswith("weights_v1.caffemodel") for p in GOLDEN)


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: os.path.relpath(p, HERE))
def test_scan_matches_read_caffemodel(path):
    model = read_caffemodel(path)
    expected = [(layer.name, len(layer.blobs)) for layer in model.layer]
    assert pretrained.scan_caffemodel_layers(path) == expected
    with CountingFile(path) as f:
        pretrained.scan_caffemodel_layers(f)
    assert f.bytes_read < os.path.getsize(path) / 20


def test_scan_reads_kilobytes_of_a_big_file(tmp_path):
    from web_helpers import write_weights
    path = tmp_path / "big.caffemodel"
    write_weights(path, {"conv%d" % i: [np.ones((64, 64, 16, 16), np.float32), np.zeros(64, np.float32)]
                         for i in range(4)})
    size = os.path.getsize(path)
    assert size > 16 << 20
    with CountingFile(str(path)) as f:
        assert pretrained.scan_caffemodel_layers(f) == [("conv%d" % i, 2) for i in range(4)]
    assert f.bytes_read < 4096


def test_scan_reads_v0_layers_inside_v1(tmp_path):
    net = caffe_pb2.NetParameter(name="old")
    v1 = net.layers.add()
    v1.layer.name = "conv_v0"
    v1.layer.blobs.add().data.extend([1.0, 2.0])
    net.layers.add(name="relu", type=caffe_pb2.V1LayerParameter.RELU)
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(net.SerializeToString())
    assert pretrained.scan_caffemodel_layers(str(path)) == [("conv_v0", 1), ("relu", 0)]


@pytest.mark.parametrize("data", [b"", b"\xff\xff not protobuf", b"\x89HDF\r\n\x1a\n" + b"\0" * 32,
                                  caffe_pb2.NetParameter(name="x").SerializeToString()])
def test_scan_refuses_what_is_not_a_caffemodel(tmp_path, data):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(data)
    with pytest.raises(ValueError):
        pretrained.scan_caffemodel_layers(str(path))


def test_scan_refuses_a_truncated_file(tmp_path):
    from web_helpers import write_weights
    path = tmp_path / "w.caffemodel"
    write_weights(path, {"conv": [np.ones((2, 1, 3, 3), np.float32)]})
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        pretrained.scan_caffemodel_layers(str(path))


class Storage:
    """What the web hands over: a werkzeug FileStorage-like object with ``save(file)``."""

    def __init__(self, data, seen=None):
        self.data, self.seen = data, seen

    def save(self, dst):
        if self.seen is not None:
            self.seen.append(os.path.dirname(dst.name))
        dst.write(self.data)


def test_upload_is_written_straight_into_its_store_folder(tmp_path):
    from caffeseg.web import pretrained_store
    from caffeseg.web.backend import BadRequest
    from web_helpers import write_weights
    src = tmp_path / "w.caffemodel"
    write_weights(src, {"conv": [np.ones((2, 1, 3, 3), np.float32)]})
    data = tmp_path / "data"
    seen = []
    entry = pretrained_store.save_upload(data, "mine", NET.encode(), Storage(src.read_bytes(), seen))
    folder = data / "pretrained" / "uploaded" / entry["id"]
    assert seen == [str(folder)]  # written in the final folder, not in a staging folder
    assert sorted(os.listdir(folder)) == ["info.json", "network.prototxt", "weights.caffemodel"]
    assert open(entry["weights"], "rb").read() == src.read_bytes() and entry["matched"] == ["conv"]
    assert sorted(os.listdir(data / "pretrained")) == ["uploaded"]
    with pytest.raises(BadRequest, match="readable"):
        pretrained_store.save_upload(data, "bad", NET.encode(), Storage(b"\xff\xff junk"))
    assert os.listdir(data / "pretrained" / "uploaded") == [entry["id"]]  # the refused one is gone
