"""BlobProto <-> numpy, legacy 4-D dims and .binaryproto mean files."""

import os

import numpy as np
import pytest

from caffeseg.engine.blobproto import (BlobShapeError, array_to_blobproto, blobproto_to_array,
                              read_binaryproto, shape_equals, write_binaryproto)
from caffeseg.engine.proto import caffe_pb2

LMDB_CASE = os.path.join(os.path.dirname(__file__), "golden", "data", "lmdb_transform")


def _legacy(n, c, h, w, values):
    bp = caffe_pb2.BlobProto(num=n, channels=c, height=h, width=w)
    bp.data.extend(values)
    return bp


def test_legacy_bias_maps_onto_1d_target():
    bp = _legacy(1, 1, 1, 4, [1, 2, 3, 4])
    assert blobproto_to_array(bp).shape == (1, 1, 1, 4)  # reshape mode: 4-D
    out = blobproto_to_array(bp, target_shape=(4,))
    assert out.shape == (4,) and out.dtype == np.float32
    np.testing.assert_array_equal(out, [1, 2, 3, 4])


def test_legacy_inner_product_weight_maps_onto_2d_target():
    bp = _legacy(1, 1, 2, 3, range(6))
    assert blobproto_to_array(bp, target_shape=[2, 3]).shape == (2, 3)
    assert shape_equals(bp, (1, 2, 3)) and not shape_equals(bp, (3, 2))
    assert not shape_equals(bp, (1, 1, 1, 2, 3))  # >4 axes never match a legacy blob


def test_legacy_dims_win_over_shape():
    bp = _legacy(1, 1, 1, 2, [5, 6])
    bp.shape.dim.extend([7, 7])
    assert blobproto_to_array(bp).shape == (1, 1, 1, 2)


def test_one_legacy_field_makes_it_legacy():
    bp = caffe_pb2.BlobProto(width=3)  # num/channels/height default to 0
    bp.data.extend([1, 2, 3])
    with pytest.raises(BlobShapeError, match="needs 0 values but the blob stores 3"):
        blobproto_to_array(bp)


def test_nd_shape_must_match_target_exactly():
    bp = array_to_blobproto(np.zeros((4, 1, 1, 1), np.float32))
    assert not shape_equals(bp, (4,))
    with pytest.raises(BlobShapeError, match=r'layer "fc" param 0: stored shape \(4 x 1 x 1 x 1\)'
                                             r' does not match the expected shape \(4\)'):
        blobproto_to_array(bp, target_shape=(4,), name='layer "fc" param 0')


def test_double_data_wins():
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.append(2)
    bp.data.extend([1, 2])
    bp.double_data.extend([0.5, 0.25])
    np.testing.assert_array_equal(blobproto_to_array(bp), [0.5, 0.25])


def test_count_mismatch_is_clear():
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([2, 3])
    bp.data.extend([1.0] * 5)
    with pytest.raises(BlobShapeError, match=r"needs 6 values but the blob stores 5"):
        blobproto_to_array(bp)


def test_array_to_blobproto_round_trip_with_diff():
    a = np.random.RandomState(0).randn(2, 3, 4).astype(np.float32)
    d = -a
    bp = array_to_blobproto(a, diff=d)
    assert list(bp.shape.dim) == [2, 3, 4]
    assert not bp.HasField("num")  # Blob::ToProto never writes the legacy fields
    again = caffe_pb2.BlobProto.FromString(bp.SerializeToString())
    np.testing.assert_array_equal(blobproto_to_array(again), a)
    np.testing.assert_array_equal(blobproto_to_array(again, diff=True), d)
    # The fast packed encoding equals protobuf's own encoding.
    ref = caffe_pb2.BlobProto()
    ref.shape.dim.extend([2, 3, 4])
    ref.data.extend(a.ravel().tolist())
    ref.diff.extend(d.ravel().tolist())
    assert ref.SerializeToString() == bp.SerializeToString()


def test_scalar_blob():
    bp = array_to_blobproto(np.float32(3.5))
    assert blobproto_to_array(bp).shape == () and float(blobproto_to_array(bp)) == 3.5


def test_golden_mean16_binaryproto_matches_caffe_output():
    """Caffe computed batch 0 of the Data layer as (x - mean)[center crop] * scale."""
    mean = read_binaryproto(os.path.join(LMDB_CASE, "mean16.binaryproto"))
    assert mean.shape == (1, 1, 8, 8) and mean.dtype == np.float32
    expected = np.load(os.path.join(LMDB_CASE, "expected.npz"))
    x = expected["features16"][0]            # first record, 1x8x8
    out = expected["batch:0:data"][0]        # 1x6x6 after crop_size 6, scale 0.5
    np.testing.assert_allclose(mean[0][:, 1:7, 1:7], x[:, 1:7, 1:7] - out / 0.5,
                               rtol=1e-5, atol=1e-3)


def test_binaryproto_round_trip(tmp_path):
    path = str(tmp_path / "mean.binaryproto")
    a = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5) * 256.5
    write_binaryproto(path, a)
    np.testing.assert_array_equal(read_binaryproto(path), a)


def test_bad_binaryproto(tmp_path):
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(b"garbage that is not protobuf \xff\xff")
    with pytest.raises(BlobShapeError, match="mean.binaryproto: not a BlobProto"):
        read_binaryproto(str(path))
    with pytest.raises(BlobShapeError, match="cannot read"):
        read_binaryproto(str(tmp_path / "missing.binaryproto"))


def test_a_0_axis_blob_is_written_without_shape_as_caffe_does():
    # Caffe's Blob::ToProto clears the shape and adds no dim for a 0-axis blob (PReLU channel_shared)
    import numpy as np
    from caffeseg.engine.blobproto import array_to_blobproto, blobproto_to_array, stored_shape
    bp = array_to_blobproto(np.float32(0.25))
    assert not bp.HasField("shape") and list(bp.data) == [0.25]
    assert stored_shape(bp) == () and blobproto_to_array(bp).shape == ()
