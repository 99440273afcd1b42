"""A model job's network is built at creation (jobs.netcheck): layers that cannot be built for the
dataset, and pretrained blobs whose shapes differ from the network's, are refused before anything
is queued, naming the layer and the shapes."""
import numpy as np
import pytest

from caffeseg.jobs.service import ServiceError
from tests.jobs_fixtures import TINY_NET
from tests.test_jobs_service import dataset, svc  # noqa: F401  (fixtures)
from tests.web_helpers import write_weights


def create(svc, dataset, text=TINY_NET, **kw):
    return svc.create_model(dict(dataset_id=dataset["id"], network_text=text, epochs=1, name="m", **kw))


def test_a_kernel_larger_than_the_images_is_refused_at_creation(svc, dataset):
    text = TINY_NET.replace("num_output: 4 kernel_size: 3 pad: 1", "num_output: 4 kernel_size: 11")
    with pytest.raises(ServiceError, match=r"cannot be built for this dataset \(1x8x8\).*conv1") as err:
        create(svc, dataset, text)
    assert getattr(err.value, "field", None) in (None, "network")
    assert svc.list_jobs("model") == []  # nothing made, nothing queued


def test_an_unknown_layer_type_is_refused_at_creation(svc, dataset):
    text = TINY_NET.replace('type: "ReLU"', 'type: "ReLUX"')
    with pytest.raises(ServiceError, match="ReLUX"):
        create(svc, dataset, text)


def test_pretrained_weights_of_another_shape_are_refused_naming_both_shapes(svc, dataset, tmp_path):
    # AlexNet-style weights left in the field of another network: same names, other widths
    path = tmp_path / "other.caffemodel"
    write_weights(path, {"conv1": [np.zeros((4, 1, 3, 3), np.float32), np.zeros(4, np.float32)],
                         "score": [np.zeros((7, 5, 1, 1), np.float32), np.zeros(7, np.float32)]})
    with pytest.raises(ServiceError, match=r"score: the network's weight is 7x4x1x1, .*other.caffemodel holds 7x5x1x1"):
        create(svc, dataset, pretrained=[str(path)])


def test_pretrained_weights_with_a_missing_blob_are_refused(svc, dataset, tmp_path):
    path = tmp_path / "nobias.caffemodel"
    write_weights(path, {"conv1": [np.zeros((4, 1, 3, 3), np.float32)]})
    with pytest.raises(ServiceError, match=r"conv1: .*holds 1 blob\(s\), the network's layer has 2"):
        create(svc, dataset, pretrained=[str(path)])


def test_fitting_weights_pass_and_are_reported_matched(svc, dataset, tmp_path):
    path = tmp_path / "fits.caffemodel"
    write_weights(path, {"conv1": [np.zeros((4, 1, 3, 3), np.float32), np.zeros(4, np.float32)]})
    [job] = create(svc, dataset, pretrained=[str(path)])
    import json
    import os
    report = json.load(open(os.path.join(job["dir"], "pretrained_report.json")))
    assert report["matched"] == ["conv1"] and report["mismatches"] == []


def test_real_caffe_is_refused_a_16_bit_png_dataset_at_creation(tmp_path):
    # BVLC Caffe's Data layer decodes 8-bit images only (tests/test_real_caffe_data_and_layers.py
    # shows it stopping on such a dataset); the engine reads it, so only pycaffe jobs are refused
    from caffeseg.jobs.service import JobService
    from tests.jobs_fixtures import make_dataset_dir, write_dataset_json
    folder = make_dataset_dir(str(tmp_path / "png16"))
    write_dataset_json(folder, {"train": 10, "val": 4}, (1, 8, 8), dtype="uint16")
    import json
    import os
    info = json.load(open(os.path.join(folder, "dataset.json")))
    info["feature"]["storage"] = "png"
    json.dump(info, open(os.path.join(folder, "dataset.json"), "w"))
    svc = JobService(str(tmp_path / "jobs"), backend="engine")
    ds = svc.import_dataset(folder, "png16")
    with pytest.raises(ServiceError, match="real Caffe cannot read this dataset: its uint16 images are stored as PNG"):
        create(svc, ds, backend="pycaffe")
    [job] = create(svc, ds, backend="engine")
    assert job["status"] == "Initialized"
