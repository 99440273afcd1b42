"""HDF5Data, HDF5Output, ImageData, MemoryData and WindowData: BVLC Caffe's golden batches
(tests/golden/data), then the same rules on files the tests write, and bad inputs."""
from __future__ import annotations

import gc
import json
import os
import shutil

import cv2
import h5py
import numpy as np
import pytest
import torch

from caffeseg import engine
from conftest import GOLDEN_DIR, assert_close_to_caffe
from caffeseg.engine import rng
from caffeseg.engine.layer_types.base import LayerError
from caffeseg.engine.layer_types.hdf5_data import HDF5DataLayer, HDF5OutputLayer
from caffeseg.engine.layer_types.image_data import ImageDataLayer, WindowDataLayer
from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.prototxt import parse_net

DATA_CASES = os.path.join(GOLDEN_DIR, "data")


def _net_file(tmp_path, text: str, name: str = "net.prototxt") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _layer(cls, text: str, phase=caffe_pb2.TEST, base_dir=None):
    layer = cls(parse_net(text).layer[0], phase)
    layer.base_dir = base_dir
    layer.setup([])
    return layer


# ---------------------------------------------------------------------------------------
# Caffe's golden cases (run from the case folder, as Caffe was)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["hdf5_data", "image_data", "memory_data", "window_data"])
def test_golden_data_case_batches(case, monkeypatch):
    folder = os.path.join(DATA_CASES, case)
    monkeypatch.chdir(folder)
    expected = np.load("expected.npz")
    forwards = json.load(open("case.json"))["forwards"]
    net = engine.Net("net.prototxt", engine.TEST)
    if case == "memory_data":
        net.set_input_arrays(expected["arrays:data"], expected["arrays:labels"])
    compared = 0
    for k in range(forwards):
        net.forward()
        for key in expected.files:
            if key.startswith(f"batch:{k}:"):
                blob = key.split(":", 2)[2]
                assert_close_to_caffe(net.blobs[blob].data, expected[key], f"{case} {key}")
                compared += 1
    assert compared >= 2 * forwards


def test_golden_hdf5_output_writes_caffes_file(tmp_path, monkeypatch):
    scratch = tmp_path / "case"
    shutil.copytree(os.path.join(DATA_CASES, "hdf5_output"), scratch)
    monkeypatch.chdir(scratch)
    expected = np.load("expected.npz")
    net = engine.Net("net.prototxt", engine.TEST)
    for name in ("x", "label"):
        net.blobs[name].data[...] = expected[f"input:{name}"]
    net.forward()
    assert_close_to_caffe(net.blobs["y"].data, expected["batch:0:y"], "batch:0:y")
    del net
    gc.collect()  # Caffe closes the file with the net
    with h5py.File("out.h5", "r") as ours, h5py.File("expected_out.h5", "r") as caffes:
        assert sorted(ours) == sorted(caffes) == ["data", "label"]
        for name in ("data", "label"):
            assert ours[name].dtype == caffes[name].dtype == np.float32
            assert ours[name].shape == caffes[name].shape
            assert_close_to_caffe(ours[name][()], expected[f"file:out.h5:{name}"], f"out.h5 {name}")


# ---------------------------------------------------------------------------------------
# HDF5Data on files written here
# ---------------------------------------------------------------------------------------
def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=value)


HDF5_NET = 'layer { name: "h5" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "%s" batch_size: %d %s } }'


def test_hdf5_data_runs_across_files_and_wraps(tmp_path):
    a = np.arange(4 * 3, dtype=np.float64).reshape(4, 3) / 7
    b = -np.arange(2 * 3, dtype=np.float64).reshape(2, 3)
    _h5(tmp_path / "a.h5", data=a, label=np.array([1, 2, 3, 4], np.uint8))
    _h5(tmp_path / "b.h5", data=b, label=np.array([5, 6], np.uint8))
    (tmp_path / "list.txt").write_text("a.h5\n\n  b.h5\n")
    layer = _layer(HDF5DataLayer, HDF5_NET % ("list.txt", 4, ""), base_dir=str(tmp_path))
    assert layer.reshape([]) == [(4, 3), (4,)]
    rows = np.concatenate([a, b]).astype(np.float32)
    labels = np.arange(1, 7, dtype=np.float32)
    for k in range(3):  # 12 rows served from a 6-row cycle: batches cross b's end and wrap
        data, label = layer.forward([], [])
        idx = np.arange(4 * k, 4 * k + 4) % 6
        np.testing.assert_array_equal(data.numpy(), rows[idx])
        np.testing.assert_array_equal(label.numpy(), labels[idx])
        assert data.dtype == label.dtype == torch.float32


