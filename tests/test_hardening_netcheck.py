"""The network is checked at creation against the selected backend's layer list (issue 16 item
18): every layer of every phase (loss layers too, which the deploy net leaves out); the engine's
``registered_types()``, real Caffe's ``caffe.layer_type_list()``."""
from __future__ import annotations

import os
import textwrap

import pytest

from caffeseg.jobs import netcheck
from caffeseg.jobs.service import JobService, ServiceError
from tests.jobs_fixtures import TINY_NET, install_fake_caffe, make_dataset_dir


@pytest.fixture
def svc(tmp_path):
    service = JobService(str(tmp_path / "jobs"), backend="engine")
    service.dataset = service.import_dataset(make_dataset_dir(str(tmp_path / "built")), "ds")
    return service


def _create(svc, text, **options):
    return svc.create_model(dict({"dataset_id": svc.dataset["id"], "network_text": text, "epochs": 1,
                                  "name": "m"}, **options))


def test_an_unknown_type_in_a_training_only_layer_is_refused_at_creation(svc):
    typo = TINY_NET.replace('type: "SoftmaxWithLoss"', 'type: "SoftmaxWithLos"')
    with pytest.raises(ServiceError) as err:
        _create(svc, typo)
    message = str(err.value)
    assert "layer 'loss' has type 'SoftmaxWithLos'" in message and "the engine does not implement" in message
    assert "did you mean SoftmaxWithLoss" in message
    assert err.value.field_errors.get("network")
    assert not any(j["kind"] == "model" for j in svc.list_jobs())


def test_a_kernel_larger_than_the_input_is_refused_at_creation(svc):
    big = TINY_NET.replace("num_output: 4 kernel_size: 3 pad: 1", "num_output: 4 kernel_size: 11")
    with pytest.raises(ServiceError, match="conv1"):
        _create(svc, big)


def test_real_caffes_layer_list_is_used_for_a_pycaffe_job(svc, tmp_path, monkeypatch):
    """A type the engine has but this Caffe lacks is refused for a pycaffe job (and allowed for an
    engine job). The 'real Caffe' here is a stand-in whose layer_type_list omits Power."""
    fake = install_fake_caffe(str(tmp_path / "fake"))
    with open(os.path.join(fake, "caffe", "__init__.py"), "a") as f:
        f.write(textwrap.dedent('''
            def layer_type_list():
                return ["Data", "Convolution", "ReLU", "SoftmaxWithLoss", "Accuracy", "Input"]
        '''))
    monkeypatch.setenv("PYTHONPATH", fake)
    netcheck._REAL_CAFFE_TYPES.clear()
    with pytest.raises(ServiceError) as err:
        _create(svc, TINY_NET, backend="pycaffe")
    assert "layer 'scale' has type 'Power', which real Caffe does not implement" in str(err.value)
    [job] = _create(svc, TINY_NET, backend="engine")
    assert job["kind"] == "model"
    netcheck._REAL_CAFFE_TYPES.clear()


def test_a_network_that_would_allocate_gigabytes_is_refused_at_creation(svc):
    """The deploy net is built in the server process, which allocates every top: a score layer of
    600 M outputs on the 8×8 images would need ~150 GiB."""
    wide = TINY_NET.replace("num_output: 7 kernel_size: 1", "num_output: 600000000 kernel_size: 1")
    with pytest.raises(ServiceError) as err:
        _create(svc, wide)
    assert "GiB" in str(err.value) and err.value.field_errors.get("network")
