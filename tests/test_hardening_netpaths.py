"""Files named inside a user's network (issue 16 item 4) must lie in the job folder or the data
folders: refused at creation with a field error that never says whether the file exists."""
from __future__ import annotations

import os

import pytest

from caffeseg.jobs.service import JobService
from tests.jobs_fixtures import TINY_NET, make_dataset_dir

HDF5_LAYER = ('layer { name: "extra" type: "HDF5Data" top: "extra" include { stage: "train" } '
              'hdf5_data_param { source: "%s" batch_size: 2 } }\n')


@pytest.fixture
def svc(tmp_path):
    service = JobService(str(tmp_path / "jobs"), backend="engine")
    service.dataset = service.import_dataset(make_dataset_dir(str(tmp_path / "built")), "phantom")
    return service


def _create(svc, text):
    return svc.create_model({"dataset_id": svc.dataset["id"], "network_text": text, "epochs": 1, "name": "m"})


def _with_mean_file(path):
    return TINY_NET.replace('data_param { batch_size: 2 } }', 'data_param { batch_size: 2 } '
                            'transform_param { mean_file: "%s" } }' % path, 1)


@pytest.mark.parametrize("path", ["/etc/hostname", "/etc/no-such-file", "../../../../etc/hostname"])
def test_a_mean_file_outside_the_roots_is_a_field_error_that_hides_existence(svc, path):
    with pytest.raises(ValueError) as err:
        _create(svc, _with_mean_file(path))
    message = str(err.value)
    assert "transform_param.mean_file" in message and "outside the job folder" in message
    assert "No such file" not in message and "not a BlobProto" not in message
    assert (getattr(err.value, "field_errors", None) or {}).get("network")
    assert not any(j["kind"] == "model" for j in svc.list_jobs())  # nothing was queued


def test_a_symlink_out_of_the_dataset_is_followed_and_refused(svc, tmp_path):
    link = os.path.join(svc.dataset["dir"], "sneaky.binaryproto")
    os.symlink("/etc/hostname", link)
    with pytest.raises(ValueError, match="outside the job folder"):
        _create(svc, _with_mean_file(link))


def test_files_of_the_dataset_are_allowed(svc):
    mean = os.path.join(svc.dataset["dir"], "mean.binaryproto")
    from caffeseg.engine.blobproto import write_binaryproto
    import numpy as np
    write_binaryproto(mean, np.zeros((1, 1, 8, 8), np.float32))
    [job] = _create(svc, _with_mean_file(mean))
    assert job["kind"] == "model"


def test_a_list_file_naming_files_outside_is_refused(svc):
    listing = os.path.join(svc.dataset["dir"], "train_h5.txt")
    with open(listing, "w") as f:
        f.write(os.path.join(svc.dataset["dir"], "part1.h5") + "\n/etc/shadow\n")
    with pytest.raises(ValueError, match=r"hdf5_data_param.source.*lists '/etc/shadow'"):
        _create(svc, TINY_NET + HDF5_LAYER % listing)
    with pytest.raises(ValueError, match="hdf5_data_param.source"):
        _create(svc, TINY_NET + HDF5_LAYER % "/tmp/elsewhere.txt")


def test_configured_data_roots_are_allowed(svc, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    from caffeseg.engine.blobproto import write_binaryproto
    import numpy as np
    write_binaryproto(str(shared / "mean.binaryproto"), np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="outside"):
        _create(svc, _with_mean_file(shared / "mean.binaryproto"))
    monkeypatch.setenv("CAFFESEG_DATA_ROOTS", str(shared))
    [job] = _create(svc, _with_mean_file(shared / "mean.binaryproto"))
    assert job["kind"] == "model"