def test_hdf5_data_shuffle_serves_each_row_once_per_pass(tmp_path):
    _h5(tmp_path / "a.h5", data=np.arange(6, dtype=np.float32).reshape(6, 1), label=np.zeros(6))
    (tmp_path / "list.txt").write_text("a.h5\n")
    text = HDF5_NET % ("list.txt", 3, "shuffle: true")
    orders = []
    for seed in (1, 1, 2):
        rng.set_seed(seed)
        layer = _layer(HDF5DataLayer, text, base_dir=str(tmp_path))
        served = np.concatenate([layer.forward([], [])[0].numpy().ravel() for _ in range(4)])
        assert sorted(served[:6]) == sorted(served[6:]) == list(range(6))
        orders.append(served.tolist())
    assert orders[0] == orders[1]  # caffe.set_random_seed makes the shuffle reproducible
    assert orders[0] != orders[2]


def test_hdf5_data_bad_inputs_name_the_file(tmp_path):
    base = str(tmp_path)
    with pytest.raises(LayerError, match="cannot open hdf5_data_param.source .*missing.txt"):
        _layer(HDF5DataLayer, HDF5_NET % ("missing.txt", 2, ""), base_dir=base)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(LayerError, match="lists no HDF5 file"):
        _layer(HDF5DataLayer, HDF5_NET % ("empty.txt", 2, ""), base_dir=base)
    (tmp_path / "list.txt").write_text("nothere.h5\n")
    with pytest.raises(LayerError, match="failed opening HDF5 file .*nothere.h5 \\(listed in .*list.txt\\)"):
        _layer(HDF5DataLayer, HDF5_NET % ("list.txt", 2, ""), base_dir=base)
    _h5(tmp_path / "w.h5", data=np.zeros((3, 2)), labels=np.zeros(3))
    (tmp_path / "list.txt").write_text("w.h5\n")
    with pytest.raises(LayerError, match="w.h5 has no dataset 'label'.*has: data, labels"):
        _layer(HDF5DataLayer, HDF5_NET % ("list.txt", 2, ""), base_dir=base)
    _h5(tmp_path / "w.h5", data=np.zeros((3, 2)), label=np.zeros(2))
    with pytest.raises(LayerError, match="dataset 'label' has 2 rows"):
        _layer(HDF5DataLayer, HDF5_NET % ("list.txt", 2, ""), base_dir=base)
    _h5(tmp_path / "w.h5", data=np.array([b"text"] * 3), label=np.zeros(3))
    with pytest.raises(LayerError, match="only float and integer"):
        _layer(HDF5DataLayer, HDF5_NET % ("list.txt", 2, ""), base_dir=base)
    with pytest.raises(LayerError, match="does not transform data"):
        _layer(HDF5DataLayer, 'layer { name: "h5" type: "HDF5Data" top: "data" transform_param { scale: 2 } '
                              'hdf5_data_param { source: "list.txt" batch_size: 1 } }', base_dir=base)


def test_hdf5_data_later_file_with_other_row_shape_is_an_error(tmp_path):
    _h5(tmp_path / "a.h5", data=np.zeros((2, 3)), label=np.zeros(2))
    _h5(tmp_path / "b.h5", data=np.zeros((2, 4)), label=np.zeros(2))
    (tmp_path / "list.txt").write_text("a.h5 b.h5\n")
    layer = _layer(HDF5DataLayer, HDF5_NET % ("list.txt", 3, ""), base_dir=str(tmp_path))
    with pytest.raises(LayerError, match="b.h5 has rows of shape \\(4,\\); the first file's rows are \\(3,\\)"):
        layer.forward([], [])


