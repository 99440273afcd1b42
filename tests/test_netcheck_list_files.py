"""The creation-time file check reads a network's list files as the layers do (review finding 3):
HDF5Data lists split on any whitespace, WindowData window files name images (root_folder + path),
InfogainLoss reads ``infogain_loss_param.source``."""
from __future__ import annotations

import os

import pytest
from google.protobuf import text_format

from caffeseg.engine.proto import caffe_pb2
from caffeseg.jobs.netcheck import NetworkPathError, check_file_paths


def _net(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


@pytest.fixture
def dirs(tmp_path):
    job, data = tmp_path / "job", tmp_path / "data"
    job.mkdir()
    data.mkdir()
    return str(job), str(data)


def _write(folder, name, text):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def _hdf5(source):
    return _net('layer { name: "h5" type: "HDF5Data" top: "d" hdf5_data_param { source: "%s" batch_size: 1 } }'
                % source)


def test_an_hdf5_list_line_with_two_paths_is_checked_per_path(dirs):
    job, data = dirs
    listing = _write(data, "list.txt", "%s/ok.h5 /etc/hostname\n" % data)
    with pytest.raises(NetworkPathError, match="/etc/hostname"):
        check_file_paths(_hdf5(listing), job, [data])


def test_an_hdf5_list_with_tabs_and_blank_runs_is_checked(dirs):
    job, data = dirs
    listing = _write(data, "list.txt", "ok.h5\t\t/etc/passwd\n")
    with pytest.raises(NetworkPathError, match="/etc/passwd"):
        check_file_paths(_hdf5(listing), job, [data])


def test_an_hdf5_list_inside_the_roots_passes(dirs):
    job, data = dirs
    listing = _write(data, "list.txt", "%s/a.h5  %s/b.h5\n\n%s/c.h5\n" % (data, data, data))
    check_file_paths(_hdf5(listing), job, [data])


def test_an_infogain_matrix_outside_the_roots_is_refused(dirs):
    job, data = dirs
    net = _net('layer { name: "loss" type: "InfogainLoss" bottom: "p" bottom: "l" top: "loss" '
               'infogain_loss_param { source: "/etc/hostname" } }')
    with pytest.raises(NetworkPathError, match="infogain_loss_param.source"):
        check_file_paths(net, job, [data])


WINDOW_NET = ('layer { name: "win" type: "WindowData" top: "d" top: "l" '
              'window_data_param { source: "%s" root_folder: "%s" batch_size: 2 } '
              'transform_param { crop_size: 8 } }')


def test_an_image_of_a_window_file_outside_the_roots_is_refused(dirs):
    job, data = dirs
    windows = _write(data, "windows.txt",
                     "# 0\nimg0.jpg\n3\n10\n10\n2\n1 1.0 0 0 5 5\n0 0.1 1 1 4 4\n"
                     "# 1\n../../../../etc/hostname\n3\n10\n10\n1\n1 0.9 0 0 5 5\n")
    with pytest.raises(NetworkPathError, match="etc/hostname"):
        check_file_paths(_net(WINDOW_NET % (windows, data + "/")), job, [data])


def test_a_window_file_with_images_inside_the_roots_passes(dirs):
    job, data = dirs
    windows = _write(data, "windows.txt",
                     "# 0\nimg0.jpg\n3\n10\n10\n1\n1 1.0 0 0 5 5\n# 1\nsub/img1.jpg\n3 10 10\n0\n")
    check_file_paths(_net(WINDOW_NET % (windows, data + "/")), job, [data])


def test_an_image_list_line_is_split_at_its_last_space_as_the_layer_does(dirs):
    job, data = dirs
    os.symlink("/etc/hostname", os.path.join(data, "img.png"))  # 'img.png +1' itself does not exist
    listing = _write(data, "list.txt", "img.png +1\n")  # the layer reads 'img.png' (label int('+1'))
    net = _net('layer { name: "img" type: "ImageData" top: "d" top: "l" '
               'image_data_param { source: "%s" root_folder: "%s/" batch_size: 1 } }' % (listing, data))
    with pytest.raises(NetworkPathError, match="img.png"):
        check_file_paths(net, job, [data])


def test_a_window_path_that_only_caffes_stream_reading_sees_is_refused(dirs):
    # Caffe's 'infile >> y2' reads '5' of '5#' and the '#' opens the next image, whose path the
    # engine (whitespace tokens) never reaches; real Caffe would read it
    job, data = dirs
    windows = _write(data, "windows.txt", "# 0\nimg0.jpg\n3 10 10\n1\n1 1.0 0 0 5 5#\n1\n../../../../../../etc/hostname\n3 10 10\n0\n")
    with pytest.raises(NetworkPathError, match="/etc/hostname"):
        check_file_paths(_net(WINDOW_NET % (windows, data + "/")), job, [data])


def test_a_list_file_too_large_to_read_is_refused(dirs, monkeypatch):
    from caffeseg.jobs import netcheck
    job, data = dirs
    listing = _write(data, "list.txt", "a.h5\n" * 100)
    monkeypatch.setattr(netcheck, "MAX_LIST_BYTES", 100)
    with pytest.raises(NetworkPathError, match="larger than"):
        check_file_paths(_hdf5(listing), job, [data])
