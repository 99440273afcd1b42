"""Data layer + TransformationParameter against Caffe's golden batches and Caffe's random rules."""
import os

import numpy as np
import pytest

from caffeseg.engine import rng
from caffeseg.engine.datum import array_to_datum
from caffeseg.engine.layer_types.base import LayerError
from caffeseg.engine.layer_types.data import DataLayer
from caffeseg.engine.lmdb_io import LmdbWriter
from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.prototxt import parse_net, read_net

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "data", "lmdb_transform")


def _layer(text, phase=caffe_pb2.TRAIN, base_dir=None):
    param = parse_net(text).layer[0]
    layer = DataLayer(param, phase)
    layer.base_dir = base_dir
    layer.setup([])
    return layer


def _write_db(path, arrays, labels=None, encoding=None):
    with LmdbWriter(str(path)) as w:
        for i, a in enumerate(arrays):
            d = array_to_datum(a, label=0 if labels is None else int(labels[i]), encoding=encoding)
            w.put("%08d" % i, d.SerializeToString())


def test_golden_lmdb_transform_four_batches_with_wraparound(monkeypatch):
    monkeypatch.chdir(GOLDEN)  # Caffe resolves source/mean_file against the working directory
    net = read_net("net.prototxt")
    expected = np.load("expected.npz")
    layers = [DataLayer(p, caffe_pb2.TEST) for p in net.layer]
    try:
        for layer in layers:
            layer.setup([])
        for k in range(4):
            for layer in layers:
                (top,) = layer.forward([], [])
                want = expected[f"batch:{k}:{layer.param.top[0]}"]
                assert tuple(top.shape) == layer.reshape([])[0]
                np.testing.assert_allclose(top.numpy().reshape(want.shape), want, rtol=1e-6, atol=1e-6)
    finally:
        for layer in layers:
            layer.close()


def test_base_dir_resolves_relative_source_and_mean_file():
    text = open(os.path.join(GOLDEN, "net.prototxt")).read()
    layer = DataLayer(parse_net(text).layer[0], caffe_pb2.TEST)
    layer.base_dir = GOLDEN
    layer.setup([])
    want = np.load(os.path.join(GOLDEN, "expected.npz"))["batch:0:data"]
    np.testing.assert_allclose(layer.forward([], [])[0].numpy(), want, rtol=1e-6)
    layer.close()


def test_leveldb_default_backend_is_rejected_clearly(tmp_path):
    _write_db(tmp_path / "db", [np.zeros((1, 2, 2), np.uint8)])
    with pytest.raises(LayerError, match="LEVELDB.*backend: LMDB"):
        _layer(f'layer {{ name: "d" type: "Data" top: "d" data_param {{ source: "{tmp_path}/db" batch_size: 1 }} }}')


def test_missing_source_names_the_path(tmp_path):
    with pytest.raises(LayerError, match="nowhere"):
        _layer(f'layer {{ name: "d" type: "Data" top: "d" data_param {{ source: "{tmp_path}/nowhere" '
               f'backend: LMDB batch_size: 1 }} }}')


def test_labels_top_and_encoded_16bit_png(tmp_path):
    arrays = [np.full((1, 3, 4), 1000 * (i + 1), np.uint16) for i in range(3)]
    _write_db(tmp_path / "db", arrays, labels=[5, 6, 7], encoding="png")
    layer = _layer(f'layer {{ name: "d" type: "Data" top: "d" top: "l" data_param {{ source: "{tmp_path}/db" '
                   f'backend: LMDB batch_size: 2 }} }}')
    assert layer.reshape([]) == [(2, 1, 3, 4), (2,)]
    data, labels = (t.numpy() for t in layer.forward([], []))
    assert data[:, 0, 0, 0].tolist() == [1000, 2000] and labels.tolist() == [5, 6]
    data, labels = (t.numpy() for t in layer.forward([], []))
    assert data[:, 0, 0, 0].tolist() == [3000, 1000] and labels.tolist() == [7, 5]  # wraps around
    layer.close()


