"""Real BVLC Caffe (`make caffe`) reads the project's files and runs its Python layers:

* the dataset LMDBs the Sunnybrook plugin writes (gray 16-bit and RGB, values in float_data), read
  by Caffe's own Data layer, give exactly the DICOM pixel arrays and the stored labels;
* Dice, DiceLoss and SegmentationMetrics (python_layers/) inside a real Caffe Net give the engine's
  tops and score gradient.

Real Caffe runs in a subprocess (tests/real_caffe/pycaffe_tasks.py); skips when it is not built.
"""
import os
import subprocess

import numpy as np
import pydicom
import pytest

from caffeseg.engine.datum import bytes_to_array
from caffeseg.engine.lmdb_io import LmdbReader
from caffeseg.jobs.dataset import build_dataset
from caffeseg.plugin.sunnybrook import SunnybrookPlugin, phantom
from tests.real_caffe_helpers import TASKS, real_caffe, real_env, run_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER_DIR = os.path.join(ROOT, "python_layers")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    real_caffe()  # skip before building anything
    out = str(tmp_path_factory.mktemp("release"))
    phantom.generate(out, cases=2, seed=1, slices=3)
    return out


def data_net(folder, stage, count):
    """A TEST-phase net of two Data layers reading one stage's LMDBs whole, no transform."""
    return "\n".join(
        'layer { name: "%s" type: "Data" top: "%s" include { phase: TEST } '
        'data_param { source: "%s" backend: LMDB batch_size: %d } }'
        % (part, part, os.path.join(folder, "%s_db" % stage, part), count) for part in ("features", "labels"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_caffes_data_layer_reads_the_plugins_lmdbs_exactly(release, tmp_path, mode, channels):
    out = str(tmp_path / "ds")
    form = {"image_folder": os.path.join(release, "challenge_training"),
            "contour_folder": os.path.join(release, "TrainingDataContours"),
            "val_percent": 25, "split_by": "slice", "channel_conversion": mode}
    info = build_dataset(SunnybrookPlugin(), form, out, encoding="none")
    assert info["feature"]["dtype"] == "uint16" and info["feature"]["storage"] == "float_data"
    for stage in ("train", "val"):
        records = info["records"][stage]
        net = tmp_path / ("%s.prototxt" % stage)
        net.write_text(data_net(out, stage, len(records)))
        got = tmp_path / ("%s.npz" % stage)
        run_task("forward", net, got)
        arrays = np.load(str(got))
        features, labels = arrays["batch:0:features"], arrays["batch:0:labels"]
        assert features.shape == (len(records), channels, 256, 256) and features.dtype == np.float32
        with LmdbReader(os.path.join(out, "%s_db" % stage, "labels")) as db:
            stored_labels = [bytes_to_array(v)[0] for _, v in db.items()]
        for index, record in enumerate(records):
            pixels = pydicom.dcmread(os.path.join(release, "challenge_training", record["files"]["image"])).pixel_array
            assert pixels.max() > 255  # real 16-bit values, not 8-bit ones
            for c in range(channels):
                np.testing.assert_array_equal(features[index, c], pixels.astype(np.float32),
                                              err_msg="%s record %d channel %d" % (stage, index, c))
            np.testing.assert_array_equal(labels[index], stored_labels[index].astype(np.float32))
            assert set(np.unique(labels[index])) == {0.0, 1.0}


NET_WITH_LAYERS = """
name: "python_layers"
force_backward: true
layer { name: "score" type: "Input" top: "score" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 5 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 1 dim: 6 dim: 5 } } }
layer { name: "dice" type: "Python" bottom: "score" bottom: "label" top: "dice"
        python_param { module: "digits_python_layers" layer: "Dice" param_str: "class=2" } }
layer { name: "diceloss" type: "Python" bottom: "score" bottom: "label" top: "diceloss" loss_weight: 1
        python_param { module: "digits_python_layers" layer: "DiceLoss" param_str: "smooth=0.5 class=all" } }
layer { name: "metrics" type: "Python" bottom: "score" bottom: "label"
        top: "pixel_accuracy" top: "mean_accuracy" top: "mean_iou" top: "fw_iou" top: "per_class_iou" top: "per_class_dice"
        python_param { module: "digits_python_layers" layer: "SegmentationMetrics" } }
"""


@pytest.mark.timeout(300)
def test_python_layers_in_real_caffe_give_the_engines_values(tmp_path, monkeypatch):
    real_caffe()
    rng = np.random.RandomState(5)
    score = rng.randn(2, 3, 6, 5).astype(np.float32)
    label = rng.randint(0, 3, size=(2, 1, 6, 5)).astype(np.float32)
    label[0, 0, :2, :2] = 255  # ignored pixels
    net_path = tmp_path / "net.prototxt"
    net_path.write_text(NET_WITH_LAYERS)
    np.savez(str(tmp_path / "in.npz"), score=score, label=label)
    run_task("forward", net_path, tmp_path / "real.npz", "--inputs", tmp_path / "in.npz", "--backward",
             "--path", LAYER_DIR, PYTHONDONTWRITEBYTECODE="1")
    real = np.load(str(tmp_path / "real.npz"))

    from caffeseg.engine import caffe_shim
    engine = caffe_shim.install()
    monkeypatch.syspath_prepend(LAYER_DIR)
    net = engine.Net(str(net_path), engine.TEST)
    net.blobs["score"].data[...] = score
    net.blobs["label"].data[...] = label
    net.forward()
    tops = ("dice", "diceloss", "pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou",
            "per_class_iou", "per_class_dice")
    for name in tops:
        np.testing.assert_allclose(real["batch:0:" + name], net.blobs[name].data, rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    assert 0.0 < float(real["batch:0:dice"].ravel()[0]) < 1.0  # a real, non-trivial value
    net.backward()
    assert np.abs(real["diff:score"]).max() > 0
    np.testing.assert_allclose(real["diff:score"], net.blobs["score"].diff, rtol=1e-6, atol=1e-7)


@pytest.mark.timeout(600)
def test_caffes_data_layer_refuses_16_bit_png_records(release, tmp_path):
    """A dataset stored with encoding "png" keeps 16-bit PNGs; real Caffe's DataTransformer only
    takes 8-bit decoded images and aborts (CHECK cv_img.depth() == CV_8U). Pinned here: such a
    dataset is engine-only; "none" (float_data, above) is what both backends read."""
    out = str(tmp_path / "ds")
    form = {"image_folder": os.path.join(release, "challenge_training"),
            "contour_folder": os.path.join(release, "TrainingDataContours"),
            "val_percent": 25, "split_by": "slice", "channel_conversion": "L"}
    info = build_dataset(SunnybrookPlugin(), form, out, encoding="png")
    assert info["feature"]["storage"] == "png" and info["feature"]["dtype"] == "uint16"
    net = tmp_path / "png.prototxt"
    net.write_text(data_net(out, "train", 2))
    found = real_caffe()
    proc = subprocess.run([found.python, TASKS, "forward", str(net), str(tmp_path / "out.npz")],
                          env=real_env(GLOG_minloglevel="0"), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Image data type must be unsigned byte" in proc.stderr
