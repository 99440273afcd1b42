"""Datum encoding/decoding and the LMDB reader/writer, against Caffe-built databases."""

import os

import numpy as np
import pytest

from caffeseg.engine.datum import DatumError, array_to_datum, datum_to_array, parse_datum
from caffeseg.engine.lmdb_io import LmdbError, LmdbReader, LmdbWriter
from caffeseg.engine.proto import caffe_pb2

LMDB_CASE = os.path.join(os.path.dirname(__file__), "golden", "data", "lmdb_transform")


@pytest.mark.parametrize("name,dtype", [("features16", np.float32), ("rgb8", np.uint8),
                                        ("labels", np.uint8)])
def test_golden_lmdbs_decode_to_expected(name, dtype):
    expected = np.load(os.path.join(LMDB_CASE, "expected.npz"))[name]
    with LmdbReader(os.path.join(LMDB_CASE, name)) as db:
        assert len(db) == expected.shape[0]
        assert db.first_shape() == expected.shape[1:]
        keys = db.keys()
        assert keys == sorted(keys)
        arrays = [a for _, a, _ in db.arrays()]
        assert all(a.dtype == dtype for a in arrays)
        np.testing.assert_array_equal(np.stack(arrays), expected)
        # random access by key gives the same record
        np.testing.assert_array_equal(datum_to_array(parse_datum(db.get(keys[-1]))), expected[-1])
        assert keys[0] in db and "no-such-key" not in db
        with pytest.raises(KeyError, match="no-such-key"):
            db.get("no-such-key")


def test_uint8_datum_round_trip():
    a = np.random.RandomState(1).randint(0, 256, (3, 4, 5)).astype(np.uint8)
    d = array_to_datum(a, label=7)
    assert (d.channels, d.height, d.width, d.label) == (3, 4, 5, 7)
    assert len(d.data) == a.size and len(d.float_data) == 0 and not d.encoded
    back = datum_to_array(caffe_pb2.Datum.FromString(d.SerializeToString()))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, a)


def test_uint16_datum_is_exact_float_data():
    a = np.array([[[0, 1, 255, 256], [4095, 32768, 65534, 65535]]], dtype=np.uint16)
    d = array_to_datum(a)
    assert len(d.data) == 0 and len(d.float_data) == a.size
    back = datum_to_array(caffe_pb2.Datum.FromString(d.SerializeToString()))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.astype(np.uint16), a)
    np.testing.assert_array_equal(back, a.astype(np.float64))


def test_2d_array_becomes_one_channel():
    assert datum_to_array(array_to_datum(np.ones((2, 3), np.uint8))).shape == (1, 2, 3)


@pytest.mark.parametrize("shape", [(1, 5, 6), (3, 5, 6), (4, 5, 6)])
def test_png_16bit_datum_stays_16bit(shape):
    a = np.random.RandomState(2).randint(0, 65536, shape).astype(np.uint16)
    d = array_to_datum(a, label=3, encoding="png")
    assert d.encoded and d.data[:8] == b"\x89PNG\r\n\x1a\n"
    back = datum_to_array(caffe_pb2.Datum.FromString(d.SerializeToString()))
    assert back.dtype == np.uint16 and back.shape == shape
    np.testing.assert_array_equal(back, a)  # channel order preserved


def test_png_channel_order_is_opencv_bgr():
    import cv2
    a = np.zeros((3, 2, 2), np.uint8)
    a[0] = 200  # channel 0 is stored as the file's blue channel, like Caffe's tools
    png = array_to_datum(a, encoding="png").data
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    assert rgb[0, 0].tolist() == [0, 0, 200]


def test_jpeg_datum_decodes_uint8():
    a = np.full((3, 8, 8), 128, np.uint8)
    back = datum_to_array(array_to_datum(a, encoding="jpg"))
    assert back.dtype == np.uint8 and back.shape == (3, 8, 8)
    assert np.abs(back.astype(int) - 128).max() <= 2
    with pytest.raises(DatumError, match="JPG encoding cannot store uint16"):
        array_to_datum(a.astype(np.uint16), encoding="jpg")


def test_datum_size_mismatch_names_numbers():
    d = caffe_pb2.Datum(channels=3, height=4, width=5, data=b"\0" * 59)
    with pytest.raises(DatumError, match=r"59 bytes .* 3 x 4 x 5 = 60"):
        datum_to_array(d)
    d = caffe_pb2.Datum(channels=1, height=2, width=2)
    d.float_data.extend([1.0, 2.0, 3.0])
    with pytest.raises(DatumError, match=r"3 float_data values .* 1 x 2 x 2 = 4"):
        datum_to_array(d)


def test_bad_encoded_datum():
    d = caffe_pb2.Datum(encoded=True, data=b"not an image")
    with pytest.raises(DatumError, match="not an image OpenCV can decode"):
        datum_to_array(d)
    with pytest.raises(DatumError, match="unknown Datum encoding"):
        array_to_datum(np.zeros((1, 2, 2), np.uint8), encoding="gif")


def test_lmdb_round_trip_grows_tiny_map(tmp_path):
    path = str(tmp_path / "db")
    records = {"%08d" % i: np.full((3, 16, 16), i, np.uint8) for i in range(50)}
    with LmdbWriter(path, batch_size=7, map_size=32 * 1024) as db:
        start = db.map_size
        for key in reversed(sorted(records)):  # insertion order differs from key order
            db.put(key, array_to_datum(records[key], label=int(key)).SerializeToString())
        db.flush()
        assert db.map_size > start  # 50 x 768 bytes do not fit in 32 KiB: the map grew
    assert db.written == 50
    with LmdbReader(path) as db:
        assert len(db) == 50
        assert db.keys() == sorted(records)
        for key, array, label in db.arrays():
            np.testing.assert_array_equal(array, records[key])
            assert label == int(key)


def test_lmdb_reader_opens_data_mdb_file_directly(tmp_path):
    path = str(tmp_path / "db")
    with LmdbWriter(path) as db:
        db.put("a", b"1")
    with LmdbReader(os.path.join(path, "data.mdb")) as db:
        assert dict(db.items()) == {"a": b"1"}


def test_not_an_lmdb(tmp_path):
    with pytest.raises(LmdbError, match="does not exist"):
        LmdbReader(str(tmp_path / "missing"))
    with pytest.raises(LmdbError, match="no data.mdb"):
        LmdbReader(str(tmp_path))
    junk = tmp_path / "junk.mdb"
    junk.write_bytes(b"x" * 8192)
    with pytest.raises(LmdbError, match="junk.mdb: not an LMDB database"):
        LmdbReader(str(junk))