def _indexed_db(path, n, h=6, w=6):
    """Records whose pixel values encode (record, row, column) so crops and flips are visible."""
    arrays = []
    for i in range(n):
        rows, cols = np.mgrid[0:h, 0:w]
        arrays.append((i * 100 + rows * 10 + cols).astype(np.float32)[None])
    _write_db(path, arrays)


def test_train_random_crop_positions_are_uniform_and_test_crop_is_centered(tmp_path):
    _indexed_db(tmp_path / "db", 1, h=6, w=6)
    text = (f'layer {{ name: "d" type: "Data" top: "d" transform_param {{ crop_size: 4 }} '
            f'data_param {{ source: "{tmp_path}/db" backend: LMDB batch_size: 50 }} }}')
    rng.set_seed(3)
    layer = _layer(text, caffe_pb2.TRAIN)
    counts = np.zeros((3, 3), int)
    for _ in range(12):
        batch = layer.forward([], [])[0].numpy()
        for item in batch:
            h_off, w_off = int(item[0, 0, 0]) // 10, int(item[0, 0, 0]) % 10
            counts[h_off, w_off] += 1
            np.testing.assert_array_equal(item[0], (np.mgrid[0:4, 0:4][0] + h_off) * 10 + np.mgrid[0:4, 0:4][1] + w_off)
    layer.close()
    # 600 draws over 9 offsets: each expected 66.7; all offsets used, none wildly off
    assert counts.min() > 35 and counts.max() < 100, counts
    test_layer = _layer(text, caffe_pb2.TEST)
    batch = test_layer.forward([], [])[0].numpy()
    assert set(batch[:, 0, 0, 0].tolist()) == {11.0}  # (6-4)//2 = 1 on both axes
    test_layer.close()


@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_mirror_is_random_in_both_phases(tmp_path, phase):
    _indexed_db(tmp_path / "db", 1, h=2, w=5)
    rng.set_seed(7)
    layer = _layer(f'layer {{ name: "d" type: "Data" top: "d" transform_param {{ mirror: true }} '
                   f'data_param {{ source: "{tmp_path}/db" backend: LMDB batch_size: 100 }} }}', phase)
    batch = np.concatenate([layer.forward([], [])[0].numpy() for _ in range(4)])
    layer.close()
    flipped = batch[:, 0, 0, 0] == 4
    straight = batch[:, 0, 0, 0] == 0
    assert np.all(flipped | straight)
    np.testing.assert_array_equal(batch[flipped][:, 0, 0], [[4, 3, 2, 1, 0]] * int(flipped.sum()))
    assert 160 < flipped.sum() < 240  # 400 fair coin flips


def test_mean_then_scale_and_mean_file_at_uncropped_position(tmp_path):
    from caffeseg.engine.blobproto import write_binaryproto
    _indexed_db(tmp_path / "db", 1, h=4, w=4)
    mean = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    write_binaryproto(str(tmp_path / "mean.binaryproto"), mean)
    layer = _layer(f'layer {{ name: "d" type: "Data" top: "d" transform_param {{ crop_size: 2 scale: 0.5 '
                   f'mean_file: "mean.binaryproto" }} data_param {{ source: "db" backend: LMDB batch_size: 1 }} }}',
                   caffe_pb2.TEST, base_dir=str(tmp_path))
    out = layer.forward([], [])[0].numpy()[0, 0]
    layer.close()
    rows, cols = np.mgrid[1:3, 1:3]
    np.testing.assert_allclose(out, ((rows * 10 + cols) - mean[0, 0, 1:3, 1:3]) * 0.5)


def test_mean_file_and_mean_value_together_are_rejected(tmp_path):
    _indexed_db(tmp_path / "db", 1)
    with pytest.raises(LayerError, match="mean_file and mean_value"):
        _layer(f'layer {{ name: "d" type: "Data" top: "d" transform_param {{ mean_value: 1 mean_file: "m" }} '
               f'data_param {{ source: "{tmp_path}/db" backend: LMDB batch_size: 1 }} }}')


