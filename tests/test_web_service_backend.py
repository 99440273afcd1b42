"""The adapter between the web and jobs.service: normalising answers, reading job files."""
from __future__ import annotations

import json
import threading
import time

import pytest

from web.backend import BadRequest, NotFound, Unavailable
from web.service_backend import ServiceBackend, _dataset_info_view, _record_names, list_job_files
from web_helpers import write_lmdb_dataset


class StubService:
    def __init__(self, root):
        self.root = root
        self.calls = []

    def list_jobs(self, kind=None):
        return [{"job_id": "ds1", "type": "dataset", "name": "d", "status": "done", "created_at": 1000.0,
                 "finished_at": 1010.0},
                {"id": "m1", "kind": "model", "name": "m", "status": "Running", "submitted": time.time() - 5,
                 "dataset_id": "ds1", "metrics": {"val/dice": [0.1, 0.5, 0.4]}}]

    def show(self, job_id):
        for j in self.list_jobs():
            if j.get("id", j.get("job_id")) == job_id:
                return dict(j, dir=str(self.root / job_id), history=[("Waiting", 1000.0), ("Done", 1010.0)])
        raise KeyError(f"no job {job_id}")

    def metrics(self, job_id, since):
        return {"series": [(0, "loss", 0.9, "train"), (1, "loss", 0.8, "train"), (1, "lr", 0.01, None)],
                "status": "Running", "progress": 0.5}

    def abort(self, job_id):
        self.calls.append(("abort", job_id))

    def delete(self, job_id):
        raise ValueError("dataset ds1 is used by model m")


@pytest.fixture
def backend(tmp_path):
    (tmp_path / "m1").mkdir()
    (tmp_path / "m1" / "snapshot_iter_10.caffemodel").write_bytes(b"0123")
    (tmp_path / "m1" / "train_val.prototxt").write_text("name: 'x'")
    (tmp_path / "m1" / "log.txt").write_text("training…")
    (tmp_path / "ds1").mkdir()
    (tmp_path / "ds1" / "dataset.json").write_text(json.dumps({
        "counts": {"train": 3, "val": 1}, "feature_shape": [1, 8, 8], "classes": ["background", "lv"],
        "records": {"val": [{"key": "00000000", "case": "SC-HF-NI-3", "image": "IM-0379-0048.dcm"}]}}))
    b = ServiceBackend({"JOBS_DIR": str(tmp_path)})
    b._service = StubService(tmp_path)
    return b


def test_jobs_are_normalised(backend):
    jobs = {j["id"]: j for j in backend.jobs()}
    assert jobs["ds1"]["kind"] == "dataset" and jobs["ds1"]["status"] == "Done"
    assert jobs["ds1"]["elapsed"] == pytest.approx(10.0)
    assert jobs["m1"]["metrics"]["val/dice"] == {"last": 0.4, "min": 0.1, "max": 0.5, "spark": [0.1, 0.5, 0.4]}
    assert [j["id"] for j in backend.jobs("model")] == ["m1"]


def test_job_detail_reads_files_snapshots_and_dataset_json(backend, tmp_path):
    m = backend.job("m1")
    assert m["snapshots"] == [{"iteration": 10, "epoch": None, "file": "snapshot_iter_10.caffemodel", "size": 4}]
    assert {f["name"] for f in m["files"]} >= {"train_val.prototxt", "log.txt"}
    assert m["log"] == "training…" and m["dataset_name"] == "d"
    assert m["history"][1] == {"status": "Done", "time": 1010.0}
    d = backend.job("ds1")
    assert d["info"]["counts"] == {"train": 3, "val": 1} and d["summary"]["train_count"] == 3
    with pytest.raises(NotFound):
        backend.job("nope")


def test_metrics_rows_become_series(backend):
    m = backend.metrics("m1", since=1)
    assert m["series"] == {"train/loss": [[1, 0.8]], "lr": [[1, 0.01]]}
    assert m["status"] == "Running"


