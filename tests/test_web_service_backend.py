"""The adapter between the web and jobs.service, on a real JobService (no worker): the shapes the
pages read, the service's errors as the web's, the dataset files read back."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from caffeseg.jobs import networks
from caffeseg.jobs import store as st
from caffeseg.jobs.dataset import DatasetError, DatasetInfo
from caffeseg.jobs.service import JobService, training_progress
from tests.jobs_fixtures import TINY_NET, write_dataset_json
from caffeseg.web.backend import BadRequest, NotFound
from caffeseg.web.backend_shapes import list_job_files
from caffeseg.web.service_backend import ServiceBackend
from web_helpers import write_lmdb_dataset

VAL_RECORDS = [{"key": "00000000", "case": "SC-HF-NI-3", "image_no": 48, "title": "record SC-HF-NI-3 / image 0048"},
               {"key": "00000001", "title": "custom"}]


@pytest.fixture
def site(tmp_path):
    """(backend, service, dataset job, model job): a built dataset imported, one model made on it."""
    built = tmp_path / "built"
    write_lmdb_dataset(built, {"train": 3, "val": 2}, side=8, scale=500, box=(2, 5))
    write_dataset_json(str(built), {"train": 3, "val": 2}, [1, 8, 8], records={"val": VAL_RECORDS})
    (built / "build.log").write_text("done: train 3, val 2; 0 skipped\n")
    svc = JobService(str(tmp_path / "jobs"))
    dataset = svc.import_dataset(str(built), "d")
    [model] = svc.create_model({"dataset_id": dataset["id"], "network_text": TINY_NET, "epochs": 2, "name": "m"})
    return ServiceBackend({"JOBS_DIR": str(tmp_path / "jobs"), "DATA_DIR": str(tmp_path / "data")}, svc), \
        svc, dataset, model


def test_listing_and_detail_of_a_dataset_and_a_model(site):
    backend, svc, dataset, model = site
    svc.store.add_metrics(model["id"], [(0, "train", "loss", 0.9), (2, "train", "loss", 0.5),
                                        (2, "val", "dice", 0.4), (2, "", "eta", 12.0)])
    Path(model["dir"], "snapshot_iter_4.caffemodel").write_bytes(b"0123")
    listed = {j["id"]: j for j in backend.jobs()}
    assert listed[dataset["id"]]["kind"] == "dataset" and listed[dataset["id"]]["status"] == "Done"
    assert listed[dataset["id"]]["summary"] == {"train_count": 3, "val_count": 2, "feature_shape": [1, 8, 8],
                                                "feature_dtype": "uint16", "classes": ["background", "lv"]}
    m = listed[model["id"]]
    assert m["metrics"] == {"train/loss": {"last": 0.5, "min": 0.5, "max": 0.9, "spark": [0.9, 0.5]},
                            "val/dice": {"last": 0.4, "min": 0.4, "max": 0.4, "spark": [0.4]}}
    assert m["elapsed"] == 0.0 and m["progress"] is None and m["group"] == ""
    assert [j["id"] for j in backend.jobs("model")] == [model["id"]]

    detail = backend.job(model["id"])
    max_iter = json.load(open(os.path.join(model["dir"], "job.json")))["max_iter"]
    assert detail["snapshots"] == [{"iteration": 4, "epoch": 4 / (max_iter / 2), "file": "snapshot_iter_4.caffemodel",
                                    "size": 4}]
    assert {"train_val.prototxt", "solver.prototxt", "snapshot_iter_4.caffemodel"} <= {f["name"] for f in detail["files"]}
    assert detail["dataset_name"] == "d" and detail["history"][0]["status"] == "Initialized"
    ds = backend.job(dataset["id"])
    assert ds["log"] == "done: train 3, val 2; 0 skipped\n"  # an imported folder's build.log
    assert ds["info"]["counts"] == {"train": 3, "val": 2} and ds["info"]["palette"] == [[0, 0, 0], [255, 0, 0]]
    with pytest.raises(NotFound):
        backend.job("20990101-000000-0000")


def test_metrics_rows_become_series_and_progress_is_the_runners(site):
    backend, svc, _, model = site
    svc.store.add_metrics(model["id"], [(0, "train", "loss", 0.9), (1, "train", "loss", 0.8), (1, "", "lr", 0.01),
                                        (1, "", "throughput", 40.0), (1, "", "epoch", 0.5)])
    Path(model["dir"], "runner_status.json").write_text(json.dumps({"iter": 5, "max_iter": 20, "eta": 9.0}))
    m = backend.metrics(model["id"], since=1)
    assert m["series"] == {"train/loss": [[1, 0.8]], "lr": [[1, 0.01]]}
    assert m["status"] == "Initialized" and m["progress"] == 0.25 and m["throughput"] == 40.0
    assert m["eta"] is None  # only a running job has time left
    assert backend.job(model["id"])["progress"] == 0.25
    assert training_progress({"iter": 5, "max_iter": 20}) == (5, 20)
    assert training_progress({}).fraction is None


def test_service_errors_become_web_errors(site):
    backend, _, dataset, model = site
    with pytest.raises(BadRequest, match="used by model"):
        backend.delete(dataset["id"])
    with pytest.raises(BadRequest, match="only Interrupted, Aborted or Error jobs resume"):
        backend.resume(model["id"])
    with pytest.raises(NotFound):
        backend.delete("20990101-000000-0000")
    with pytest.raises(BadRequest, match="no snapshot"):
        backend.download(model["id"])


def test_dataset_records_and_names_read_from_the_builders_files(site):
    backend, _, dataset, _ = site
    listing = backend.dataset_records(dataset["id"], "val", 0, 10)
    assert listing == {"total": 2, "records": [{"index": 0, "key": "00000000", "name": "SC-HF-NI-3 / 0048"},
                                               {"index": 1, "key": "00000001", "name": "custom"}]}
    assert backend.dataset_records(dataset["id"], "train", 1, 1)["records"][0]["key"] == "00000001"
    feature, label, meta = backend.dataset_record(dataset["id"], "train", 2)
    # 16-bit values come back exactly (float_data), the label as an H×W class map.
    assert feature.shape == (1, 8, 8) and feature[0, 7, 7] == 63 * 500 + 2
    assert label.shape == (8, 8) and label[3, 3] == 1 and label[0, 0] == 0
    assert meta == {"palette": [[0, 0, 0], [255, 0, 0]]}
    with pytest.raises(NotFound):
        backend.dataset_record(dataset["id"], "train", 3)


def test_dataset_json_of_another_format_is_refused_by_name(site, tmp_path):
    backend, svc, dataset, _ = site
    with pytest.raises(DatasetError, match=r"dataset.json: not a dataset description .*format None version None"):
        DatasetInfo({"counts": {"train": 3}}, "dataset.json")
    Path(dataset["dir"], "dataset.json").write_text(json.dumps({"counts": {"train": 3}}))
    with pytest.raises(DatasetError):
        svc.dataset_info(dataset["id"])
    page = backend.job(dataset["id"])  # the page still shows the job, without the dataset's facts
    assert page["info"]["counts"] == {} and page["summary"]["train_count"] is None


def test_the_job_size_counts_a_hard_linked_file_once_as_the_details_panel_does(site):
    backend, _svc, _dataset, model = site
    weights = Path(model["dir"], "snapshot_iter_4.caffemodel")
    weights.write_bytes(b"0" * 1000)
    os.link(weights, Path(model["dir"], "pretrained.caffemodel"))
    size = backend.job(model["id"])["size"]
    assert size == backend.job_details(model["id"])["disk_bytes"]
    assert size == sum(p.stat().st_size for p in Path(model["dir"]).rglob("*")
                       if p.is_file() and p.name != "pretrained.caffemodel")


def test_list_job_files_hides_lmdb_internals(tmp_path):
    (tmp_path / "train_db" / "features").mkdir(parents=True)
    (tmp_path / "train_db" / "features" / "data.mdb").write_bytes(b"x")
    (tmp_path / "mean.binaryproto").write_bytes(b"m")
    (tmp_path / "python_layers").mkdir()
    (tmp_path / "python_layers" / "dice.py").write_text("")
    names = [f["name"] for f in list_job_files(tmp_path)]
    assert names == ["mean.binaryproto", "python_layers/dice.py"]


def test_network_inspection_reports_parse_errors_with_line(site):
    backend = site[0]
    with pytest.raises(BadRequest) as info:
        backend.inspect_network('name: "n"\nlayer {\n  name: "a"\n  typo: 1\n}\n')
    assert info.value.line == 4 and "typo" in str(info.value)
    result = backend.inspect_network('name: "n"\nlayer { name: "d" type: "Data" top: "data" top: "label" '
                                     'include { phase: TRAIN } }\n'
                                     'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                                     'convolution_param { num_output: 2 kernel_size: 3 } }\n')
    assert [l["name"] for l in result["layers"]] == ["d", "c"]
    assert result["blobs"]["c"] == [1, 2, 254, 254]


def test_standard_networks_are_the_catalogues(site):
    nets = {n["name"]: n for n in site[0].standard_networks()}
    assert nets == {n["name"]: n for n in networks.standard_networks()}
    assert nets["fcn_alexnet"]["title"] == "FCN-AlexNet" and networks.title("lab_cnn") == "lab CNN"
    assert 'name: "fcn_alexnet"' in nets["fcn_alexnet"]["text"]
    assert nets["fcn_alexnet"]["description"].startswith("FCN-AlexNet")
    assert not any(name.endswith(("deploy", "solver")) for name in nets)


def test_dataset_creation_is_queued_with_the_service(site, phantom_release):
    backend, svc, _, _ = site
    images, contours = phantom_release
    threads = set(threading.enumerate())
    job_id = backend.create_dataset("sunnybrook", {"image_folder": str(images), "contour_folder": str(contours)},
                                    {"dataset_name": "queued", "group_name": "", "encoding": "png",
                                     "encoder_threads": 2, "enforce_same_shape": False})
    job = svc.show(job_id)
    assert job["status"] == st.WAITING and job["name"] == "queued" and job["group_name"] is None
    assert job["options"]["build"] == {"encoding": "png", "label_encoding": "none", "workers": 2,
                                     "enforce_same_shape": False}
    assert set(threading.enumerate()) == threads  # the web starts no build of its own
    with pytest.raises(BadRequest) as info:
        backend.create_dataset("sunnybrook", {"image_folder": "/missing", "contour_folder": str(contours)},
                               {"dataset_name": "d"})
    assert "image_folder" in info.value.field_errors


def test_a_running_build_shows_the_builders_progress(site):
    backend, svc, _, _ = site
    job = svc._new_job("dataset", "building", options={"plugin": "sunnybrook"})
    svc.store.set_status(job["id"], st.RUNNING)
    Path(job["dir"], "build_status.json").write_text(json.dumps({"phase": "encode", "done_all": 3, "total_all": 4}))
    Path(job["dir"], "log.txt").write_text("building: sunnybrook dataset building\n")
    listed = {j["id"]: j for j in backend.jobs("dataset")}
    assert listed[job["id"]]["progress"] == 0.75
    shown = backend.job(job["id"])
    assert shown["status"] == "Running" and shown["info"]["counts"] == {} and "building: sunnybrook" in shown["log"]


def test_the_explorer_waits_for_an_evaluation_holding_the_same_lmdb(site):
    """LMDB opens a database once per process: while the worker thread's evaluation has the val
    LMDB open (under the service's lmdb_lock), the explorer waits instead of failing."""
    from caffeseg.engine.lmdb_io import LmdbReader
    backend, svc, dataset, _ = site
    opened, release, answers = threading.Event(), threading.Event(), []

    def evaluation():
        with svc.lmdb_lock, LmdbReader(os.path.join(dataset["dir"], "val_db", "features")):
            opened.set()
            release.wait(10)
    holder = threading.Thread(target=evaluation)
    holder.start()
    opened.wait(10)
    reader = threading.Thread(target=lambda: answers.append(backend.dataset_record(dataset["id"], "val", 1)))
    reader.start()
    reader.join(0.5)
    assert reader.is_alive() and not answers  # waiting for the lock, not failing on the LMDB
    release.set()
    reader.join(10)
    holder.join(10)
    assert answers and answers[0][0].shape == (1, 8, 8)


def test_the_model_page_download_streams_the_archive_the_service_caches(site, tmp_path):
    import io
    import tarfile
    from caffeseg.web import create_app
    backend, svc, _, model = site
    Path(model["dir"], "snapshot_iter_4.caffemodel").write_bytes(os.urandom(300_000))
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "BACKEND": backend, "START_WORKER": False})
    client = app.test_client()
    first = client.get(f"/models/{model['id']}/download")
    assert first.status_code == 200 and first.is_streamed  # sent while it is built, no wait for the whole
    assert 'attachment; filename=m_%s_iter_4.tar.gz' % model["id"] in first.headers["Content-Disposition"]
    body = first.get_data()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.getmember("snapshot_iter_4.caffemodel").size == 300_000
    cached = os.path.join(model["dir"], "downloads", "model_snapshot_iter_4.tar.gz")
    assert open(cached, "rb").read() == body
    assert client.get(f"/models/{model['id']}/download").get_data() == body  # the cached archive, again