def test_feature_and_label_layers_stay_paired_record_for_record(tmp_path):
    n = 7
    feats = [np.full((3, 4, 4), i * 10, np.uint8) for i in range(n)]
    labels = [np.full((1, 4, 4), i, np.uint8) for i in range(n)]
    _write_db(tmp_path / "f", feats)
    _write_db(tmp_path / "l", labels)
    rng.set_seed(1)
    f_layer = _layer(f'layer {{ name: "f" type: "Data" top: "f" transform_param {{ mirror: true }} '
                     f'data_param {{ source: "{tmp_path}/f" backend: LMDB batch_size: 3 }} }}')
    l_layer = _layer(f'layer {{ name: "l" type: "Data" top: "l" '
                     f'data_param {{ source: "{tmp_path}/l" backend: LMDB batch_size: 3 }} }}')
    for _ in range(6):  # 18 records: wraps around the 7-record databases twice
        f = f_layer.forward([], [])[0].numpy()
        lab = l_layer.forward([], [])[0].numpy()
        np.testing.assert_array_equal(f[:, 0, 0, 0] / 10, lab[:, 0, 0, 0])
    f_layer.close()
    l_layer.close()


def test_force_gray_decodes_encoded_color_to_one_channel(tmp_path):
    rgb = np.zeros((3, 4, 4), np.uint8)
    rgb[2] = 200  # stored C x H x W; array_to_datum/PNG keep channel order as given
    _write_db(tmp_path / "db", [rgb], encoding="png")
    layer = _layer(f'layer {{ name: "d" type: "Data" top: "d" transform_param {{ force_gray: true }} '
                   f'data_param {{ source: "{tmp_path}/db" backend: LMDB batch_size: 1 }} }}')
    assert layer.reshape([]) == [(1, 1, 4, 4)]
    out = layer.forward([], [])[0].numpy()
    layer.close()
    assert out.shape == (1, 1, 4, 4) and 0 < out[0, 0, 0, 0] < 200


def test_rand_skip_starts_within_the_first_records(tmp_path):
    _indexed_db(tmp_path / "db", 10, h=1, w=1)
    starts = set()
    for seed in range(12):
        rng.set_seed(seed)
        layer = _layer(f'layer {{ name: "d" type: "Data" top: "d" data_param {{ source: "{tmp_path}/db" '
                       f'backend: LMDB batch_size: 1 rand_skip: 4 }} }}')
        starts.add(int(layer.forward([], [])[0].numpy().ravel()[0]) // 100)
        layer.close()
    assert starts <= {0, 1, 2, 3} and len(starts) > 1


def test_golden_lmdb_transform_through_the_engine_net(monkeypatch):
    from caffeseg.engine.net import Net
    monkeypatch.chdir(GOLDEN)
    net = Net("net.prototxt", caffe_pb2.TEST)
    expected = np.load("expected.npz")
    for k in range(4):
        net.forward()
        for name in ("data", "rgb", "label"):
            want = expected[f"batch:{k}:{name}"]
            np.testing.assert_allclose(net.blobs[name].data.reshape(want.shape), want, rtol=1e-6, atol=1e-6)


def test_two_layers_may_read_the_same_database(tmp_path):
    """A train net and its test net often share a database; LMDB allows one open per process."""
    _indexed_db(tmp_path / "db", 3, h=1, w=1)
    text = (f'layer {{ name: "d" type: "Data" top: "d" data_param {{ source: "{tmp_path}/db" '
            f'backend: LMDB batch_size: 2 }} }}')
    first, second = _layer(text), _layer(text)
    assert first.forward([], [])[0].numpy().ravel().tolist() == [0, 100]
    assert second.forward([], [])[0].numpy().ravel().tolist() == [0, 100]  # its own cursor
    assert first.forward([], [])[0].numpy().ravel().tolist() == [200, 0]
    first.close()
    second.close()


def test_dropped_layer_stops_its_prefetch_thread(tmp_path):
    import gc
    import threading
    import time
    _indexed_db(tmp_path / "db", 3, h=1, w=1)
    layer = _layer(f'layer {{ name: "dropme" type: "Data" top: "d" data_param {{ source: "{tmp_path}/db" '
                   f'backend: LMDB batch_size: 1 }} }}')
    layer.forward([], [])
    thread = layer._thread
    assert thread.is_alive()
    del layer
    gc.collect()
    deadline = time.time() + 5
    while thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    assert not thread.is_alive()
    assert not any(t.name == "prefetch-dropme" for t in threading.enumerate())