def test_errors_become_web_errors(backend):
    with pytest.raises(BadRequest, match="used by model m"):
        backend.delete("ds1")
    with pytest.raises(Unavailable):
        backend.resume("m1")  # the stub has no resume()
    backend.abort("m1")
    assert backend.service.calls == [("abort", "m1")]


def test_record_names():
    info = {"records": {"val": [{"key": "00000000", "case": "SC-HF-NI-3", "image": "IM-0379-0048.dcm"},
                                {"key": "00000001", "name": "custom"}]}}
    names = _record_names(info, "val")
    assert names["00000000"] == "SC-HF-NI-3 / 0048" and names["1"] == "custom"
    assert _record_names({}, "val") == {}


def test_dataset_info_view_accepts_nested_stages():
    view = _dataset_info_view({"stages": {"train": {"count": 5}, "val": {"entries": 2}},
                               "classes": [{"name": "bg", "color": [0, 0, 0]}, {"name": "lv", "color": [255, 0, 0]}]})
    assert view["counts"] == {"train": 5, "val": 2}
    assert view["classes"] == ["bg", "lv"] and view["palette"] == [[0, 0, 0], [255, 0, 0]]


def test_list_job_files_hides_lmdb_internals(tmp_path):
    (tmp_path / "train_db" / "features").mkdir(parents=True)
    (tmp_path / "train_db" / "features" / "data.mdb").write_bytes(b"x")
    (tmp_path / "mean.binaryproto").write_bytes(b"m")
    (tmp_path / "python_layers").mkdir()
    (tmp_path / "python_layers" / "dice.py").write_text("")
    names = [f["name"] for f in list_job_files(tmp_path)]
    assert names == ["mean.binaryproto", "python_layers/dice.py"]


def test_missing_service_is_unavailable(tmp_path, monkeypatch):
    import importlib
    real = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == "jobs.service":
            raise ImportError("simulated: no jobs.service")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(importlib, "import_module", fake_import)
    b = ServiceBackend({"JOBS_DIR": str(tmp_path)})
    with pytest.raises(Unavailable, match="simulated"):
        b.jobs()


def _write_dataset(job_dir, n=3):
    write_lmdb_dataset(job_dir, {"train": n, "val": 1}, side=8, scale=500, box=(2, 5))


def test_dataset_records_read_from_the_lmdbs(backend, tmp_path):
    pytest.importorskip("engine.lmdb_io")
    _write_dataset(tmp_path / "ds1")
    listing = backend.dataset_records("ds1", "val", 0, 10)
    assert listing == {"total": 1, "records": [{"index": 0, "key": "00000000", "name": "SC-HF-NI-3 / 0048"}]}
    assert backend.dataset_records("ds1", "train", 1, 1)["records"][0]["key"] == "00000001"
    feature, label, meta = backend.dataset_record("ds1", "train", 2)
    # 16-bit values come back exactly (float_data), the label as an H×W class map.
    assert feature.shape == (1, 8, 8) and feature[0, 7, 7] == 63 * 500 + 2
    assert label.shape == (8, 8) and label[3, 3] == 1 and label[0, 0] == 0
    with pytest.raises(NotFound):
        backend.dataset_record("ds1", "train", 3)


def test_network_inspection_reports_parse_errors_with_line(backend):
    pytest.importorskip("engine.prototxt")
    with pytest.raises(BadRequest) as info:
        backend.inspect_network('name: "n"\nlayer {\n  name: "a"\n  typo: 1\n}\n')
    assert info.value.line == 4 and "typo" in str(info.value)
    result = backend.inspect_network('name: "n"\nlayer { name: "d" type: "Data" top: "data" top: "label" '
                                     'include { phase: TRAIN } }\n'
                                     'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                                     'convolution_param { num_output: 2 kernel_size: 3 } }\n')
    assert [l["name"] for l in result["layers"]] == ["d", "c"]
    try:
        import engine
        engine.Net  # noqa: B018
    except AttributeError:
        assert "Shapes unavailable" in result["note"]
    else:
        assert result["blobs"]["c"] == [1, 2, 254, 254]


