"""The web on the real jobs service: an imported dataset, model creation, clone, delete rules.

Training itself is the jobs suite's business (and the full browser test's); here the worker is
off, so a created model stays Waiting and nothing slow runs."""
from __future__ import annotations

import json
import os
import re
import threading
import time

import numpy as np
import pytest

from tests.jobs_fixtures import write_dataset_json
from caffeseg.web import create_app
from web_helpers import write_lmdb_dataset

TINY_NET = """name: "tiny"
layer { name: "train_data" type: "Data" top: "data" include { stage: "train" } data_param { batch_size: 2 } }
layer { name: "train_label" type: "Data" top: "label" include { stage: "train" } data_param { batch_size: 2 } }
layer { name: "val_data" type: "Data" top: "data" include { stage: "val" } data_param { batch_size: 2 } }
layer { name: "val_label" type: "Data" top: "label" include { stage: "val" } data_param { batch_size: 2 } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" exclude { stage: "deploy" } }
"""


def _built_dataset(folder):
    """A dataset folder as the builder writes it: LMDBs of Datums, mean, dataset.json."""
    from caffeseg.engine.blobproto import write_binaryproto
    counts = {"train": 4, "val": 2}
    write_lmdb_dataset(folder, counts, side=16, scale=16, box=(4, 9))
    write_binaryproto(str(folder / "mean.binaryproto"), np.full((1, 16, 16), 2000.0, np.float32))
    write_dataset_json(str(folder), counts, [1, 16, 16], records={
        "val": [{"key": "00000000", "case": "SC-HF-NI-3", "image_no": 48},
                {"key": "00000001", "case": "SC-HF-NI-3", "image_no": 68}]})
    return folder


