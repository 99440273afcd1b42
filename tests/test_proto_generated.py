"""The generated bindings are reproducible, and the schema agrees with files Caffe wrote.

The byte-level checks below are the practical proof that field numbers, wire types (packed or
not) and field order of our ``caffe.proto`` are Caffe's: a message we build from the decoded
values serializes to exactly the bytes BVLC Caffe wrote.
"""

import glob
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from caffeseg.engine.blobproto import array_to_blobproto, blobproto_to_array
from caffeseg.engine.caffemodel import read_caffemodel, read_solverstate
from caffeseg.engine.datum import array_to_datum
from caffeseg.engine.lmdb_io import LmdbReader
from caffeseg.engine.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(ROOT, "engine", "proto")
GOLDEN = os.path.join(ROOT, "tests", "golden")
PINNED_GRPCIO_TOOLS = "1.85.1"  # keep in step with the Makefile's `make proto` and pyproject


def test_generated_bindings_are_reproducible(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (pip install grpcio-tools==%s)"
                    % PINNED_GRPCIO_TOOLS)
    from importlib.metadata import version
    assert version("grpcio-tools") == PINNED_GRPCIO_TOOLS, (
        "the committed caffe_pb2.py was generated with grpcio-tools %s" % PINNED_GRPCIO_TOOLS)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + PROTO_DIR,
                    "--python_out=" + str(tmp_path), os.path.join(PROTO_DIR, "caffe.proto")],
                   check=True, capture_output=True)
    with open(tmp_path / "caffe_pb2.py", "rb") as fresh, \
            open(os.path.join(PROTO_DIR, "caffe_pb2.py"), "rb") as committed:
        assert fresh.read() == committed.read(), (
            "engine/proto/caffe_pb2.py is stale: run `make proto` and commit the result")


def _field(message, name):
    return message.DESCRIPTOR.fields_by_name[name]


@pytest.mark.parametrize("message,name,number,default", [
    (caffe_pb2.NetParameter, "layer", 100, None),
    (caffe_pb2.NetParameter, "layers", 2, None),
    (caffe_pb2.NetParameter, "force_backward", 5, False),
    (caffe_pb2.LayerParameter, "blobs", 7, None),
    (caffe_pb2.LayerParameter, "convolution_param", 106, None),
    (caffe_pb2.ParamSpec, "lr_mult", 3, 1.0),
    (caffe_pb2.ParamSpec, "decay_mult", 4, 1.0),
    (caffe_pb2.BlobProto, "shape", 7, None),
    (caffe_pb2.BlobProto, "data", 5, None),
    (caffe_pb2.Datum, "float_data", 6, None),
    (caffe_pb2.DataParameter, "backend", 8, caffe_pb2.DataParameter.LEVELDB),
    (caffe_pb2.FillerParameter, "type", 1, "constant"),
    (caffe_pb2.PoolingParameter, "pool", 1, caffe_pb2.PoolingParameter.MAX),
    (caffe_pb2.SolverParameter, "type", 40, "SGD"),
    (caffe_pb2.SolverParameter, "solver_type", 30, caffe_pb2.SolverParameter.SGD),
    (caffe_pb2.SolverParameter, "random_seed", 20, -1),
    (caffe_pb2.SolverParameter, "clip_gradients", 35, -1.0),
    (caffe_pb2.SolverParameter, "regularization_type", 29, "L2"),
    (caffe_pb2.SolverParameter, "momentum2", 39, pytest.approx(0.999)),
    (caffe_pb2.SolverState, "history", 3, None),
    (caffe_pb2.V1LayerParameter, "blobs_lr", 7, None),
    (caffe_pb2.V1LayerParameter, "param", 1001, None),
])
def test_key_field_numbers_and_defaults(message, name, number, default):
    field = _field(message, name)
    assert field.number == number
    if default is not None:
        assert field.default_value == default


def test_packed_flags_match_caffe():
    # caffe.proto is proto2: only fields declared [packed = true] are packed (BlobProto data/diff,
    # shape dims); Datum.float_data is not, so the files we write have the bytes Caffe writes.
    for message, name, packed in [(caffe_pb2.BlobProto, "data", True),
                                  (caffe_pb2.BlobProto, "diff", True),
                                  (caffe_pb2.BlobProto, "double_data", True),
                                  (caffe_pb2.BlobShape, "dim", True),
                                  (caffe_pb2.Datum, "float_data", False)]:
        options = _field(message, name).GetOptions()
        assert options.packed is packed, "%s.%s" % (message.__name__, name)


CAFFEMODELS = sorted(glob.glob(os.path.join(GOLDEN, "**", "*.caffemodel"), recursive=True))


@pytest.mark.parametrize("path", CAFFEMODELS, ids=[os.path.relpath(p, GOLDEN) for p in CAFFEMODELS])
def test_caffe_written_models_reserialize_byte_identically(path):
    with open(path, "rb") as f:
        raw = f.read()
    net = read_caffemodel(path, upgrade=False)
    assert net.SerializeToString() == raw
    for layers in (net.layer, net.layers):
        for layer in layers:
            for bp in layer.blobs:
                if bp.HasField("num") or bp.HasField("width"):
                    continue  # legacy blobs are read, never written
                rebuilt = array_to_blobproto(blobproto_to_array(bp))
                assert rebuilt.SerializeToString() == bp.SerializeToString()


def test_caffe_written_solverstates_reserialize_byte_identically():
    paths = glob.glob(os.path.join(GOLDEN, "solvers", "*", "*.solverstate"))
    assert paths
    for path in paths:
        with open(path, "rb") as f:
            assert read_solverstate(path).SerializeToString() == f.read(), path


@pytest.mark.parametrize("name", ["features16", "rgb8", "labels"])
def test_caffe_written_datums_are_reproduced_byte_identically(name):
    case = os.path.join(GOLDEN, "data", "lmdb_transform")
    expected = np.load(os.path.join(case, "expected.npz"))[name]
    with LmdbReader(os.path.join(case, name)) as db:
        for i, (key, value) in enumerate(db.items()):
            array = expected[i].astype(np.uint16) if name == "features16" else expected[i]
            assert array_to_datum(array, label=i).SerializeToString() == value, key
