"""Issue 18 in the web: job editing and the job page's panels, Info, DIGITS' REST URLs and JSON
shapes, the JSON API additions, Test Many, Make Pretrained and archive upload, and users (login,
owner checks, proxy header) — on the fake backend for the pages and URLs, on the real jobs
service for owners and the pretrained round trip."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from test_web_fakes import FakeBackend, sunnybrook_plugin
from tests.jobs_fixtures import TINY_NET, install_fake_caffe, make_dataset_dir
from tests.web_helpers import write_weights
from caffeseg.web import create_app

JSON = {"X-Requested-With": "test"}


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    fake = FakeBackend(tmp_path / "jobs")
    app = create_app({"DATA_DIR": str(data), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()],
                      "WTF_CSRF_ENABLED": False, "TESTING": True})
    ds = fake.add_job("dataset", "sunny")
    model = fake.add_job("model", "m1", dataset_id=ds, group="g")
    return app.test_client(), fake, ds, model, data


def test_job_page_panels_and_inline_edit(env):
    client, fake, ds, model, _ = env
    html = client.get(f"/models/{model}").get_data(as_text=True)
    for marker in ('id="job-edit-form"', 'id="job-timeline"', 'data-status="Running"', 'id="job-disk-size"',
                   'data-relation="dataset"', 'id="job-pretrained"', 'id="make-pretrained-form"', 'id="test-many-link"'):
        assert marker in html, marker
    assert "1.2 KB" in html and "1m 00s" in html  # the fake's 1234 bytes; Running for 60 s
    dataset_html = client.get(f"/datasets/{ds}").get_data(as_text=True)
    assert 'data-relation="model"' in dataset_html and "m1" in dataset_html
    resp = client.post(f"/jobs/{model}/edit", data={"name": "renamed", "notes": "lr too high", "group": "g2"})
    assert resp.status_code == 302 and fake.calls[-1] == ("edit_job", model, {"name": "renamed", "notes": "lr too high",
                                                                               "group": "g2"})
    html = client.get(f"/models/{model}").get_data(as_text=True)
    assert 'id="job-notes"' in html and "lr too high" in html
    resp = client.post(f"/jobs/{model}/edit", data={"name": " "}, follow_redirects=True)
    assert "1-256 characters" in resp.get_data(as_text=True)


def test_info_page_and_api(env):
    client, *_ = env
    html = client.get("/info").get_data(as_text=True)
    assert "fake-host" in html and "Fake CPU" in html and "not found (run `make caffe`)" in html
    assert 'id="nav-info"' in client.get("/").get_data(as_text=True)
    info = client.get("/api/info").get_json()
    assert info["server"] == "fake-host" and info["engine_version"] == "1.0.0"


def test_digits_json_urls(env):
    client, fake, ds, model, _ = env
    index = client.get("/index.json").get_json()
    assert {d["id"] for d in index["datasets"]} == {ds} and index["models"] == [{"id": model, "name": "m1",
                                                                                  "status": "Done"}]
    assert index["server_name"] == "fake-host" and "jobs_dir" in index
    completed = client.get("/completed_jobs.json").get_json()
    assert set(completed) == {"running", "datasets", "models", "pretrained_models", "model_output_fields"}
    [m] = completed["models"]
    assert m["id"] == model and m["type"] == "model" and m["dataset_id"] == ds and m["progress"] == 100
    assert m["loss (train) last"] == 0.5 and m["loss (train) min"] == 0.4 and m["loss (train) max"] == 0.9
    assert "loss (train) last" in completed["model_output_fields"] and m["status_css"] == "ok"
    assert client.get(f"/jobs/{model}/table_data.json").get_json()["job"]["name"] == "m1"
    assert client.get(f"/models/{model}/status").get_json() == {"error": None, "status": "Done", "name": "m1",
                                                                "type": "Generic Image Model"}
    assert client.get("/jobs/20990101-000000-dead/status").get_json() == {"error": "Job not found."}
    shown = client.get(f"/models/{model}.json").get_json()
    assert shown["id"] == model and shown["snapshots"] == [1.0] and shown["directory"] and shown["framework"] == "caffe"
    dataset = client.get(f"/datasets/{ds}.json").get_json()
    assert dataset["image dimensions"] == [32, 32, 1] and dataset["classes"] == ["background", "lv"]
    assert client.get(f"/models/{model}").status_code == 200  # the page URL is still the page


def test_digits_state_changing_urls(env):
    client, fake, ds, model, _ = env
    assert client.put(f"/jobs/{model}", data={"job_name": "new name", "job_notes": "n"}).get_data(as_text=True) \
        == "Model updated."
    assert fake.jobs_[model]["name"] == "new name" and fake.jobs_[model]["notes"] == "n"
    other = fake.add_job("model", "m2", dataset_id=ds)
    assert client.post("/group", data={"group_name": "sweep", "job_ids[]": [model, other]}).get_data(as_text=True) \
        == "Jobs regrouped."
    assert fake.jobs_[model]["group"] == fake.jobs_[other]["group"] == "sweep"
    assert client.post("/abort_jobs", data={"job_ids[]": [other]}).get_data(as_text=True) == "Jobs aborted."
    assert client.post(f"/jobs/{model}/abort").get_data(as_text=True) == "Job aborted."
    bad = client.delete("/jobs", data={"job_ids[]": [other, "20990101-000000-dead"]})
    assert bad.status_code == 400 and other not in fake.jobs_
    # a browser form of another site may not change anything here
    refused = client.post("/abort_jobs", data={"job_ids[]": [model]}, headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    assert client.delete(f"/models/{model}").get_data(as_text=True) == "Job deleted."
    assert client.get(f"/clone/{ds}").status_code == 302
    resp = client.get(f"/models/{fake.add_job('model', 'm3', dataset_id=ds)}/download.zip")
    assert resp.status_code == 200 and resp.headers["Content-Disposition"].endswith(".zip")


def test_json_api_additions(env):
    client, fake, ds, model, _ = env
    edited = client.put(f"/api/jobs/{model}", json={"notes": "from a script", "group": "api"}).get_json()
    assert edited["notes"] == "from a script" and edited["group"] == "api"
    refused = client.put(f"/api/jobs/{model}", json={"status": "Done"})
    assert refused.status_code == 400 and refused.get_json()["fields"] == {"status": "unknown field"}
    assert client.put(f"/api/jobs/{model}", data={"notes": "x"}).status_code == 403  # a form post: refused
    result = client.post("/api/jobs/bulk", json={"action": "group", "job_ids": [model, "nope"], "group": "x"}).get_json()
    assert result["done"] == [model] and "nope" in result["errors"]
    details = client.get(f"/api/jobs/{model}/details").get_json()
    assert [t["status"] for t in details["timeline"]] == ["Waiting", "Running", "Done"] and details["disk_bytes"] == 1234
    made = client.post(f"/api/jobs/{model}/make-pretrained", json={"name": "mine"})
    assert made.status_code == 201 and fake.calls[-1] == ("make_pretrained", model, None, "mine")


def test_test_many_form_result_and_api(env):
    client, fake, ds, model, data = env
    assert 'id="test-many-form"' in client.get(f"/models/{model}/test-many").get_data(as_text=True)
    resp = client.post(f"/models/{model}/test-many", data={"folder": str(data), "probabilities": "1"})
    assert resp.status_code == 302
    assert fake.calls[-1] == ("test_many", model, {"folder": str(data)},
                              {"snapshot": None, "probabilities": True})
    html = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert 'id="tm-table"' in html and "img0.png" in html and 'id="tm-csv"' in html
    none = client.post(f"/models/{model}/test-many", data={})
    assert none.status_code == 400 and "exactly one" in none.get_data(as_text=True)
    upload = client.post(f"/models/{model}/test-many", data={"images": [(io.BytesIO(b"png"), "a.png"),
                                                                         (io.BytesIO(b"png"), "b.png")]},
                         content_type="multipart/form-data")
    assert upload.status_code == 302
    staged = fake.calls[-1][2]["paths"]
    assert len(staged) == 2 and all(p.startswith(str(data / "test-uploads")) for p in staged)
    started = client.post(f"/api/jobs/{model}/test-many", json={"dataset_stage": "val", "resize": [16, 16]})
    assert started.status_code == 202
    body = started.get_json()
    assert "folder" not in body and body["csv"].endswith("/results.csv")
    assert body["rows"][0]["files"]["class_map"].endswith("/class_maps/0.png")
    assert client.get(f"/api/jobs/{model}/test-many/{body['id']}").get_json()["status"]["state"] == "Done"
    assert client.get(f"/api/jobs/{model}/test-many/t-0000000999").status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"dataset_stage": "val", "resize": [16]}, "resize"),
    ({"dataset_stage": "val", "resize": "16x16"}, "resize"),
    ({"dataset_stage": "val", "resize": [True, 16]}, "resize"),
    ({"dataset_stage": "val", "snapshot": "latest"}, "snapshot"),
    ({"dataset_stage": "val", "probabilites": True}, "probabilites"),  # misspelt: not silently ignored
])
def test_test_many_json_bad_values_are_refused_by_field(env, body, field):
    client, fake, _ds, model, _ = env
    calls = len(fake.calls)
    resp = client.post(f"/api/jobs/{model}/test-many", json=body)
    assert resp.status_code == 400 and field in resp.get_json()["fields"]
    assert len(fake.calls) == calls  # nothing started


def test_test_many_json_needs_exactly_one_source_like_the_form(env):
    client, fake, _ds, model, data = env
    for body in ({}, {"folder": str(data), "dataset_stage": "val"}):
        resp = client.post(f"/api/jobs/{model}/test-many", json=body)
        assert resp.status_code == 400 and "exactly one" in resp.get_json()["error"]
    assert not [c for c in fake.calls if c[0] == "test_many"]


# -- on the real jobs service ----------------------------------------------------------------------

@pytest.fixture
def real(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", install_fake_caffe(str(tmp_path / "fake")))
    monkeypatch.setenv("FAKE_CAFFE_CALLS", str(tmp_path / "calls.jsonl"))
    data = tmp_path / "data"
    data.mkdir()

    def make(**config):
        app = create_app(dict({"DATA_DIR": str(data), "WTF_CSRF_ENABLED": False, "START_WORKER": False}, **config))
        return app, app.extensions["caffeseg_backend"].service
    return make, tmp_path, data


def _model(svc, tmp_path, owner):
    ds = svc.import_dataset(make_dataset_dir(str(tmp_path / ("built-" + owner))), "d-" + owner, owner=owner)
    [job] = svc.create_model({"dataset_id": ds["id"], "network_text": TINY_NET, "epochs": 4, "name": "m-" + owner},
                             owner=owner)
    return ds, job


def test_login_owner_checks_and_navbar(real):
    make, tmp_path, _ = real
    app, svc = make(LOGIN=True)
    client = app.test_client()
    ds, alice_job = _model(svc, tmp_path, "alice")
    # not logged in: pages are readable, changes are sent to the login page (the API: 401)
    assert client.get(f"/models/{alice_job['id']}").status_code == 200
    assert 'id="nav-login"' in client.get("/").get_data(as_text=True)
    resp = client.post(f"/jobs/{alice_job['id']}/edit", data={"name": "x"})
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    assert client.post("/api/jobs/bulk", json={"action": "abort", "job_ids": []}).status_code == 401
    assert client.post("/login", data={"username": "../bob"}).status_code == 400
    resp = client.post("/login", data={"username": "bob", "next": "https://evil.example/"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/"  # never an open redirect
    assert "bob" in client.get("/").get_data(as_text=True)
    # bob may not change alice's job …
    assert client.put(f"/api/jobs/{alice_job['id']}", json={"name": "bob's now"}).status_code == 403
    assert client.delete(f"/jobs/{alice_job['id']}").status_code == 403
    result = client.post("/api/jobs/bulk", json={"action": "delete", "job_ids": [alice_job["id"]]}).get_json()
    assert "belongs to alice" in result["errors"][alice_job["id"]]
    assert svc.show(alice_job["id"])["name"] == "m-alice"
    # … but may view, clone and make his own jobs
    assert client.get(f"/models/{alice_job['id']}/clone").status_code == 200
    client.post("/logout")
    client.post("/login", data={"username": "alice"})
    assert client.put(f"/api/jobs/{alice_job['id']}", json={"name": "mine"}).get_json()["name"] == "mine"
    details = client.get(f"/api/jobs/{alice_job['id']}/details").get_json()
    assert details["owner"] == "alice"


def test_shared_secret_and_proxy_header(real):
    make, tmp_path, _ = real
    app, _ = make(LOGIN=True, LOGIN_SECRET="lab-secret")
    client = app.test_client()
    assert 'id="secret"' in client.get("/login").get_data(as_text=True)
    assert client.post("/login", data={"username": "bob", "secret": "wrong"}).status_code == 400
    assert client.post("/login", data={"username": "bob", "secret": "lab-secret"}).status_code == 302
    app2, svc2 = make(REMOTE_USER_HEADER="X-Remote-User")
    client2 = app2.test_client()
    ds, carol_job = _model(svc2, tmp_path, "carol")
    assert client2.put(f"/api/jobs/{carol_job['id']}", json={"notes": "n"}).status_code == 401
    assert client2.put(f"/api/jobs/{carol_job['id']}", json={"notes": "n"},
                       headers={"X-Remote-User": "dave"}).status_code == 403
    assert client2.put(f"/api/jobs/{carol_job['id']}", json={"notes": "n"},
                       headers={"X-Remote-User": "carol"}).get_json()["notes"] == "n"


def test_without_login_everyone_is_the_local_user(real):
    make, tmp_path, _ = real
    app, svc = make()
    client = app.test_client()
    ds, job = _model(svc, tmp_path, "alice")
    assert 'id="nav-user"' not in client.get("/").get_data(as_text=True)
    assert client.put(f"/api/jobs/{job['id']}", json={"name": "anyone may"}).get_json()["name"] == "anyone may"
    assert client.get("/login").status_code == 302


def test_make_pretrained_and_archive_upload_on_the_real_service(real):
    make, tmp_path, data = real
    app, svc = make()
    client = app.test_client()
    ds, job = _model(svc, tmp_path, "alice")
    assert svc.train(job["id"]) == "Done"
    from caffeseg.jobs.infer import latest_snapshot
    write_weights(latest_snapshot(job["dir"]), {"conv1": [np.ones((4, 1, 3, 3), np.float32), np.zeros(4, np.float32)]})
    resp = client.post(f"/models/{job['id']}/to_pretrained", data={"name": "from m"})
    assert resp.status_code == 302 and "tab=pretrained" in resp.headers["Location"]
    [entry] = [p for p in client.get("/api/pretrained").get_json() if p.get("kind") == "uploaded"]
    assert entry["name"] == "from m"
    layers = client.get(f"/api/pretrained/{entry['id']}/layers").get_json()
    assert layers["layers"][0]["shapes"] == [[4, 1, 3, 3], [4]]
    archive = client.get(f"/models/{job['id']}/download.zip")
    assert archive.status_code == 200
    info = json.loads(__import__("zipfile").ZipFile(io.BytesIO(archive.data)).read("info.json"))
    assert info["snapshot file"].startswith("snapshot_iter_") and info["username"] == "alice"
    up = client.post("/pretrained/archive", data={"archive": (io.BytesIO(archive.data), "m.zip"), "name": "round trip"},
                     content_type="multipart/form-data")
    assert up.status_code == 302
    names = {p["name"] for p in client.get("/api/pretrained").get_json() if p.get("kind") == "uploaded"}
    assert names == {"from m", "round trip"}
    bad = client.post("/api/pretrained/archive", data={"archive": (io.BytesIO(b"not an archive"), "x.zip")},
                      content_type="multipart/form-data", headers=JSON)
    assert bad.status_code == 400 and "not a tar" in bad.get_json()["error"]
    page = client.get("/pretrained/archive").get_data(as_text=True)
    assert 'id="archive-form"' in page
    assert os.path.isdir(data / "pretrained" / "uploaded")


def test_rmsprop_decay_field_reaches_the_solver_and_comes_back_on_clone(tmp_path):
    from tests.test_web_integration import _built_dataset
    data = tmp_path / "data"
    data.mkdir()
    app = create_app({"DATA_DIR": str(data), "WTF_CSRF_ENABLED": False, "START_WORKER": False})
    client, svc = app.test_client(), app.extensions["caffeseg_backend"].service
    ds = svc.import_dataset(str(_built_dataset(tmp_path / "built")), "imported")
    assert 'name="rms_decay"' in client.get("/models/new").get_data(as_text=True)
    form = {"dataset": ds["id"], "epochs": "1", "snapshot_interval": "1", "val_interval": "1",
            "batch_accumulation": "1", "solver_type": "RMSProp", "rms_decay": "0.95", "base_lr": "0.01",
            "lr_policy": "fixed", "lr_step_size": "33", "lr_gamma": "0.1", "lr_power": "0.75", "lr_step_values": "50,85",
            "mean_subtraction": "none", "network_source": "custom", "custom_network": TINY_NET, "model_name": "rms"}
    resp = client.post("/models/new", data=form)
    assert resp.status_code == 302, resp.get_data(as_text=True)
    [job] = svc.list_jobs("model")
    solver = open(os.path.join(job["dir"], "solver.prototxt")).read()
    assert "rms_decay: 0.95" in solver and 'type: "RMSProp"' in solver
    assert 'value="0.95"' in client.get(f"/models/{job['id']}/clone").get_data(as_text=True)
    bad = client.post("/models/new", data=dict(form, rms_decay="1.5", model_name="bad"))
    assert bad.status_code == 400 and len(svc.list_jobs("model")) == 1


def test_layer_pictures_in_the_inference_result(tmp_path, monkeypatch):
    """DIGITS' "Show visualizations": each blob's activation grid is stored beside the result and
    shown in the layer table."""
    from caffeseg.jobs import infer as inf
    from tests.test_jobs_eval_infer_export import FakeCaffe, job as job_fixture  # noqa: F401
    from tests.test_jobs_eval_infer_export import write_db
    monkeypatch.setattr(inf, "get_caffe", lambda backend="auto": FakeCaffe)
    ds = make_dataset_dir(str(tmp_path / "ds"), train=2, val=2)
    images = [np.zeros((1, 8, 8), np.uint8) for _ in range(2)]
    images[0][0, 2:6, 2:6] = 200
    for stage in ("train", "val"):
        write_db(os.path.join(ds, "%s_db" % stage, "features"), images)
        write_db(os.path.join(ds, "%s_db" % stage, "labels"), [np.zeros((1, 8, 8), np.uint8)] * 2)
    data = tmp_path / "data"
    data.mkdir()
    app = create_app({"DATA_DIR": str(data), "WTF_CSRF_ENABLED": False, "START_WORKER": False})
    client, svc = app.test_client(), app.extensions["caffeseg_backend"].service
    dataset = svc.import_dataset(ds, "d")
    [m] = svc.create_model({"dataset_id": dataset["id"], "network_text": TINY_NET, "epochs": 1})
    open(os.path.join(m["dir"], "snapshot_iter_1.caffemodel"), "wb").write(b"w")
    result = client.post(f"/api/jobs/{m['id']}/infer", json={"record": "00000000", "visualize": True}).get_json()
    data_row = next(layer for layer in result["layers"] if layer["name"] == "data")
    assert data_row["picture"] and "png" not in data_row
    picture = client.get(f"/models/{m['id']}/inference/{result['token']}/{data_row['picture']}.png")
    import cv2
    decoded = cv2.imdecode(np.frombuffer(picture.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert picture.status_code == 200 and decoded.shape == (8, 8) and decoded[3, 3] == 255 and decoded[0, 0] == 0
    page = client.get(result["page"]).get_data(as_text=True)
    assert 'class="layer-picture"' in page
    assert client.get(f"/models/{m['id']}/inference/{result['token']}/layer-x.png").status_code == 404


def test_new_model_for_a_plugin_offers_only_its_datasets(env):
    client, fake, ds, model, _ = env
    sunny = fake.add_job("dataset", "sunny lv", plugin="sunnybrook")
    voc = fake.add_job("dataset", "voc", plugin="image_segmentation")
    html = client.get("/models/new?plugin=sunnybrook").get_data(as_text=True)
    assert f'value="{sunny}"' in html and f'value="{voc}"' not in html and 'id="plugin-filter"' in html
    every = client.get("/models/new").get_data(as_text=True)
    assert f'value="{sunny}"' in every and f'value="{voc}"' in every and 'id="plugin-filter"' not in every


def test_home_table_every_metric_column_chooser_and_move_to_group(env):
    client, fake, ds, model, _ = env
    fake.jobs_[model]["metrics"] = {"train/loss": {"last": 0.5, "min": 0.4, "max": 0.9, "spark": [0.9, 0.5]},
                                    "val/dice": {"last": 0.8, "min": 0.2, "max": 0.8, "spark": [0.2, 0.8]},
                                    "train/accuracy": {"last": 0.9, "min": 0.5, "max": 0.9, "spark": [0.5, 0.9]}}
    html = client.get("/?tab=model").get_data(as_text=True)
    for name in ("val/dice", "train/loss", "train/accuracy"):
        assert f'data-col-toggle="{name}"' in html
    assert 'data-metric="train/accuracy" data-default-hidden' in html  # neither val nor the loss: chooser
    assert 'data-metric="val/dice" data-value="0.8"' in html and 'class="job-filter"' in html
    assert html.index('data-col-toggle="val/dice"') < html.index('data-col-toggle="train/loss"')
    assert 'class="linklike group-toggle"' in html and "home_tables.js" in html
    resp = client.post("/jobs/bulk", data={"action": "group", "group_name": "round 2", "job_ids": [model], "tab": "model"})
    assert resp.status_code == 302 and fake.calls[-1] == ("bulk_jobs", "group", [model], "round 2")
    assert fake.jobs_[model]["group"] == "round 2"


def test_upload_form_digits_fields_and_the_layers_page(env, tmp_path):
    client, fake, ds, model, _ = env
    weights = tmp_path / "w.caffemodel"
    write_weights(weights, {"conv1": [np.ones((4, 1, 3, 3), np.float32), np.zeros(4, np.float32)]})
    form = {"name": "with fields", "description": "", "prototxt": (io.BytesIO(TINY_NET.encode()), "net.prototxt"),
            "weights": (io.BytesIO(weights.read_bytes()), "w.caffemodel"),
            "labels_file": (io.BytesIO(b"background\nlv\n"), "labels.txt"), "image_type": "gray",
            "resize_mode": "crop", "image_width": "64", "image_height": "48"}
    resp = client.post("/pretrained/upload", data=form, content_type="multipart/form-data")
    assert resp.status_code == 302, resp.get_data(as_text=True)
    [entry] = [p for p in fake.pretrained_models() if p["kind"] == "uploaded"]
    assert entry["labels"] == ["background", "lv"]
    assert entry["image"] == {"channels": 1, "type": "gray", "resize_mode": "crop", "width": 64, "height": 48}
    home = client.get("/?tab=pretrained").get_data(as_text=True)
    assert 'name="labels_file"' in home and 'name="resize_mode"' in home and "2 labels" in home
    assert 'id="upload-archive-link"' in home
    page = client.get(f"/pretrained/{entry['id']}/layers").get_data(as_text=True)
    assert 'data-layer="conv1"' in page and "4×1×3×3" in page and "40 parameters in all" in page
    picture = client.get(f"/pretrained/{entry['id']}/layers/conv1.png")
    assert picture.status_code == 200 and picture.data[:4] == b"\x89PNG"
    assert client.get(f"/pretrained/{entry['id']}/layers/fc9.png").status_code == 404
    assert client.get("/pretrained/up-000000000000/layers").status_code == 404


def _fake_net_model_app(tmp_path, monkeypatch, image):
    """(test client, data folder, model job): the real app on a 2+2-record dataset whose features
    are ``image`` (1×8×8 uint8), with a TINY_NET model of one snapshot run by FakeCaffe."""
    from caffeseg.jobs import infer as inf
    from tests.test_jobs_eval_infer_export import FakeCaffe, write_db
    monkeypatch.setattr(inf, "get_caffe", lambda backend="auto": FakeCaffe)
    ds = make_dataset_dir(str(tmp_path / "ds"), train=2, val=2)
    for stage in ("train", "val"):
        write_db(os.path.join(ds, "%s_db" % stage, "features"), [image, image])
        write_db(os.path.join(ds, "%s_db" % stage, "labels"), [np.zeros((1, 8, 8), np.uint8)] * 2)
    data = tmp_path / "data"
    data.mkdir()
    app = create_app({"DATA_DIR": str(data), "WTF_CSRF_ENABLED": False, "START_WORKER": False})
    client, svc = app.test_client(), app.extensions["caffeseg_backend"].service
    [m] = svc.create_model({"dataset_id": svc.import_dataset(ds, "d")["id"], "network_text": TINY_NET, "epochs": 1})
    open(os.path.join(m["dir"], "snapshot_iter_1.caffemodel"), "wb").write(b"w")
    return client, data, m


def test_infer_without_resize_from_a_server_path_and_the_threshold_input(tmp_path, monkeypatch):
    import cv2
    client, data, m = _fake_net_model_app(tmp_path, monkeypatch, np.zeros((1, 8, 8), np.uint8))
    picture = np.zeros((10, 12), np.uint8)
    picture[2:4, 3:9] = 200
    cv2.imwrite(str(data / "wide.png"), picture)
    page = client.get(f"/models/{m['id']}/infer").get_data(as_text=True)
    assert 'name="no_resize"' in page and 'name="server_path"' in page

    def infer(**form):
        resp = client.post(f"/models/{m['id']}/infer", data=dict({"snapshot": "1", "which": "image"}, **form))
        assert resp.status_code == 302, resp.get_data(as_text=True)
        token = resp.headers["Location"].rsplit("/", 1)[1]
        import json as _json
        return token, _json.loads(open(os.path.join(m["dir"], "inference", token, "result.json")).read())

    token, kept = infer(server_path=str(data / "wide.png"), no_resize="y")
    assert kept["shape"] == [10, 12] and kept["not_resized"] and kept["has_probability"]
    assert (data / "wide.png").is_file()  # the server's file is left alone
    probability = client.get(f"/models/{m['id']}/inference/{token}/probability.png")
    decoded = cv2.imdecode(np.frombuffer(probability.data, np.uint8), cv2.IMREAD_UNCHANGED)
    # the fake net: p(lv) = 1 / (1 + e^(0.5 - x)) for the preprocessed pixel x (200 or 0), as 8 bits
    assert decoded[2, 3] == round(255 / (1 + np.exp(0.5 - 200))) and decoded[0, 0] == round(255 / (1 + np.exp(0.5)))
    _, squashed = infer(server_path=str(data / "wide.png"))
    assert squashed["shape"] == [8, 8] and squashed["resized_from"] == [12, 10]
    outside = client.post(f"/models/{m['id']}/infer", data={"snapshot": "1", "which": "image",
                                                            "server_path": str(tmp_path / "ds" / "dataset.json")})
    assert outside.status_code == 400 and "outside the allowed data folders" in outside.get_data(as_text=True)


def test_inference_json_gives_probabilities_when_asked(tmp_path, monkeypatch):
    image = np.zeros((1, 8, 8), np.uint8)
    image[0, :2, :3] = 200
    client, _, m = _fake_net_model_app(tmp_path, monkeypatch, image)
    plain = client.post(f"/api/jobs/{m['id']}/infer", json={"record": "00000000"}).get_json()
    assert "probabilities" not in plain["urls"] and plain["urls"]["prediction"].endswith("/prediction.png")
    asked = client.post(f"/api/jobs/{m['id']}/infer", json={"record": "00000001", "probabilities": True}).get_json()
    npy = client.get(asked["urls"]["probabilities"])
    probs = np.load(io.BytesIO(npy.data))
    assert npy.status_code == 200 and probs.dtype == np.float16 and probs.shape == (2, 8, 8)
    # the fake net's softmax of (0.5, x): p(lv) = 1 / (1 + e^(0.5 - x)), x = 200 on the block, 0 elsewhere
    assert float(probs[1, 0, 0]) == pytest.approx(1.0, abs=1e-3)
    assert float(probs[1, 5, 5]) == pytest.approx(1 / (1 + np.exp(0.5)), abs=1e-3)
    assert np.allclose(probs.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)


def test_digits_create_model_post_with_its_field_names(env):
    client, fake, ds, model, _ = env
    form = {"dataset": ds, "model_name": "from a DIGITS script", "train_epochs": "5", "learning_rate": "0.001",
            "solver_type": "NESTEROV", "lr_policy": "exp", "lr_exp_gamma": "0.95", "lr_step_gamma": "0.1",
            "method": "standard", "standard_networks": "fcn_tiny", "framework": "caffe", "batch_size": "4",
            "use_mean": "image", "group_name": "scripts"}
    resp = client.post("/models/images/generic.json", data=form)
    assert resp.status_code == 200, resp.get_data(as_text=True)[-800:]
    made = resp.get_json()
    assert made["name"].startswith("from a DIGITS script") and made["status"] == "Running"
    options = fake.calls[-1][1]
    assert (options["epochs"], options["base_lr"], options["solver_type"], options["lr_policy"]) == \
        (5, [0.001], "Nesterov", "exp")
    assert options["lr_gamma"] == 0.95 and options["standard_network"] == "fcn_tiny"  # exp's gamma, not step's
    assert options["batch_size"] == [4] and options["mean_subtraction"] == "image" and options["group_name"] == "scripts"
    bad = client.post("/models/images/generic.json", data=dict(form, train_epochs="0"))
    assert bad.status_code == 400 and "epochs" in bad.get_json()["fields"]
    odd = client.post("/models/images/generic.json", data=dict(form, no_such_field="1"))
    assert odd.status_code == 400 and "no_such_field" in odd.get_json()["error"]
    page = client.post("/models/images/generic", data=form)
    assert page.status_code == 302 and "/models/" in page.headers["Location"]