@pytest.fixture
def site(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    app = create_app({"DATA_DIR": str(data), "DATA_ROOTS": [str(data), str(tmp_path / "sample")],
                      "WTF_CSRF_ENABLED": False, "START_WORKER": False})
    backend = app.extensions["caffeseg_backend"]
    svc = backend.service
    ds = svc.import_dataset(str(_built_dataset(tmp_path / "built")), "imported")
    return app.test_client(), svc, ds, data


def test_home_and_dataset_pages_on_the_real_service(site):
    client, svc, ds, _ = site
    html = client.get("/").get_data(as_text=True)
    assert "imported" in html and "Done" in html
    html = client.get(f"/datasets/{ds['id']}").get_data(as_text=True)
    assert "uint16" in html and "mean.binaryproto" in html and ds["dir"] in html
    html = client.get(f"/datasets/{ds['id']}/explore?stage=val").get_data(as_text=True)
    assert "SC-HF-NI-3 / 0048" in html and "SC-HF-NI-3 / 0068" in html
    png = client.get(f"/datasets/{ds['id']}/records/val/1/feature.png")
    assert png.status_code == 200 and png.data[:4] == b"\x89PNG"
    assert client.get(f"/datasets/{ds['id']}/records/val/1/label.png").status_code == 200
    html = client.get(f"/datasets/{ds['id']}/clone").get_data(as_text=True)
    assert "imported (clone)" in html and 'name="image_folder"' in html


def test_model_creation_clone_and_delete_rules(site):
    client, svc, ds, data = site
    (data / "layers.py").write_text("import caffe\n")
    form = {"dataset": ds["id"], "epochs": "2", "snapshot_interval": "1", "val_interval": "1",
            "batch_accumulation": "2", "solver_type": "Adam", "base_lr": "0.01, 0.001", "lr_policy": "step",
            "lr_step_size": "50", "lr_gamma": "0.5", "lr_power": "0.75", "lr_step_values": "50,85",
            "mean_subtraction": "image", "network_source": "custom", "custom_network": TINY_NET,
            "python_layer_server_file": str(data / "layers.py"), "model_name": "sweep", "group_name": "g"}
    resp = client.post("/models/new", data=form)
    assert resp.status_code == 302, resp.get_data(as_text=True)
    models = svc.list_jobs("model")
    assert sorted(m["name"] for m in models) == ["sweep lr=0.001", "sweep lr=0.01"]
    job = svc.show(models[0]["id"])
    assert job["status"] == "Waiting"  # submitted for the worker
    solver = open(f"{job['dir']}/solver.prototxt").read()
    assert 'type: "Adam"' in solver and "iter_size: 2" in solver and 'lr_policy: "step"' in solver
    train_val = open(f"{job['dir']}/train_val.prototxt").read()
    assert "mean_file" in train_val and "backend: LMDB" in train_val
    # The model page and its metrics API work before the first iteration.
    html = client.get(f"/models/{job['id']}").get_data(as_text=True)
    assert "sweep lr=" in html and "train_val.prototxt" in html and "layers.py" in html
    metrics = client.get(f"/api/jobs/{job['id']}/metrics?since=0").get_json()
    assert metrics["series"] == {} and metrics["status"] == "Waiting"
    # Clone shows the form filled with the job's options.
    html = client.get(f"/models/{job['id']}/clone").get_data(as_text=True)
    assert 'value="2"' in html and "Adam" in html and 'name: &#34;tiny&#34;' in html
    assert re.search(r'<option selected value="step">|<option value="step" selected', html)
    # A dataset used by models cannot be deleted; the message names the models.
    resp = client.post(f"/datasets/{ds['id']}/delete", follow_redirects=True)
    assert "used by model" in resp.get_data(as_text=True)
    client.post(f"/models/{job['id']}/abort")
    assert svc.show(job["id"])["status"] == "Aborted"


def test_service_field_errors_go_beside_the_form_fields(site):
    client, svc, ds, _ = site
    form = {"dataset": ds["id"], "epochs": "1", "snapshot_interval": "1", "val_interval": "1",
            "batch_accumulation": "1", "solver_type": "SGD", "base_lr": "0.01", "lr_policy": "fixed",
            "mean_subtraction": "none", "network_source": "custom",
            "custom_network": TINY_NET.replace('bottom: "data" top: "score"', 'bottom: "nothing" top: "score"'),
            "model_name": "broken"}
    resp = client.post("/models/new", data=form)
    assert resp.status_code == 400
    assert "nothing" in resp.get_data(as_text=True)
    assert svc.list_jobs("model") == []


def test_uploaded_python_layer_is_stored_in_the_job(site):
    import io
    client, svc, ds, _ = site
    form = {"dataset": ds["id"], "epochs": "1", "snapshot_interval": "1", "val_interval": "1",
            "batch_accumulation": "1", "solver_type": "SGD", "base_lr": "0.01", "lr_policy": "fixed",
            "mean_subtraction": "pixel", "network_source": "custom", "custom_network": TINY_NET,
            "model_name": "with layer", "python_layer_upload": (io.BytesIO(b"import caffe\n"), "my_layers.py")}
    resp = client.post("/models/new", data=form, content_type="multipart/form-data")
    assert resp.status_code == 302, resp.get_data(as_text=True)
    job = svc.list_jobs("model")[0]
    assert open(f"{job['dir']}/my_layers.py").read() == "import caffe\n"
    assert "mean_value" in open(f"{job['dir']}/train_val.prototxt").read()
    staging = client.application.config["JOBS_DIR"] + "/.uploads"
    import os
    assert not os.path.exists(staging) or os.listdir(staging) == []


def _pretrained_form(ds_id, pretrained_id, **over):
    form = {"dataset": ds_id, "epochs": "1", "snapshot_interval": "1", "val_interval": "1",
            "batch_accumulation": "1", "solver_type": "SGD", "base_lr": "0.01", "lr_policy": "fixed",
            "mean_subtraction": "none", "network_source": "pretrained", "pretrained_network": pretrained_id,
            "model_name": "from pretrained"}
    form.update(over)
    return form


def test_known_pretrained_models_are_network_sources(site):
    """A known model gives its prototxt/ network and its (gray, for 1-channel data) weights;
    one whose surgery is not done is refused with the commands, not faked."""
    from web_helpers import write_weights
    client, svc, ds, data = site
    store = data.resolve() / "pretrained"
    store.mkdir()
    (store / "bvlc_alexnet.caffemodel").write_bytes(b"w" * 10)
    html = client.get("/?tab=pretrained").get_data(as_text=True)
    assert "bvlc_alexnet" in html and "caffeseg pretrained VGG16" in html
    assert f"caffeseg surgery alexnet-fcn {store / 'bvlc_alexnet.caffemodel'} {store / 'bvlc_alexnet-fcn-gray.caffemodel'} --gray" in html
    html = client.get("/models/new").get_data(as_text=True)
    assert 'name="pretrained_network" value="fcn8s-heavy-pascal"' in html

    # Not converted yet: 400, the message names the surgery; no job is made.
    resp = client.post("/models/new", data=_pretrained_form(ds["id"], "bvlc_alexnet"))
    assert resp.status_code == 400 and "caffeseg surgery alexnet-fcn" in resp.get_data(as_text=True)
    assert svc.list_jobs("model") == []
    # Unknown id: a form error.
    resp = client.post("/models/new", data=_pretrained_form(ds["id"], "no-such-model"))
    assert resp.status_code == 400 and "unknown pretrained network" in resp.get_data(as_text=True)
    api = client.post("/api/models", json=_pretrained_form(ds["id"], "no-such-model"))
    assert api.status_code == 400 and "unknown pretrained network" in api.get_json()["fields"]["network_source"]

    # FCN-8s PASCAL with conv1 summed over RGB (what `prepare(gray=True)` / rgb-to-gray surgery writes).
    gray = store / "fcn8s-heavy-pascal-gray.caffemodel"
    write_weights(gray, {"conv1_1": [np.zeros((64, 1, 3, 3), np.float32), np.zeros(64, np.float32)]})
    resp = client.post("/models/new", data=_pretrained_form(ds["id"], "fcn8s-heavy-pascal"))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    job = svc.show(svc.list_jobs("model")[0]["id"])
    from caffeseg.jobs import resources
    assert open(f"{job['dir']}/original.prototxt").read() == open(resources.network_path("fcn_8s")).read()
    assert job["options"]["pretrained"] == [str(gray)] and job["options"]["standard_network"] == "fcn_8s"
    report = json.load(open(f"{job['dir']}/pretrained_report.json"))
    assert report["matched"] == ["conv1_1"] and report["mismatches"] == []
    # Clone comes back on the Pretrained tab with the same model chosen (weights not duplicated).
    html = client.get(f"/models/{job['id']}/clone").get_data(as_text=True)
    assert re.search(r'id="network_source"[^>]*value="pretrained"|value="pretrained"[^>]*id="network_source"', html)
    assert re.search(r'value="fcn8s-heavy-pascal"[^>]*checked', html)
    assert 'id="pretrained_model" name="pretrained_model" type="text" value=""' in html or \
        str(gray) not in html.split('id="pretrained_model"')[1].split(">")[0]
    # The API gives the same network and weights.
    chosen = client.get(f"/api/pretrained/fcn8s-heavy-pascal/network?dataset={ds['id']}").get_json()
    assert chosen["standard_network"] == "fcn_8s" and chosen["weights"] == str(gray)
    assert chosen["network_text"].startswith('name: "fcn_8s"')
    assert client.get("/api/pretrained/bvlc_alexnet/network").status_code == 400  # no dataset: channels unknown
    assert client.get("/api/pretrained/nope/network").status_code == 404
    assert client.get("/api/pretrained/..%2Fetc/network").status_code in (400, 404)


def test_uploaded_pretrained_model_gives_its_network_and_weights(site):
    import io
    from web_helpers import write_weights
    client, svc, ds, data = site
    weights = data / "w.caffemodel"
    write_weights(weights, {"score": [np.ones((2, 1, 3, 3), np.float32), np.zeros(2, np.float32)]})
    payload = weights.read_bytes()

    def upload(**over):
        form = {"name": "my tiny net", "description": "trained on phantoms",
                "prototxt": (io.BytesIO(TINY_NET.encode()), "tiny.prototxt"),
                "weights": (io.BytesIO(payload), "tiny.caffemodel")}
        form.update(over)
        return client.post("/pretrained/upload", data=form, content_type="multipart/form-data",
                           follow_redirects=True)

    # Refused: missing prototxt, a network that does not parse, weights that match no layer.
    assert "choose the network" in upload(prototxt=None).get_data(as_text=True)
    assert "does not parse" in upload(prototxt=(io.BytesIO(b"layer { nope: 1 }"), "x.prototxt")).get_data(as_text=True)
    other = data / "other.caffemodel"
    write_weights(other, {"fc9": [np.ones((2, 4), np.float32)]})
    text = upload(weights=(io.BytesIO(other.read_bytes()), "o.caffemodel")).get_data(as_text=True)
    assert "no layer of the weights is named as a layer of the network" in text
    assert "a .caffemodel" in upload(weights=(io.BytesIO(payload), "w.bin")).get_data(as_text=True)
    assert not (data / "pretrained" / "uploaded").exists() or not list((data / "pretrained" / "uploaded").iterdir())

    html = upload().get_data(as_text=True)
    assert "Pretrained model my tiny net stored" in html
    [entry] = [p for p in client.get("/api/pretrained").get_json() if p["kind"] == "uploaded"]
    folder = data.resolve() / "pretrained" / "uploaded" / entry["id"]
    assert entry["weights"] == str(folder / "weights.caffemodel") and entry["matched"] == ["score"]
    assert (folder / "weights.caffemodel").read_bytes() == payload  # the name the server chose
    assert f'data-pretrained-id="{entry["id"]}"' in html

    resp = client.post("/models/new", data=_pretrained_form(ds["id"], entry["id"]))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    job = svc.show(svc.list_jobs("model")[0]["id"])
    assert open(f"{job['dir']}/original.prototxt").read() == TINY_NET
    assert job["options"]["pretrained"] == [entry["weights"]]
    assert json.load(open(f"{job['dir']}/pretrained_report.json"))["matched"] == ["score"]
    # The JSON API makes the same job (no more 501).
    api = client.post("/api/models", json=_pretrained_form(ds["id"], entry["id"], model_name="api pretrained"))
    assert api.status_code == 201, api.get_json()
    assert svc.show(api.get_json()["ids"][0])["options"]["pretrained"] == [entry["weights"]]

    # Delete (CSRF form on the home page); known models cannot be deleted this way.
    client.post(f"/pretrained/{entry['id']}/delete")
    assert not folder.exists()
    assert client.delete("/api/pretrained/bvlc_alexnet", headers={"X-Requested-With": "t"}).status_code == 400
    assert client.delete(f"/api/pretrained/{entry['id']}", headers={"X-Requested-With": "t"}).status_code == 404
    resp = client.post("/models/new", data=_pretrained_form(ds["id"], entry["id"]))
    assert resp.status_code == 400 and "unknown pretrained network" in resp.get_data(as_text=True)


def _dataset_form(image_folder, contour_folder, name):
    return {"image_folder": str(image_folder), "contour_folder": str(contour_folder), "channel_conversion": "L",
            "val_percent": "25", "contour_type": "inner", "split_by": "slice", "seed": "0", "encoding": "none",
            "encoder_batch_size": "32", "encoder_threads": "1", "db_backend": "lmdb", "enforce_same_shape": "y",
            "dataset_name": name}


def _finish_builds(svc):
    for thread in list(svc.scheduler._building.values()):
        thread.join(60)


def test_a_failing_dataset_build_shows_its_error_on_the_dataset_page(site):
    from tests.jobs_fixtures import contours_without_images
    client, svc, _, data = site
    (data / "empty_images").mkdir()
    (data / "empty_contours").mkdir()
    # Folders that are not a Sunnybrook release are form errors: nothing is queued.
    resp = client.post("/datasets/new/sunnybrook",
                       data=_dataset_form(data / "empty_images", data / "empty_contours", "nothing here"))
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "is empty" in html
    assert "Please correct the marked fields." in html and "image_folder:" not in html
    assert all(j["name"] != "nothing here" for j in svc.list_jobs("dataset"))
    # Folders laid out like a release whose contours have no images fail in the worker's build.
    resp = client.post("/datasets/new/sunnybrook",
                       data=_dataset_form(*contours_without_images(data / "mismatched"), "nothing here"))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    job_id = resp.headers["Location"].rsplit("/", 1)[1]
    assert svc.show(job_id)["status"] == "Waiting"
    assert svc.scheduler.step() == [job_id]
    _finish_builds(svc)
    job = svc.show(job_id)
    assert job["status"] == "Error"
    html = client.get(f"/datasets/{job_id}").get_data(as_text=True)
    assert "flash-error" in html and "no usable contoured image" in html and "nothing here" in html
    assert "error: " in html  # the job's log ends with the failure


def test_a_dataset_is_queued_then_built_by_the_worker_with_live_progress(site, phantom_release, monkeypatch):
    from caffeseg.plugin.sunnybrook import SunnybrookPlugin
    client, svc, _, data = site
    encode, calls, gate = SunnybrookPlugin.encode, [], threading.Event()

    def gated_encode(self, entry, values):  # the build pauses before its second record
        calls.append(entry)
        if len(calls) == 2:
            gate.wait(30)
        return encode(self, entry, values)
    monkeypatch.setattr(SunnybrookPlugin, "encode", gated_encode)
    resp = client.post("/datasets/new/sunnybrook", data=_dataset_form(*phantom_release, "phantom"))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    job_id = resp.headers["Location"].rsplit("/", 1)[1]
    html = client.get(f"/datasets/{job_id}").get_data(as_text=True)
    assert ">Waiting<" in html and "queued: sunnybrook dataset phantom" in html and calls == []
    assert svc.scheduler.step() == [job_id]
    deadline = time.time() + 30
    while len(calls) < 2 and time.time() < deadline:
        time.sleep(0.02)
    try:
        html = client.get(f"/datasets/{job_id}").get_data(as_text=True)
        status = json.loads(open(f"{svc.show(job_id)['dir']}/build_status.json").read())
        assert status["done_all"] == 1 and status["total_all"] > 1
        assert ">Running<" in html and f"width: {round(100 / status['total_all'], 1)}%" in html
        row = [j for j in client.get("/api/jobs?kind=dataset").get_json() if j["id"] == job_id][0]
        assert row["progress"] == pytest.approx(1 / status["total_all"])
    finally:
        gate.set()
        _finish_builds(svc)
    html = client.get(f"/datasets/{job_id}").get_data(as_text=True)
    assert ">Done<" in html and "mean.binaryproto" in html and "entries to encode" in html
    assert [h[0] for h in svc.show(job_id)["history"]] == ["Initialized", "Waiting", "Running", "Done"]


def test_the_model_form_records_the_backend_a_worker_must_have(site):
    """'Run on' is stored on the job (a pycaffe worker takes only pycaffe/auto jobs); the
    default records nothing, so the app's own worker keeps the job."""
    from caffeseg.jobs import scheduler as sched
    client, svc, ds, _ = site
    base = {"dataset": ds["id"], "epochs": "1", "snapshot_interval": "1", "val_interval": "1",
            "batch_accumulation": "1", "solver_type": "SGD", "base_lr": "0.01", "lr_policy": "fixed",
            "mean_subtraction": "none", "network_source": "custom", "custom_network": TINY_NET}
    assert client.post("/models/new", data=dict(base, model_name="on caffe", backend="pycaffe")).status_code == 302
    assert client.post("/models/new", data=dict(base, model_name="default")).status_code == 302
    api = client.post("/api/models", json=dict(base, model_name="via api", backend="engine"))
    assert api.status_code in (200, 201), api.get_data(as_text=True)
    bad = client.post("/models/new", data=dict(base, model_name="bad", backend="tensorflow"))
    assert bad.status_code == 400 and "Not a valid choice" in bad.get_data(as_text=True)
    recorded = {m["name"]: sched.job_backend(svc.store.get(m["id"])) for m in svc.list_jobs("model")}
    assert recorded == {"on caffe": "pycaffe", "default": None, "via api": "engine"}
    html = client.get(f"/models/{[m for m in svc.list_jobs('model') if m['name'] == 'on caffe'][0]['id']}/clone")
    assert re.search(r'<option selected value="pycaffe">|<option value="pycaffe" selected', html.get_data(as_text=True))


def test_a_known_model_is_prepared_from_the_pretrained_tab(site, tmp_path, monkeypatch):
    """Prepare downloads (from PRETRAINED_MIRRORS), checks and converts on the server; the tab
    shows the outcome and the model becomes a network source."""
    import hashlib
    from caffeseg.jobs import pretrained, pretrained_prepare
    from test_surgery import ALEXNET, random_params, write_classifier
    from test_pretrained_fetch import Handler
    import http.server
    import threading
    client, svc, ds, data = site
    write_classifier(tmp_path / "classifier.caffemodel", random_params(ALEXNET))
    payload = (tmp_path / "classifier.caffemodel").read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.payload, httpd.requests, httpd.cuts_left, httpd.honor_range, httpd.fail_status = payload, [], 0, True, None
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        known = pretrained.KNOWN_MODELS["bvlc_alexnet"]
        monkeypatch.setitem(pretrained.KNOWN_MODELS, "bvlc_alexnet", pretrained.KnownModel(
            **dict(known.__dict__, sha1=hashlib.sha1(payload).hexdigest())))
        backend = client.application.extensions["caffeseg_backend"]
        monkeypatch.setitem(backend.settings, "PRETRAINED_MIRRORS",
                            {"bvlc_alexnet": "http://127.0.0.1:%d/alexnet.caffemodel" % httpd.server_address[1]})
        html = client.get("/?tab=pretrained").get_data(as_text=True)
        assert 'action="/pretrained/known/bvlc_alexnet/prepare"' in html

        assert client.post("/pretrained/known/bvlc_alexnet/prepare", data={"variant": "purple"},
                           follow_redirects=True).status_code == 200  # refused with a message
        assert client.post("/pretrained/known/nope/prepare", data={"variant": "gray"}).status_code == 404
        resp = client.post("/pretrained/known/bvlc_alexnet/prepare", data={"variant": "gray"}, follow_redirects=True)
        assert "Preparing bvlc_alexnet (gray weights)" in resp.get_data(as_text=True)
        store = data.resolve() / "pretrained"
        state = pretrained_prepare.wait(store, "bvlc_alexnet", timeout=60)
        assert state["state"] == "done", state
        assert httpd.requests, "the download came from the configured mirror"
    finally:
        httpd.shutdown()
        httpd.server_close()
    [entry] = [p for p in client.get("/api/pretrained").get_json() if p["id"] == "bvlc_alexnet"]
    assert entry["variants"]["gray"]["ready"] and entry["preparation"]["state"] == "done"
    assert not entry["variants"]["rgb"]["ready"]
    html = client.get("/?tab=pretrained").get_data(as_text=True)
    assert str(store / "bvlc_alexnet-fcn-gray.caffemodel") in html
    chosen = client.get(f"/api/pretrained/bvlc_alexnet/network?dataset={ds['id']}").get_json()
    assert chosen["standard_network"] == "fcn_alexnet"
    assert chosen["weights"] == str(store / "bvlc_alexnet-fcn-gray.caffemodel")
    # The API starts the same work; a bad variant is a 400.
    api = client.post("/api/pretrained/bvlc_alexnet/prepare", json={"variant": "sepia"},
                      headers={"X-Requested-With": "XMLHttpRequest"})
    assert api.status_code == 400


def test_a_refused_pretrained_upload_keeps_what_was_typed(site):
    import io
    client, _, _, _ = site
    resp = client.post("/pretrained/upload", content_type="multipart/form-data",
                       data={"name": "my tiny net", "description": "kept too",
                             "prototxt": (io.BytesIO(b"layer { nope: 1 }"), "x.prototxt"),
                             "weights": (io.BytesIO(b"\x00"), "w.caffemodel")})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "does not parse" in html
    assert 'value="my tiny net"' in html and 'value="kept too"' in html
    assert 'id="panel-pretrained"' in html and 'id="panel-pretrained" hidden' not in html


def _model_form(ds_id, **over):
    form = {"dataset": ds_id, "epochs": "1", "snapshot_interval": "1", "val_interval": "1",
            "batch_accumulation": "1", "solver_type": "SGD", "base_lr": "0.01", "lr_policy": "fixed",
            "mean_subtraction": "none", "network_source": "custom", "custom_network": TINY_NET, "model_name": "m"}
    form.update(over)
    return form


def test_the_model_page_follows_a_training_live_and_drops_the_eta_after_abort(site, tmp_path, monkeypatch):
    """What the model page polls (its live poll and the metrics API) moves while the runner trains:
    progress, elapsed, ETA, snapshots and the log's tail; after Abort no ETA is left."""
    from tests.jobs_fixtures import install_fake_caffe
    client, svc, ds, _ = site
    monkeypatch.setenv("PYTHONPATH", install_fake_caffe(str(tmp_path / "fake")))
    monkeypatch.setenv("FAKE_CAFFE_CALLS", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.1")
    resp = client.post("/models/new", data=_model_form(ds["id"], epochs="30", model_name="live"))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    job_id = resp.headers["Location"].rsplit("/", 1)[1]
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("status", svc.train(job_id)), daemon=True)
    t.start()
    live, deadline = {}, time.time() + 60
    try:
        while time.time() < deadline and t.is_alive():
            live = client.get(f"/models/{job_id}/live").get_json()
            if live["status"] == "Running" and len(live["snapshots"]) >= 2 and live["progress"] and live["elapsed"] > 0.5:
                break
            time.sleep(0.1)
        metrics = client.get(f"/api/jobs/{job_id}/metrics?since=0").get_json()
        assert 0 < live["progress"] < 1 and 0 < metrics["progress"] < 1, (live, metrics["progress"])
        assert live["eta"] and live["eta"] > 0
        assert [s["iteration"] for s in live["snapshots"]][-1] == 2  # newest first, a snapshot per epoch
        assert "snapshot at iteration 2" in live["log"]
        html = client.get(f"/models/{job_id}").get_data(as_text=True)
        assert "No snapshots yet" not in html and "No log yet" not in html and "ETA " in html
        assert client.post(f"/models/{job_id}/abort").status_code == 302
    finally:
        t.join(30)
    assert result["status"] == "Aborted"
    live = client.get(f"/models/{job_id}/live").get_json()
    assert live["status"] == "Aborted" and live["eta"] is None and 0 < live["progress"] < 1
    assert client.get(f"/api/jobs/{job_id}/metrics?since=0").get_json()["eta"] is None
    assert "ETA " not in client.get(f"/models/{job_id}").get_data(as_text=True)
    elapsed = live["elapsed"]
    time.sleep(0.3)
    assert client.get(f"/models/{job_id}/live").get_json()["elapsed"] == elapsed  # stopped with the job


def test_a_job_waiting_for_a_pycaffe_worker_says_how_to_start_one(site):
    client, svc, ds, data = site
    assert client.post("/models/new", data=_model_form(ds["id"], model_name="on caffe", backend="pycaffe")).status_code == 302
    assert client.post("/models/new", data=_model_form(ds["id"], model_name="here")).status_code == 302
    ids = {m["name"]: m["id"] for m in svc.list_jobs("model")}
    html = client.get(f"/models/{ids['on caffe']}").get_data(as_text=True)
    assert "Waiting for a real-Caffe (pycaffe) worker" in html
    assert f"caffeseg worker --backend pycaffe --data {data}" in html
    assert "python3 -m caffeseg.jobs.worker --backend pycaffe --data /data" in html and "docker/compose.yaml" in html
    assert client.get(f"/models/{ids['on caffe']}/live").get_json()["waiting_note"]["backend"] == "pycaffe"
    html = client.get(f"/models/{ids['here']}").get_data(as_text=True)  # the app's own worker takes it
    assert "waiting-note" not in html and "Waiting for the first iterations" in html


def _standard_form(ds_id, **over):
    form = {"dataset": ds_id, "epochs": "2", "snapshot_interval": "1", "val_interval": "1",
            "batch_accumulation": "1", "solver_type": "SGD", "base_lr": "0.01", "lr_policy": "multistep",
            "lr_step_values": "50,85", "lr_gamma": "0.5", "mean_subtraction": "image",
            "network_source": "standard", "standard_network": "unet", "model_name": "u"}
    form.update(over)
    return form


def test_clone_comes_back_on_the_standard_or_previous_network_it_was_made_from(site):
    client, svc, ds, _ = site
    assert client.post("/models/new", data=_standard_form(ds["id"])).status_code == 302
    unet = svc.list_jobs("model")[0]
    html = client.get(f"/models/{unet['id']}/clone").get_data(as_text=True)
    assert re.search(r'id="network_source"[^>]*value="standard"', html)
    assert re.search(r'name="standard_network" value="unet"[^>]*checked', html)
    assert re.search(r'<textarea[^>]*id="custom_network"[^>]*>\s*</textarea>', html)  # not pasted as custom
    assert re.search(r'id="snapshot_interval"[^>]*value="1"', html) and re.search(r'id="val_interval"[^>]*value="1"', html)
    assert re.search(r'id="lr_step_values"[^>]*value="50, 85"', html)  # not "50.0, 85.0"
    # A model made from a previous model's network comes back on the Previous tab.
    form = _standard_form(ds["id"], network_source="previous", previous_network=unet["id"], model_name="p")
    assert client.post("/models/new", data=form).status_code == 302
    prev = [m for m in svc.list_jobs("model") if m["name"] == "p"][0]
    html = client.get(f"/models/{prev['id']}/clone").get_data(as_text=True)
    assert re.search(r'id="network_source"[^>]*value="previous"', html)
    assert re.search(rf'name="previous_network" value="{unet["id"]}"[^>]*checked', html)
    # A custom network stays custom.
    form = _standard_form(ds["id"], network_source="custom", custom_network=TINY_NET, model_name="c")
    assert client.post("/models/new", data=form).status_code == 302
    custom = [m for m in svc.list_jobs("model") if m["name"] == "c"][0]
    html = client.get(f"/models/{custom['id']}/clone").get_data(as_text=True)
    assert re.search(r'id="network_source"[^>]*value="custom"', html) and "name: &#34;tiny&#34;" in html


def test_a_bad_custom_network_names_its_line_and_column_once(site):
    client, svc, ds, _ = site
    bad = 'name: "bad"\nlayer { name: "c" type: "Convolution" bottom: "data" top: "c"\n' \
          '  convolution_param { num_output: 8 }\n\nlayer { name: "s" type: "ReLU" bottom: "c" top: "c" }\n'
    resp = client.post("/models/new", data=_standard_form(ds["id"], network_source="custom", custom_network=bad))
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400
    assert "custom network, line 5, column 1: " in html and "custom network:" not in html, \
        re.findall(r'field-error">([^<]*)', html)


def test_the_api_download_of_a_model_without_snapshot_is_a_clear_400(site):
    client, svc, ds, _ = site
    assert client.post("/models/new", data=_model_form(ds["id"], model_name="fresh")).status_code == 302
    job_id = svc.list_jobs("model")[0]["id"]
    resp = client.get(f"/api/jobs/{job_id}/download")
    assert resp.status_code == 400 and "no snapshot" in resp.get_json()["error"]


def test_a_clone_form_submits_to_the_create_route(site, phantom_release):
    client, svc, ds, data = site
    assert client.post("/models/new", data=_model_form(ds["id"], model_name="original")).status_code == 302
    original = svc.list_jobs("model")[0]
    html = client.get(f"/models/{original['id']}/clone").get_data(as_text=True)
    action = re.search(r'<form method="post" action="([^"]+)"[^>]*id="model-form"', html).group(1)
    resp = client.post(action, data=_model_form(ds["id"], model_name="original (clone)"))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    assert {j["name"] for j in svc.list_jobs("model")} == {"original", "original (clone)"}
    # a dataset's clone form too
    built = svc.import_dataset(str(_built_dataset(data.parent / "again")), "to clone")
    html = client.get(f"/datasets/{built['id']}/clone").get_data(as_text=True)
    action = re.search(r'<form method="post" action="([^"]+)" class="form-grid"', html).group(1)
    assert action == "/datasets/new/sunnybrook"
    resp = client.post(action, data=_dataset_form(*phantom_release, "cloned dataset"))
    assert resp.status_code == 302, resp.get_data(as_text=True)


def test_elapsed_is_time_spent_running_on_every_page_and_the_api(site):
    client, svc, ds, _ = site
    assert client.post("/models/new", data=_model_form(ds["id"], model_name="timed", backend="pycaffe")).status_code == 302
    job_id = svc.list_jobs("model")[0]["id"]
    time.sleep(0.4)  # queued: not counted
    [listed] = [j for j in client.get("/api/jobs?kind=model").get_json() if j["id"] == job_id]
    assert listed["elapsed"] == 0.0
    svc.store.set_status(job_id, "Running")
    time.sleep(0.2)
    svc.store.set_status(job_id, "Done")
    [listed] = [j for j in client.get("/api/jobs?kind=model").get_json() if j["id"] == job_id]
    live = client.get(f"/models/{job_id}/live").get_json()
    assert 0.2 <= listed["elapsed"] < 0.4 and live["elapsed"] == listed["elapsed"]


def test_a_previous_model_can_start_the_new_one_from_a_chosen_snapshot(site):
    """DIGITS' Previous Networks tab: the network of an earlier model and, optionally, the
    weights of one of its snapshots."""
    from web_helpers import write_weights
    client, svc, ds, _ = site
    assert client.post("/models/new", data=_model_form(ds["id"], model_name="first")).status_code == 302
    first = svc.list_jobs("model")[0]
    for iteration, value in ((4, 1.0), (8, 2.0)):
        write_weights(os.path.join(first["dir"], f"snapshot_iter_{iteration}.caffemodel"),
                      {"score": [np.full((2, 1, 3, 3), value, np.float32), np.zeros(2, np.float32)]})
    html = client.get("/models/new").get_data(as_text=True)
    assert f'value="{first["id"]}:8"' in html and f'value="{first["id"]}:4"' in html
    form = _model_form(ds["id"], model_name="second", network_source="previous", previous_network=first["id"],
                       previous_snapshot=f"{first['id']}:4")
    form.pop("custom_network")
    resp = client.post("/models/new", data=form)
    assert resp.status_code == 302, resp.get_data(as_text=True)
    second = svc.show([j["id"] for j in svc.list_jobs("model") if j["name"] == "second"][0])
    assert second["options"]["pretrained"] == [os.path.join(first["dir"], "snapshot_iter_4.caffemodel")]
    assert json.load(open(os.path.join(second["dir"], "pretrained_report.json")))["matched"] == ["score"]
    # a snapshot of another model, or one that does not exist, is refused beside the field
    resp = client.post("/models/new", data=dict(form, model_name="third", previous_snapshot=f"{first['id']}:99"))
    assert resp.status_code == 400 and "no snapshot at iteration 99" in resp.get_data(as_text=True)
    resp = client.post("/models/new", data=dict(form, model_name="third", previous_snapshot=f"{ds['id']}:4"))
    assert resp.status_code == 400 and "snapshot of the chosen previous model" in resp.get_data(as_text=True)