# ---------------------------------------------------------------------------------------
# HDF5Output
# ---------------------------------------------------------------------------------------
OUTPUT_NET = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 } } }
layer { name: "l" type: "Input" top: "l" input_param { shape { dim: 2 } } }
layer { name: "out" type: "HDF5Output" bottom: "x" bottom: "l" hdf5_output_param { file_name: "%s" } }
"""


def test_hdf5_output_writes_legacy_4d_float32_once(tmp_path):
    target = tmp_path / "written.h5"
    net = engine.Net(_net_file(tmp_path, OUTPUT_NET % target), engine.TEST)
    assert target.exists()  # created when the net is built, as Caffe does
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["l"].data[...] = [7, 9]
    net.forward()
    with pytest.raises(LayerError, match="already holds dataset 'data'.*one batch per file"):
        net.forward()
    net.layer_dict["out"].impl.close()
    with h5py.File(target, "r") as f:
        assert f["data"].shape == (2, 3, 4, 1) and f["data"].dtype == np.float32
        np.testing.assert_array_equal(f["data"][()][..., 0], x)
        np.testing.assert_array_equal(f["label"][()].ravel(), [7, 9])
        assert f["label"].shape == (2, 1, 1, 1)


def test_hdf5_output_rejects_five_axes_and_unwritable_paths(tmp_path):
    text = OUTPUT_NET.replace("dim: 2 dim: 3 dim: 4", "dim: 2 dim: 3 dim: 4 dim: 1 dim: 1")
    with pytest.raises(LayerError, match="at most 4 axes"):
        engine.Net(_net_file(tmp_path, text % (tmp_path / "o.h5")), engine.TEST)
    with pytest.raises(LayerError, match="failed to create HDF5 file .*no_dir/o.h5"):
        engine.Net(_net_file(tmp_path, OUTPUT_NET % (tmp_path / "no_dir" / "o.h5")), engine.TEST)


# ---------------------------------------------------------------------------------------
# ImageData on PNGs written here
# ---------------------------------------------------------------------------------------
def _image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


IMAGE_NET = ('layer { name: "img" type: "ImageData" top: "data" top: "label" %s '
             'image_data_param { source: "list.txt" root_folder: "pics/" batch_size: %d %s } }')


@pytest.fixture
def image_folder(tmp_path):
    (tmp_path / "pics").mkdir()
    images = {"a.png": _image(6, 7, 0), "b c.png": _image(6, 7, 1), "d.png": _image(6, 7, 2)}
    for name, image in images.items():
        assert cv2.imwrite(str(tmp_path / "pics" / name), image)
    (tmp_path / "list.txt").write_text("a.png 3\nb c.png 11\nd.png 0\n")
    return tmp_path, images


def test_image_data_decodes_bgr_with_labels_after_the_last_space(image_folder):
    folder, images = image_folder
    layer = _layer(ImageDataLayer, IMAGE_NET % ("", 2, ""), base_dir=str(folder))
    assert layer.reshape([]) == [(2, 3, 6, 7), (2,)]
    order = ["a.png", "b c.png", "d.png"]
    labels = [3, 11, 0]
    for k in range(3):  # 6 items from a 3-line list: wraps
        data, label = layer.forward([], [])
        for i in range(2):
            j = (2 * k + i) % 3
            # OpenCV's cv::imread order: channel 0 is blue, exactly the stored bytes
            np.testing.assert_array_equal(data.numpy()[i], images[order[j]].transpose(2, 0, 1).astype(np.float32))
            assert label.numpy()[i] == labels[j]


def test_image_data_resize_gray_crop_mean_scale(image_folder):
    folder, images = image_folder
    transform = "transform_param { crop_size: 3 mean_value: 10 scale: 0.5 }"
    layer = _layer(ImageDataLayer, IMAGE_NET % (transform, 1, "new_height: 5 new_width: 4 is_color: false"),
                   base_dir=str(folder))
    assert layer.reshape([]) == [(1, 1, 3, 3), (1,)]
    (data, _) = layer.forward([], [])
    gray = cv2.imread(str(folder / "pics" / "a.png"), cv2.IMREAD_GRAYSCALE)
    resized = cv2.resize(gray, (4, 5)).astype(np.float32)
    centre = resized[1:4, 0:3]  # TEST crop: offsets (5-3)//2 = 1, (4-3)//2 = 0
    np.testing.assert_allclose(data.numpy()[0, 0], (centre - 10) * 0.5)


def test_image_data_shuffle_is_a_permutation_per_pass(image_folder):
    folder, _ = image_folder
    rng.set_seed(3)
    layer = _layer(ImageDataLayer, IMAGE_NET % ("", 3, "shuffle: true"), base_dir=str(folder))
    for _ in range(3):
        _, label = layer.forward([], [])
        assert sorted(label.numpy().tolist()) == [0, 3, 11]


@pytest.mark.parametrize("listing,message", [
    ("a.png 3\nno_label_here\n", "list.txt line 2: expected 'path label'"),
    ("a.png 3\nd.png x1\n", "list.txt line 2: the label after the last space must be an integer, got 'x1'"),
    ("a.png 3\n 4\n", "list.txt line 2: the line has no image path"),
    ("gone.png 1\n", "could not load image .*pics/gone.png \\(.*list.txt line 1\\)"),
])
def test_image_data_bad_lists_name_file_and_line(image_folder, listing, message):
    folder, _ = image_folder
    (folder / "list.txt").write_text(listing)
    with pytest.raises(LayerError, match=message):
        layer = _layer(ImageDataLayer, IMAGE_NET % ("", 2, ""), base_dir=str(folder))
        layer.forward([], [])


def test_image_data_missing_list_and_mixed_sizes(image_folder):
    folder, _ = image_folder
    with pytest.raises(LayerError, match="cannot open source file .*nolist.txt"):
        _layer(ImageDataLayer, (IMAGE_NET % ("", 2, "")).replace("list.txt", "nolist.txt"), base_dir=str(folder))
    cv2.imwrite(str(folder / "pics" / "big.png"), _image(9, 9, 5))
    (folder / "list.txt").write_text("a.png 1\nbig.png 2\n")
    layer = _layer(ImageDataLayer, IMAGE_NET % ("", 2, ""), base_dir=str(folder))
    with pytest.raises(LayerError, match="big.png .*line 2.* shape \\(3, 9, 9\\).*new_height/new_width"):
        layer.forward([], [])
    with pytest.raises(LayerError, match="new_height and new_width must be set together"):
        _layer(ImageDataLayer, IMAGE_NET % ("", 2, "new_height: 4"), base_dir=str(folder))


# ---------------------------------------------------------------------------------------
# MemoryData and Net.set_input_arrays
# ---------------------------------------------------------------------------------------
MEMORY_NET = """
layer { name: "mem" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
layer { name: "double" type: "Power" bottom: "data" top: "twice" power_param { scale: 2 } }
"""


def test_memory_data_serves_arrays_in_place_and_wraps(tmp_path):
    net = engine.Net(_net_file(tmp_path, MEMORY_NET), engine.TEST)
    assert net.blobs["label"].shape == (2,)
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.array([5, 6, 7, 8], dtype=np.float32)
    net.set_input_arrays(data, labels)
    out = net.forward()
    np.testing.assert_array_equal(out["twice"], 2 * data[:2])
    assert net.blobs["label"].shape == (2, 1, 1, 1)
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [5, 6])
    data[0] = -1  # Caffe reads the caller's memory, not a copy
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[2:])
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[0], -np.ones((1, 2, 3), np.float32))


def test_set_input_arrays_checks_as_pycaffe(tmp_path):
    net = engine.Net(_net_file(tmp_path, MEMORY_NET), engine.TEST)
    with pytest.raises(LayerError, match="call net.set_input_arrays"):
        net.forward()
    good = np.zeros((2, 1, 2, 3), np.float32)
    labels = np.zeros(2, np.float32)
    cases = [
        (np.zeros((2, 1, 2, 3), np.float64), labels, "data array must be float32"),
        (np.zeros((2, 1, 3, 2), np.float32).transpose(0, 1, 3, 2), labels, "data array must be C contiguous"),
        (np.zeros((2, 6), np.float32), labels, "data array must be 4-d"),
        (np.zeros((2, 2, 2, 3), np.float32), labels, "wrong number of channels"),
        (np.zeros((2, 1, 3, 3), np.float32), labels, "wrong height"),
        (np.zeros((2, 1, 2, 4), np.float32), labels, "wrong width"),
        (good, np.zeros(2, np.int64), "labels array must be float32"),
        (good, np.zeros(3, np.float32), "same first dimension"),
        (np.zeros((3, 1, 2, 3), np.float32), np.zeros(3, np.float32), "multiple of batch size"),
    ]
    for data, lab, message in cases:
        with pytest.raises(RuntimeError, match=message):
            net.set_input_arrays(data, lab)
    net.set_input_arrays(good, labels.reshape(2, 1, 1, 1))  # the 4-D label form is accepted too
    other = engine.Net(_net_file(tmp_path, OUTPUT_NET % (tmp_path / "o.h5"), "o.prototxt"), engine.TEST)
    with pytest.raises(RuntimeError, match="first layer is a MemoryDataLayer"):
        other.set_input_arrays(good, labels)
    with pytest.raises(LayerError, match="must be specified and positive"):
        engine.Net(_net_file(tmp_path, MEMORY_NET.replace("width: 3", "width: 0")), engine.TEST)


# ---------------------------------------------------------------------------------------
# WindowData on a windows file written here
# ---------------------------------------------------------------------------------------
WINDOW_NET = ('layer { name: "win" type: "WindowData" top: "data" top: "label" transform_param { %s } '
              'window_data_param { source: "windows.txt" batch_size: %d fg_threshold: 0.5 bg_threshold: 0.3 '
              'fg_fraction: 0.5 %s } }')


@pytest.fixture
def window_folder(tmp_path):
    image = _image(12, 16, 7)
    cv2.imwrite(str(tmp_path / "scene.png"), image)
    (tmp_path / "windows.txt").write_text(
        "# 0\nscene.png\n3\n12\n16\n3\n"
        "4 0.8 2 1 9 8\n"      # foreground, label 4
        "2 0.4 0 0 3 3\n"      # between the thresholds: dropped
        "1 0.1 8 4 15 11\n")   # background (label forced to 0)
    return tmp_path, image


def test_window_data_warps_background_then_foreground(window_folder):
    folder, image = window_folder
    layer = _layer(WindowDataLayer, WINDOW_NET % ("crop_size: 4 mean_value: 100", 2, "scale: 0.5"),
                   base_dir=str(folder))
    assert layer.reshape([]) == [(2, 3, 4, 4), (2,)]
    data, label = layer.forward([], [])
    np.testing.assert_array_equal(label.numpy(), [0, 4])
    for item, (x1, y1, x2, y2) in enumerate([(8, 4, 15, 11), (2, 1, 9, 8)]):
        warped = cv2.resize(image[y1:y2 + 1, x1:x2 + 1], (4, 4), interpolation=cv2.INTER_LINEAR)
        want = (warped.transpose(2, 0, 1).astype(np.float32) - 100) * np.float32(0.5)
        np.testing.assert_allclose(data.numpy()[item], want)


def test_window_data_context_pad_leaves_outside_zero(window_folder):
    folder, image = window_folder
    (folder / "windows.txt").write_text("# 0\nscene.png\n3\n12\n16\n2\n3 0.9 0 0 5 5\n1 0.0 0 0 5 5\n")
    layer = _layer(WindowDataLayer, WINDOW_NET % ("crop_size: 8", 2, "context_pad: 2"), base_dir=str(folder))
    data, _ = layer.forward([], [])
    # by hand: context scale 8 / (8 - 2·2) = 2 around the centre 3 of the 6-pixel window gives
    # x, y from round(3 - 6) = -3 to 9 (13 pixels); clipped to 0..9 (10 pixels); at 8/13 per
    # pixel that is round(6.15) = 6 pixels after round(3 · 8/13) = 2 pixels of zero padding
    warped = cv2.resize(image[0:10, 0:10], (6, 6), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    for item in range(2):
        np.testing.assert_array_equal(data.numpy()[item, :, 2:8, 2:8], warped.astype(np.float32))
        assert not np.any(data.numpy()[item, :, :2, :]) and not np.any(data.numpy()[item, :, :, :2])


def test_window_data_mirror_draws_both_ways(window_folder):
    folder, image = window_folder
    rng.set_seed(0)
    layer = _layer(WindowDataLayer, WINDOW_NET % ("crop_size: 4 mirror: true", 2, ""), base_dir=str(folder))
    x1, y1, x2, y2 = 2, 1, 9, 8
    plain = cv2.resize(image[y1:y2 + 1, x1:x2 + 1], (4, 4)).transpose(2, 0, 1).astype(np.float32)
    seen = set()
    for _ in range(40):
        fg = layer.forward([], [])[0].numpy()[1]
        if np.array_equal(fg, plain):
            seen.add("plain")
        else:
            np.testing.assert_array_equal(fg, plain[:, :, ::-1])
            seen.add("mirrored")
    assert seen == {"plain", "mirrored"}


@pytest.mark.parametrize("content,message", [
    ("", "is empty"),
    ("0\nscene.png\n3 12 16 0\n", "line 1: expected '# <image index>'"),
    ("# 1\nscene.png\n3 12 16 0\n", "line 1: image index 1, expected 0"),
    ("# 0\nscene.png\n3 12 16 1\n0 0.9 1 1 4 4\n", "line 4: a foreground window needs a label > 0"),
    ("# 0\nscene.png\n3 12 16 2\n1 0.9 1 1 4 4\n1 0.1 1 x 4 4\n", "line 5: y1 must be an integer, got 'x'"),
    ("# 0\nscene.png\n3 12 16 2\n1 0.9 1 1 4 4\n", "line 4: the file ends where a window label"),
    ("# 0\nscene.png\n3 12 16 1\n1 0.1 1 1 4 4\n", "no foreground window"),
    ("# 0\nscene.png\n1 12 16 1\n1 0.9 1 1 4 4\n", "line 3: 1 channels"),
])
def test_window_data_bad_windows_files_name_the_line(window_folder, content, message):
    folder, _ = window_folder
    (folder / "windows.txt").write_text(content)
    with pytest.raises(LayerError, match=message):
        _layer(WindowDataLayer, WINDOW_NET % ("crop_size: 4", 2, ""), base_dir=str(folder))


def test_window_data_missing_image_and_window_outside(window_folder):
    folder, _ = window_folder
    (folder / "windows.txt").write_text("# 0\ngone.png\n3 12 16 2\n1 0.9 1 1 4 4\n1 0.1 1 1 4 4\n")
    layer = _layer(WindowDataLayer, WINDOW_NET % ("crop_size: 4", 2, ""), base_dir=str(folder))
    with pytest.raises(LayerError, match="could not open or find file .*gone.png"):
        layer.forward([], [])
    (folder / "windows.txt").write_text("# 0\nscene.png\n3 12 16 2\n1 0.9 1 1 40 4\n1 0.1 1 1 4 4\n")
    layer = _layer(WindowDataLayer, WINDOW_NET % ("crop_size: 4", 2, ""), base_dir=str(folder))
    with pytest.raises(LayerError, match="line 4: window \\(1, 1, 40, 4\\) lies outside its image"):
        layer.forward([], [])
    with pytest.raises(LayerError, match="crop_size must be positive"):
        _layer(WindowDataLayer, WINDOW_NET % ("", 2, ""), base_dir=str(folder))


def test_window_data_cache_images_keeps_the_files_in_memory(window_folder):
    folder, _ = window_folder
    plain = _layer(WindowDataLayer, WINDOW_NET % ("crop_size: 4 mean_value: 100", 2, ""), base_dir=str(folder))
    cached_text = WINDOW_NET % ("crop_size: 4 mean_value: 100", 2, "cache_images: true")
    cached = _layer(WindowDataLayer, cached_text, base_dir=str(folder))
    want = plain.forward([], [])[0].numpy()
    os.remove(folder / "scene.png")  # read at setup: later batches need no file
    np.testing.assert_array_equal(cached.forward([], [])[0].numpy(), want)
    with pytest.raises(LayerError, match="could not open or find file .*scene.png"):
        _layer(WindowDataLayer, cached_text, base_dir=str(folder))


def test_image_data_rand_skip_starts_within_the_skip_range(image_folder):
    folder, _ = image_folder
    (folder / "list.txt").write_text("a.png 0\nb c.png 1\nd.png 2\na.png 3\nd.png 4\n")
    first = set()
    for seed in range(12):
        rng.set_seed(seed)
        layer = _layer(ImageDataLayer, IMAGE_NET % ("", 1, "rand_skip: 2"), base_dir=str(folder))
        first.add(int(layer.forward([], [])[1].item()))
    assert first == {0, 1}  # caffe_rng_rand() % rand_skip lines are skipped