def test_standard_networks_come_from_the_prototxt_folder(backend):
    from web.service_backend import NETWORKS_DIR
    if not (NETWORKS_DIR / "fcn_alexnet.prototxt").is_file():
        pytest.skip("prototxt/ has no networks yet")
    nets = {n["name"]: n for n in backend.standard_networks()}
    assert nets["fcn_alexnet"]["title"] == "FCN-AlexNet"
    assert 'name: "fcn_alexnet"' in nets["fcn_alexnet"]["text"]
    assert nets["fcn_alexnet"]["description"].startswith("FCN-AlexNet")


class QueueingService(StubService):
    """A service that queues dataset builds (its worker builds them) and lists one building."""

    def __init__(self, root):
        super().__init__(root)
        self.submitted = []

    def list_jobs(self, kind=None):
        return super().list_jobs(kind) + [{"id": "ds2", "kind": "dataset", "name": "building", "status": "Running",
                                           "dir": str(self.root / "ds2"), "created_at": time.time()}]

    def show(self, job_id):
        job = super().show(job_id)
        if job.get("kind") == "dataset" and job.get("status") == "Running":  # as jobs.service.show does
            from jobs.service import build_progress
            job["progress"] = build_progress(job["dir"])
        return job

    def submit_dataset(self, plugin, values, name, group_name=None, **build):
        if values.get("image_folder") == "/missing":
            raise _FieldError()
        self.submitted.append((plugin, values, name, group_name, build))
        return {"id": "ds-new", "kind": "dataset", "name": name, "status": "Waiting"}


class _FieldError(ValueError):
    field_errors = {"image_folder": "folder /missing does not exist"}

    def __init__(self):
        ValueError.__init__(self, "please correct the marked fields")


def test_dataset_creation_is_queued_with_the_service(backend, tmp_path):
    backend._service = svc = QueueingService(tmp_path)
    threads = set(threading.enumerate())
    job_id = backend.create_dataset("sunnybrook", {"image_folder": "/x"},
                                    {"dataset_name": "d", "group_name": "", "encoding": "png", "encoder_threads": 2,
                                     "enforce_same_shape": False})
    assert job_id == "ds-new"
    assert svc.submitted == [("sunnybrook", {"image_folder": "/x"}, "d", None,
                              {"encoding": "png", "workers": 2, "enforce_same_shape": False})]
    assert set(threading.enumerate()) == threads  # the web starts no build of its own
    with pytest.raises(BadRequest) as info:
        backend.create_dataset("sunnybrook", {"image_folder": "/missing"}, {"dataset_name": "d"})
    assert info.value.field_errors == {"image_folder": "folder /missing does not exist"}


def test_a_running_build_shows_the_builders_progress(backend, tmp_path):
    backend._service = QueueingService(tmp_path)
    (tmp_path / "ds2").mkdir()
    (tmp_path / "ds2" / "build_status.json").write_text(json.dumps({"phase": "encode", "done_all": 3, "total_all": 4}))
    (tmp_path / "ds2" / "log.txt").write_text("building: sunnybrook dataset building\n")
    listed = {j["id"]: j for j in backend.jobs("dataset")}
    assert listed["ds2"]["progress"] == 0.75 and listed["ds1"]["progress"] is None
    job = backend.job("ds2")
    assert job["status"] == "Running" and job["progress"] == 0.75 and "building: sunnybrook" in job["log"]


def test_build_progress_has_one_implementation(backend, tmp_path, monkeypatch):
    import jobs.service
    import web.service_backend as sb
    assert not hasattr(sb, "_build_progress")  # the service's build_progress is the one
    backend._service = QueueingService(tmp_path)
    (tmp_path / "ds2").mkdir()
    monkeypatch.setattr(jobs.service, "build_progress", lambda job_dir: 0.5)
    assert {j["id"]: j for j in backend.jobs("dataset")}["ds2"]["progress"] == 0.5
