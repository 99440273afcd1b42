"""Hardening of the network preview (issue 16 items 1 and 7): no foreign code, bounded cost."""
from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from caffeseg.web.backend import BadRequest
from caffeseg.web.netinspect import MAX_PREVIEW_BYTES, MAX_PREVIEW_LAYERS, inspect

NET_WITH_PYTHON = """name: "n"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 1 dim: 8 dim: 8 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 2 kernel_size: 3 }} }}
layer {{ name: "mine" type: "Python" bottom: "conv" top: "mine" python_param {{ module: "{module}" layer: "Thing" }} }}
layer {{ name: "after" type: "ReLU" bottom: "mine" top: "after" }}
layer {{ name: "side" type: "ReLU" bottom: "conv" top: "side" }}
"""

PLANTED = """import pathlib
pathlib.Path({marker!r}).write_text("imported")
import caffe
class Thing(caffe.Layer):
    def setup(self, bottom, top): pass
    def reshape(self, bottom, top): top[0].reshape(7, 7, 7, 7)
    def forward(self, bottom, top): pass
"""


@pytest.fixture
def planted(tmp_path):
    """A module a stranger placed in the system temp dir and in the server's working directory."""
    name = "planted_" + uuid.uuid4().hex[:8]
    marker = tmp_path / "marker.txt"
    paths = [Path(tempfile.gettempdir()) / f"{name}.py", tmp_path / "cwd" / f"{name}.py"]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(PLANTED.format(marker=str(marker)))
    yield name, marker, tmp_path / "cwd"
    for p in paths:
        p.unlink(missing_ok=True)
    sys.modules.pop(name, None)


def test_preview_never_imports_a_module_from_the_temp_dir_or_the_cwd(planted, monkeypatch):
    name, marker, cwd = planted
    monkeypatch.chdir(cwd)
    result = inspect(NET_WITH_PYTHON.format(module=name))
    assert not marker.exists(), "the preview ran a module planted outside the project"
    assert name not in sys.modules
    assert result["blobs"]["conv"] == [1, 2, 6, 6] and result["blobs"]["side"] == [1, 2, 6, 6]
    assert "mine" not in result["blobs"] and "after" not in result["blobs"]
    assert set(result["unknown_shapes"]) == {"mine", "after"}
    assert name in result["note"] and "unknown" in result["note"]
    assert {"mine", "after"} <= {l["name"] for l in result["layers"]}  # still drawn


def test_project_python_layers_still_get_shapes():
    text = NET_WITH_PYTHON.replace('python_param {{ module: "{module}" layer: "Thing" }}',
                                   'python_param {{ module: "digits_python_layers" layer: "Dice" }}')
    text = text.replace('bottom: "conv" top: "mine"', 'bottom: "conv" bottom: "label" top: "mine"').format()
    text = text.replace('top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } }',
                        'top: "data" top: "label" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } '
                        'shape { dim: 1 dim: 1 dim: 6 dim: 6 } }')
    result = inspect(text)
    assert result["unknown_shapes"] == []
    assert result["blobs"]["mine"] == [1]  # Dice's top is a scalar per batch
    assert "not run" not in result["note"]


def test_a_huge_network_is_refused_quickly():
    """20000 layers in 1.2 MiB cost 55 s of server CPU; now a bounded refusal."""
    head = 'name: "big"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n'
    relu = 'layer { name: "r%d" type: "ReLU" bottom: "data" top: "data" }\n'
    huge = head + "".join(relu % i for i in range(20000))
    assert len(huge) > MAX_PREVIEW_BYTES
    start = time.monotonic()
    with pytest.raises(BadRequest, match="KiB"):
        inspect(huge)
    many = head + "".join(relu % i for i in range(MAX_PREVIEW_LAYERS + 1))
    assert len(many) < MAX_PREVIEW_BYTES
    with pytest.raises(BadRequest, match=f"at most {MAX_PREVIEW_LAYERS}"):
        inspect(many)
    assert time.monotonic() - start < 10


def test_the_largest_preview_allowed_is_built_in_bounded_time():
    head = 'name: "big"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n'
    relu = 'layer { name: "r%d" type: "ReLU" bottom: "data" top: "data" }\n'
    start = time.monotonic()
    result = inspect(head + "".join(relu % i for i in range(MAX_PREVIEW_LAYERS - 1)))
    assert result["blobs"]["data"] == [1, 1, 8, 8]
    assert time.monotonic() - start < 20


def test_a_network_that_would_allocate_gigabytes_is_refused_before_building():
    """One convolution with 100000 outputs on 256×256 would allocate ~24 GB of tops at construction."""
    bomb = ('name: "n"\nlayer { name: "d" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 256 dim: 256 } } }\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 100000 kernel_size: 3 } }\n')
    start = time.monotonic()
    with pytest.raises(BadRequest, match="GiB"):
        inspect(bomb)
    dummy = ('name: "n"\nlayer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 1000 dim: 1000 dim: 1000 dim: 10 } } }\n')
    with pytest.raises(BadRequest, match="GiB"):
        inspect(dummy)
    assert time.monotonic() - start < 5


def test_the_standard_networks_fit_the_preview():
    from caffeseg.engine import prototxt as _  # noqa: F401
    folder = Path(__file__).resolve().parent.parent / "prototxt"
    for path in sorted(folder.glob("*.prototxt")):
        result = inspect(path.read_text(), [1, 256, 256])
        assert result["blobs"], path.name


def test_layers_that_read_files_are_not_built_by_the_preview(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("/etc/hostname 0\n")
    text = ('name: "n"\nlayer { name: "img" type: "ImageData" top: "data" top: "label" '
            'image_data_param { source: "%s" batch_size: 1 } }\n'
            'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n' % listing)
    result = inspect(text)
    assert "r" not in result["blobs"] and "ImageData layers read their data from files" in result["note"]


def test_the_server_never_imports_python_layers_from_its_working_directory(tmp_path, monkeypatch):
    # pycaffe's lookup includes the working directory; the web process turns that off, so a
    # module someone left in the server's folder cannot run when a job's net is built there
    from caffeseg.engine.layer_types import python as python_layers
    from caffeseg.web import create_app
    monkeypatch.setattr(python_layers, "SEARCH_WORKING_DIRECTORY", True)
    marker = tmp_path / "ran.txt"
    (tmp_path / "planted_layer.py").write_text("open(%r, 'w').write('ran')\n" % str(marker))
    monkeypatch.chdir(tmp_path)
    create_app({"DATA_DIR": str(tmp_path / "data"), "START_WORKER": False})
    assert python_layers.SEARCH_WORKING_DIRECTORY is False
    with pytest.raises(python_layers.PythonLayerError, match="was not found"):
        python_layers._import_module("planted_layer", [str(tmp_path / "job")], "dice")
    assert not marker.exists()
