"""Every page and form of the web app through Flask's test client, on a fake backend."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest

from test_web_fakes import FakeBackend, sunnybrook_plugin
from caffeseg.web import create_app


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data"
    (data / "sunny" / "images").mkdir(parents=True)
    (data / "sunny" / "contours").mkdir(parents=True)
    (data / "layers.py").write_text("import caffe\n")
    fake = FakeBackend(tmp_path / "jobs")
    app = create_app({"DATA_DIR": str(data), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()],
                      "WTF_CSRF_ENABLED": False, "TESTING": True})
    return app, app.test_client(), fake, data


def dataset_form(data, **over):
    form = {"image_folder": str(data / "sunny" / "images"), "contour_folder": str(data / "sunny" / "contours"),
            "channel_conversion": "L", "val_percent": "10", "contour_type": "inner", "split_by": "slice", "seed": "0",
            "encoding": "none", "encoder_batch_size": "32", "encoder_threads": "2", "db_backend": "lmdb",
            "enforce_same_shape": "y", "group_name": "", "dataset_name": "sunny"}
    form.update(over)
    return form


def model_form(dataset_id, **over):
    form = {"dataset": dataset_id, "epochs": "1", "snapshot_interval": "1", "val_interval": "1",
            "batch_accumulation": "1", "solver_type": "SGD", "base_lr": "0.01", "lr_policy": "step",
            "lr_step_size": "33", "lr_gamma": "0.1", "lr_power": "0.75", "lr_step_values": "50,85",
            "mean_subtraction": "image", "network_source": "standard", "standard_network": "fcn_tiny",
            "model_name": "m1"}
    form.update(over)
    return form


def test_home_lists_jobs_in_tabs_with_groups_and_metrics(env):
    app, client, fake, _ = env
    fake.add_job("dataset", "sunny-ds", group="lab")
    fake.add_job("model", "fcn-model")
    html = client.get("/").get_data(as_text=True)
    assert "Datasets" in html and "Models" in html and "Pretrained Models" in html
    assert "sunny-ds" in html and "fcn-model" in html and "lab" in html
    assert "train/loss" in html and "<svg class=\"spark\"" in html
    # The New Dataset / New Model menus come from the plugin.
    assert "Sunnybrook LV Segmentation" in html and "/datasets/new/sunnybrook" in html


def test_home_when_the_job_listing_is_unavailable_says_so(tmp_path):
    from caffeseg.web.backend import Unavailable

    class NoListing(FakeBackend):
        def jobs(self, kind=None):
            raise Unavailable("job listing is not available in this installation")
    app = create_app({"DATA_DIR": str(tmp_path), "BACKEND": NoListing(tmp_path), "PLUGINS": [sunnybrook_plugin()]})
    resp = app.test_client().get("/")
    assert resp.status_code == 200
    assert "not available" in resp.get_data(as_text=True)


def test_bulk_delete_and_abort(env):
    app, client, fake, _ = env
    a = fake.add_job("model", "a", status="Running")
    b = fake.add_job("model", "b", status="Running")
    resp = client.post("/jobs/bulk", data={"action": "abort", "job_ids": [a, b], "tab": "model"})
    assert resp.status_code == 302
    assert fake.job(a)["status"] == "Aborted" and fake.job(b)["status"] == "Aborted"
    client.post("/jobs/bulk", data={"action": "delete", "job_ids": [a, "../etc"], "tab": "model"})
    assert a not in fake.jobs_
    html = client.get("/?tab=model").get_data(as_text=True)
    assert "invalid job id" in html


def test_dataset_form_has_plugin_and_generic_fields_with_help(env):
    app, client, fake, _ = env
    html = client.get("/datasets/new/sunnybrook").get_data(as_text=True)
    for name in ("image_folder", "contour_folder", "channel_conversion", "val_percent", "contour_type", "split_by", "seed",
                 "encoding", "encoder_threads", "db_backend", "enforce_same_shape",
                 "group_name", "dataset_name"):
        assert f'name="{name}"' in html, name
    assert html.count('class="help"') >= 14
    assert 'data-path-complete' in html


def test_dataset_form_valid_submission_creates_job(env):
    app, client, fake, data = env
    resp = client.post("/datasets/new/sunnybrook", data=dataset_form(data, group_name="g1"))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    call = [c for c in fake.calls if c[0] == "create_dataset"][0]
    assert call[1] == "sunnybrook"
    assert call[2]["val_percent"] == 10 and call[2]["image_folder"] == str((data / "sunny" / "images").resolve())
    assert call[3]["dataset_name"] == "sunny" and call[3]["group_name"] == "g1"
    assert "/datasets/" in resp.headers["Location"]


@pytest.mark.parametrize("field,value,message", [
    ("image_folder", "/etc", "outside the allowed data folders"),
    ("image_folder", "{data}/missing", "does not exist"),
    ("val_percent", "150", "between"),
    ("dataset_name", "", "give the dataset a name"),
    ("encoder_threads", "0", "between"),
])
def test_dataset_form_errors_are_shown_beside_the_fields(env, field, value, message):
    app, client, fake, data = env
    resp = client.post("/datasets/new/sunnybrook", data=dataset_form(data, **{field: value.format(data=data)}))
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    block = re.search(rf'id="field-{field}"(.*?)(id="field-|</section>)', html, re.S).group(1)
    assert 'class="field-error"' in block and message in block, block
    assert not [c for c in fake.calls if c[0] == "create_dataset"]


def test_dataset_backend_refusal_goes_beside_the_field(env):
    app, client, fake, data = env
    resp = client.post("/datasets/new/sunnybrook", data=dataset_form(data, val_percent="100"))
    assert resp.status_code == 400
    # 100 % is refused upfront by the plugin's own range (0-99, issue 16 item 15), beside the field
    html = resp.get_data(as_text=True)
    block = re.search(r'id="field-val_percent"(.*?)(id="field-|</section>)', html, re.S).group(1)
    assert 'class="field-error"' in block and "99" in block, block
    assert not [c for c in fake.calls if c[0] == "create_dataset"]


def test_csrf_is_enforced_when_enabled(tmp_path):
    fake = FakeBackend(tmp_path / "jobs")
    data = tmp_path / "data"
    (data / "sunny" / "images").mkdir(parents=True)
    (data / "sunny" / "contours").mkdir(parents=True)
    app = create_app({"DATA_DIR": str(data), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()], "WTF_CSRF_ENABLED": True})
    client = app.test_client()
    resp = client.post("/datasets/new/sunnybrook", data=dataset_form(data))
    assert resp.status_code == 400 and "form expired" in resp.get_data(as_text=True)
    job = fake.add_job("model", "m", status="Running")
    assert client.post(f"/models/{job}/abort").status_code == 400
    assert fake.job(job)["status"] == "Running"
    ds = fake.add_job("dataset", "d", status="Running")
    assert client.post(f"/datasets/{ds}/abort").status_code == 400 and fake.job(ds)["status"] == "Running"
    assert client.post("/pretrained/known/bvlc_alexnet/prepare", data={"variant": "gray"}).status_code == 400
    # With the token from the page the same post works.
    html = client.get("/datasets/new/sunnybrook").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)
    resp = client.post("/datasets/new/sunnybrook", data=dataset_form(data, csrf_token=token))
    assert resp.status_code == 302


def test_dataset_page_explorer_and_pngs(env):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "sunny-ds")
    html = client.get(f"/datasets/{ds}").get_data(as_text=True)
    assert "uint16" in html and "[1, 32, 32]" in html and "log.txt" in html and fake.job(ds)["dir"] in html
    assert "Clone" in html and "Delete" in html
    html = client.get(f"/datasets/{ds}/explore?stage=val").get_data(as_text=True)
    assert "SC-HF-NI-3 / 0048" in html and "2 records" in html
    png = client.get(f"/datasets/{ds}/records/train/0/feature.png")
    assert png.status_code == 200 and png.mimetype == "image/png"
    import cv2
    img = cv2.imdecode(np.frombuffer(png.data, np.uint8), cv2.IMREAD_UNCHANGED)
    # The hot pixel (60000) must not crush the picture: the disc (1700) is near white, background dark.
    assert img.shape == (32, 32) and img[16, 16] > 200 and img[30, 2] < 60
    lab = client.get(f"/datasets/{ds}/records/train/0/label.png")
    lab_img = cv2.imdecode(np.frombuffer(lab.data, np.uint8), cv2.IMREAD_COLOR)
    assert tuple(lab_img[16, 16]) == (0, 0, 255)  # BGR red from the palette
    assert client.get(f"/datasets/{ds}/records/train/9/feature.png").status_code == 404
    assert client.get(f"/datasets/{ds}/explore?stage=bogus").status_code == 400


def test_dataset_clone_prefills_and_delete(env):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "sunny-ds")
    html = client.get(f"/datasets/{ds}/clone").get_data(as_text=True)
    assert 'value="25"' in html and "sunny-ds (clone)" in html
    assert re.search(r'<option selected value="patient">|<option value="patient" selected', html)
    model = fake.add_job("model", "m", dataset_id=ds)
    resp = client.post(f"/datasets/{ds}/delete", follow_redirects=True)
    assert "used by m" in resp.get_data(as_text=True)
    fake.delete(model)
    resp = client.post(f"/datasets/{ds}/delete")
    assert resp.status_code == 302 and ds not in fake.jobs_


def test_dataset_page_follows_the_queued_build_abort_and_build_again(env):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "queued-ds", status="Waiting")
    html = client.get(f"/datasets/{ds}").get_data(as_text=True)
    assert 'id="queued-note"' in html and 'id="abort-btn"' in html and "rebuild-btn" not in html
    assert 'http-equiv="refresh"' in html  # the page follows the build without a click
    assert client.post(f"/datasets/{ds}/abort").status_code == 302 and ("abort", ds) in fake.calls
    html = client.get(f"/datasets/{ds}").get_data(as_text=True)
    assert ">Aborted<" in html and 'id="rebuild-btn"' in html and "abort-btn" not in html
    assert client.post(f"/datasets/{ds}/rebuild").status_code == 302 and ("resume", ds) in fake.calls
    fake.jobs_[ds].update(status="Running", progress=0.25)
    html = client.get(f"/datasets/{ds}").get_data(as_text=True)
    assert "width: 25.0%" in html and "queued-note" not in html
    model = fake.add_job("model", "m")
    assert client.post(f"/datasets/{model}/abort").status_code == 404  # a model is not a dataset


def test_every_form_field_has_a_help_tooltip(env):
    from caffeseg.web.forms import InferenceForm, ModelForm, dataset_form_class
    app, client, fake, _ = env
    # The network pickers are the tabs of the network section; each tab explains itself.
    tabs = {"network_source", "standard_network", "previous_network", "pretrained_network"}
    with app.test_request_context():
        for form in (ModelForm(), dataset_form_class(sunnybrook_plugin())(), InferenceForm()):
            missing = [f.name for f in form if not f.description and f.type != "CSRFTokenField" and f.name not in tabs]
            assert missing == [], type(form).__name__
    m = fake.add_job("model", "m", dataset_id=fake.add_job("dataset", "d"))
    html = client.get(f"/models/{m}/infer").get_data(as_text=True)
    assert html.count('class="help"') == 6  # snapshot, record, visualize, no_resize, image, server_path


def test_a_model_that_cannot_be_deleted_says_why(env, monkeypatch):
    app, client, fake, _ = env
    m = fake.add_job("model", "busy", status="Running")

    def refuse(job_id):
        raise ValueError(f"job {job_id} is running; abort it first")
    monkeypatch.setattr(fake, "delete", refuse)
    resp = client.post(f"/models/{m}/delete", follow_redirects=True)
    assert resp.status_code == 200 and "abort it first" in resp.get_data(as_text=True) and m in fake.jobs_


def test_pages_load_nothing_from_outside_the_app(env):
    """Works offline: scripts, styles and images are the app's own (no CDN, no web fonts)."""
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "m", dataset_id=ds)
    result = client.get(f"/models/{m}/infer/record/00000001").headers["Location"]
    pages = ["/", "/datasets/new/sunnybrook", f"/datasets/{ds}", f"/datasets/{ds}/explore", "/models/new",
             f"/models/{m}", f"/models/{m}/infer", result, f"/compare?models={m}&record=00000001"]
    assets = set()
    for page in pages:
        html = client.get(page).get_data(as_text=True)
        refs = re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="([^"]+)"', html)
        assert refs and all(r.startswith(("/", "data:")) and not r.startswith("//") for r in refs), (page, refs)
        assets |= {r for r in refs if r.startswith(("/static/", "/vendor/"))}
    assert {"/static/js/model_page.js", "/static/js/overlay.js", "/static/css/app.css"} <= assets
    vendor = {a for a in assets if a.startswith("/vendor/")}
    assert {a.split("?")[0] for a in vendor} == {"/vendor/plotly.min.js"}, vendor
    for asset in vendor:
        # The charting library is the installed plotly package's own bundle, served by the app.
        import plotly
        from pathlib import Path
        resp = client.get(asset)
        assert resp.status_code == 200 and resp.mimetype == "text/javascript"
        assert resp.get_data() == (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
        assert resp.cache_control.max_age and resp.cache_control.max_age > 3600
    for asset in assets - vendor:
        text = client.get(asset).get_data(as_text=True)
        assert not re.search(r"(?:https?:)?//(?!www\.w3\.org/2000/svg)[a-z0-9.-]+\.[a-z]{2,}/", text), asset
        assert "@import" not in text and "url(http" not in text, asset


def test_invalid_and_unknown_job_ids(env):
    app, client, fake, _ = env
    assert client.get("/datasets/..%2F..%2Fetc").status_code in (400, 404)
    assert client.get("/models/not.valid").status_code == 400
    assert client.get("/models/20990101-000000-9999").status_code == 404
    ds = fake.add_job("dataset", "d")
    assert client.get(f"/models/{ds}").status_code == 404  # a dataset is not a model


def test_model_form_renders_every_option(env):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "sunny-ds")
    html = client.get(f"/models/new?dataset={ds}").get_data(as_text=True)
    for name in ("dataset", "python_layer_server_file", "python_layer_upload", "epochs", "snapshot_interval",
                 "val_interval", "random_seed", "batch_size", "batch_accumulation", "solver_type", "base_lr",
                 "weight_decay", "lr_policy", "lr_step_size", "lr_gamma", "lr_power", "lr_step_values",
                 "mean_subtraction", "crop_size", "custom_network", "pretrained_model", "group_name", "model_name"):
        assert f'name="{name}"' in html, name
    assert "Standard Networks" in html and "Previous Networks" in html and "Pretrained Networks" in html
    assert "Custom Network" in html and "Visualize" in html and "Show advanced learning rate options" in html
    assert "runs on this server" in html and "FCN tiny" in html


def test_model_form_creates_one_job_per_learning_rate(env):
    app, client, fake, data = env
    ds = fake.add_job("dataset", "sunny-ds")
    resp = client.post("/models/new", data=model_form(ds, base_lr="0.01, 0.001", batch_size="2,4",
                                                      python_layer_server_file=str(data / "layers.py")))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    options = [c for c in fake.calls if c[0] == "create_model"][0][1]
    assert options["base_lr"] == [0.01, 0.001] and options["batch_size"] == [2, 4]
    assert options["lr_step_values"] == [50.0, 85.0] and options["standard_network"] == "fcn_tiny"
    assert options["python_layer_server_file"] == str((data / "layers.py").resolve())


def test_model_form_upload_and_single_job_redirect(env):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "sunny-ds")
    data = model_form(ds, network_source="custom", custom_network="name: 'c'\n")
    data["python_layer_upload"] = (io.BytesIO(b"import caffe\n"), "dice.py")
    resp = client.post("/models/new", data=data, content_type="multipart/form-data")
    assert resp.status_code == 302 and "/models/" in resp.headers["Location"]
    options = [c for c in fake.calls if c[0] == "create_model"][0][1]
    assert options["python_layer_upload"] == {"filename": "dice.py", "content": b"import caffe\n"}
    assert options["custom_network"] == "name: 'c'\n"


@pytest.mark.parametrize("over,field,message", [
    ({"base_lr": "0.1, abc"}, "base_lr", "numbers separated by commas"),
    ({"base_lr": "-1"}, "base_lr", "greater than 0"),
    ({"batch_size": "2.5"}, "batch_size", "whole number"),
    ({"epochs": "0"}, "epochs", "between"),
    ({"dataset": ""}, "dataset", "choose a dataset"),
    ({"network_source": "custom", "custom_network": ""}, "custom_network", "paste or write a network"),
    ({"python_layer_server_file": "/etc/passwd"}, "python_layer_server_file", "outside the allowed data folders"),
    ({"pretrained_model": "/etc/passwd"}, "pretrained_model", "outside the allowed data folders"),
])
def test_model_form_invalid_input(env, over, field, message):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "sunny-ds")
    resp = client.post("/models/new", data=model_form(ds, **over))
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert message in html, field
    assert not [c for c in fake.calls if c[0] == "create_model"]


def test_python_layer_upload_can_be_disabled(tmp_path):
    fake = FakeBackend(tmp_path / "jobs")
    app = create_app({"DATA_DIR": str(tmp_path), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()],
                      "WTF_CSRF_ENABLED": False, "ALLOW_PYTHON_LAYER_UPLOAD": False})
    client = app.test_client()
    ds = fake.add_job("dataset", "d")
    assert "Uploading Python layers is disabled" in client.get("/models/new").get_data(as_text=True)
    data = model_form(ds)
    data["python_layer_upload"] = (io.BytesIO(b"import os\n"), "evil.py")
    resp = client.post("/models/new", data=data, content_type="multipart/form-data")
    assert resp.status_code == 400 and "disabled" in resp.get_data(as_text=True)


def test_upload_size_limit(tmp_path):
    fake = FakeBackend(tmp_path / "jobs")
    app = create_app({"DATA_DIR": str(tmp_path), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()],
                      "WTF_CSRF_ENABLED": False, "MAX_CONTENT_LENGTH": 1000})
    ds = fake.add_job("dataset", "d")
    data = model_form(ds)
    data["python_layer_upload"] = (io.BytesIO(b"#" * 5000), "big.py")
    resp = app.test_client().post("/models/new", data=data, content_type="multipart/form-data")
    assert resp.status_code == 413


def test_model_page_and_actions(env):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "sunny-ds")
    m = fake.add_job("model", "fcn", status="Running", dataset_id=ds, eta=40)
    html = client.get(f"/models/{m}").get_data(as_text=True)
    assert f"/api/jobs/{m}/metrics" in html and "snapshot_iter_4.caffemodel" in html
    assert "Abort" in html and "Clone" in html and "Download model" in html and "Worst validation records" in html
    assert "SC-HF-NI-3 / 0049" in html
    assert client.post(f"/models/{m}/abort").status_code == 302
    assert fake.job(m)["status"] == "Aborted"
    html = client.get(f"/models/{m}").get_data(as_text=True)
    assert 'id="resume-btn"' not in html and "nothing to resume" in html  # no .solverstate yet
    fake.jobs_[m]["files"] = fake.jobs_[m]["files"] + [{"name": "snapshot_iter_4.solverstate", "size": 9}]
    assert 'id="resume-btn"' in client.get(f"/models/{m}").get_data(as_text=True)
    client.post(f"/models/{m}/resume")
    assert fake.job(m)["status"] == "Running"
    resp = client.get(f"/models/{m}/download")
    assert resp.status_code == 200 and resp.data == b"archive"
    html = client.get(f"/models/{m}/clone").get_data(as_text=True)
    assert "0.01, 0.001" in html and "fcn (clone)" in html
    resp = client.post(f"/models/{m}/evaluate")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("#evaluation")
    assert ("evaluate", m) in fake.calls
    assert client.post(f"/models/{m}/delete").status_code == 302 and m not in fake.jobs_


def test_job_files_are_served_and_confined(env):
    app, client, fake, _ = env
    m = fake.add_job("model", "fcn")
    resp = client.get(f"/jobs/{m}/files/log.txt")
    assert resp.status_code == 200 and b"log of fcn" in resp.data
    assert client.get(f"/jobs/{m}/files/snapshot_iter_4.caffemodel").data == b"weights"
    assert client.get(f"/jobs/{m}/files/../../etc/passwd").status_code in (400, 404)
    assert client.get(f"/jobs/{m}/files/.hidden").status_code == 400
    assert client.get(f"/jobs/{m}/files/missing.txt").status_code == 404


def test_inference_record_result_and_compare(env):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "sunny-ds")
    m = fake.add_job("model", "fcn", dataset_id=ds)
    html = client.get(f"/models/{m}/infer").get_data(as_text=True)
    assert "SC-HF-NI-3 / 0049" in html and "Iteration 4" in html
    resp = client.post(f"/models/{m}/infer", data={"snapshot": "4", "record": "00000001", "visualize": "y",
                                                   "which": "record"})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "dice" in page and "0.9" in page and "ov-opacity" in page and "conv1" in page
    assert fake.calls[-1] == ("infer", m, 4, "00000001", None, True)
    token = resp.headers["Location"].rsplit("/", 1)[1]
    for name in ("image", "prediction", "label"):
        r = client.get(f"/models/{m}/inference/{token}/{name}.png")
        assert r.status_code == 200 and r.mimetype == "image/png", name
    assert client.get(f"/models/{m}/inference/nope/image.png").status_code == 404
    # Links from the evaluation table run the record directly.
    assert client.get(f"/models/{m}/infer/record/00000000").status_code == 302
    m2 = fake.add_job("model", "fcn2", dataset_id=ds)
    html = client.get(f"/compare?models={m}&models={m2}&record=00000001").get_data(as_text=True)
    assert html.count('class="overlay-view"') == 2 and "fcn2" in html


def test_record_inference_is_computed_once_per_snapshot_and_record(env):
    import os
    from pathlib import Path
    import hashlib
    app, client, fake, _ = env
    m = fake.add_job("model", "fcn", dataset_id=fake.add_job("dataset", "d"))
    job_dir = Path(fake.job(m)["dir"])

    def inferences():
        return [c for c in fake.calls if c[0] == "infer"]
    first = client.get(f"/models/{m}/infer/record/00000001")
    assert first.status_code == 302 and len(inferences()) == 1
    token = first.headers["Location"].rsplit("/", 1)[1]
    expected = "rec-4-" + hashlib.sha256(b"00000001").hexdigest()[:16]  # the documented token format
    assert token == expected and inferences()[0][2] == 4  # the newest snapshot, by number
    stored = job_dir / "inference" / token / "result.json"
    mtime = stored.stat().st_mtime_ns
    second = client.get(f"/models/{m}/infer/record/00000001")
    assert second.headers["Location"] == first.headers["Location"]
    assert len(inferences()) == 1 and stored.stat().st_mtime_ns == mtime  # reused, not recomputed
    assert client.get(f"/models/{m}/infer/record/00000001?snapshot=4").headers["Location"] == first.headers["Location"]
    assert "SC-HF-NI-3 / 0049" in client.get(first.headers["Location"]).get_data(as_text=True)
    # The test form and the compare view reuse the same result.
    resp = client.post(f"/models/{m}/infer", data={"snapshot": "4", "record": "00000001", "which": "record"})
    assert resp.headers["Location"] == first.headers["Location"]
    client.get(f"/compare?models={m}&record=00000001")
    assert len(inferences()) == 1
    assert [p.name for p in (job_dir / "inference").iterdir()] == [token]  # no temporary folder left
    # Another record, or layer statistics, is another result.
    client.get(f"/models/{m}/infer/record/00000000")
    client.post(f"/models/{m}/infer", data={"snapshot": "4", "record": "00000001", "visualize": "y", "which": "record"})
    assert len(inferences()) == 3 and (job_dir / "inference" / (token + "-viz")).is_dir()
    # A snapshot rewritten under the same iteration (a resumed training) is inferred again.
    snap = job_dir / "snapshot_iter_4.caffemodel"
    snap.write_bytes(b"retrained weights")
    os.utime(snap, ns=(mtime + 10**9, mtime + 10**9))
    assert client.get(f"/models/{m}/infer/record/00000001").headers["Location"] == first.headers["Location"]
    assert len(inferences()) == 4
    # Keys are checked before anything is named after them.
    assert client.get(f"/models/{m}/infer/record/a/b").status_code == 400
    assert client.get(f"/models/{m}/infer/record/%2E%2E").status_code == 400
    assert len(inferences()) == 4


def test_inference_upload(env):
    app, client, fake, _ = env
    m = fake.add_job("model", "fcn")
    resp = client.post(f"/models/{m}/infer", data={"snapshot": "4", "which": "image",
                                                   "image": (io.BytesIO(b"\x89PNG fake"), "slice.png")},
                       content_type="multipart/form-data")
    assert resp.status_code == 302
    path = fake.calls[-1][4]
    assert path.startswith(fake.job(m)["dir"]) and path.endswith("slice.png")
    resp = client.post(f"/models/{m}/infer", data={"which": "image", "image": (io.BytesIO(b"x"), "a.exe")},
                       content_type="multipart/form-data")
    assert resp.status_code == 400 and "PNG, TIFF or DICOM" in resp.get_data(as_text=True)
    resp = client.post(f"/models/{m}/infer", data={"which": "record", "record": ""})
    assert resp.status_code == 400 and "choose a validation record" in resp.get_data(as_text=True)


def test_pretrained_upload_form_csrf_and_its_own_size_limit(tmp_path):
    """The upload form carries a CSRF token; its endpoints have their own limit
    (MAX_PRETRAINED_UPLOAD), other uploads keep MAX_CONTENT_LENGTH."""
    fake = FakeBackend(tmp_path / "jobs")
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()],
                      "MAX_CONTENT_LENGTH": 1000, "MAX_PRETRAINED_UPLOAD": 20_000})
    client = app.test_client()
    html = client.get("/?tab=pretrained").get_data(as_text=True)
    assert 'id="pretrained-upload"' in html and 'name="csrf_token"' in html.split('id="pretrained-upload"')[1]
    assert "Upload Pretrained Model" in html and "Up to" in html

    def post(url, size, **headers):
        return client.post(url, data={"name": "n", "prototxt": (io.BytesIO(b"name: 'x'"), "n.prototxt"),
                                      "weights": (io.BytesIO(b"w" * size), "n.caffemodel")},
                           content_type="multipart/form-data", headers=headers)
    assert post("/pretrained/upload", 5000).status_code == 400  # past the 1000-byte app limit; no token
    assert post("/pretrained/upload", 30_000).status_code == 413
    assert post("/api/pretrained", 30_000, **{"X-Requested-With": "t"}).status_code == 413
    assert post("/api/pretrained", 5000).status_code == 403  # cross-site form: refused
    assert client.post("/models/new", data={"x": "y" * 5000}).status_code == 413  # others keep the app limit
    assert client.post("/pretrained/up-000000000000/delete").status_code == 400  # no token
    assert not any(c[0] == "upload_pretrained" for c in fake.calls)


def test_a_model_archive_upload_has_the_pretrained_limit_not_the_apps(tmp_path):
    """A DIGITS or caffeseg model archive holds a caffemodel (FCN-AlexNet's is 227 MB), so its
    upload routes get MAX_PRETRAINED_UPLOAD like the model upload, not MAX_CONTENT_LENGTH."""
    fake = FakeBackend(tmp_path / "jobs")
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()],
                      "MAX_CONTENT_LENGTH": 1000, "MAX_PRETRAINED_UPLOAD": 20_000, "WTF_CSRF_ENABLED": False})
    client = app.test_client()

    def post(url, size, **headers):
        return client.post(url, data={"name": "n", "archive": (io.BytesIO(b"a" * size), "m.tar.gz")},
                           content_type="multipart/form-data", headers=headers)
    for url, headers in (("/pretrained/archive", {}), ("/api/pretrained/archive", {"X-Requested-With": "t"})):
        assert post(url, 5000, **headers).status_code != 413, url  # over the app's limit, under the archive's
        assert post(url, 30_000, **headers).status_code == 413, url
    assert client.post("/models/new", data={"x": "y" * 5000}).status_code == 413  # others keep the app limit


def test_model_form_lists_pretrained_networks_and_refuses_unready_ones(env):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "d")
    html = client.get("/models/new").get_data(as_text=True)
    for name in ("bvlc_alexnet", "fcn8s-heavy-pascal", "VGG16"):
        assert f'name="pretrained_network" value="{name}"' in html
    assert 'id="pretrained-summary"' in html and "Pretrained Networks" in html
    resp = client.post("/models/new", data=model_form(ds, network_source="pretrained", pretrained_network="VGG16"))
    assert resp.status_code == 400
    text = resp.get_data(as_text=True)
    assert "caffeseg pretrained VGG16" in text and "caffeseg surgery vgg16-fcn8s" in text
    resp = client.post("/api/models", json=model_form(ds, network_source="pretrained", pretrained_network="VGG16"))
    assert resp.status_code == 400 and "surgery vgg16-fcn8s" in resp.get_json()["error"]
    resp = client.post("/api/models", json=model_form(ds, network_source="pretrained", pretrained_network=""))
    assert resp.status_code == 400 and "choose a pretrained network" in resp.get_json()["fields"]["network_source"]
    assert not any(c[0] == "create_model" for c in fake.calls)


def test_pretrained_tab_counts_models_and_has_no_job_actions(env):
    """The Pretrained Models tab lists weight files, not jobs: its count is the catalogue's
    length and it offers neither the job table's bulk actions nor a "none yet" notice."""
    app, client, fake, data = env
    html = client.get("/?tab=pretrained").get_data(as_text=True)
    tab = re.search(r'data-tab="pretrained"[^>]*>Pretrained Models <span class="count">(\d+)</span>', html)
    assert tab and int(tab.group(1)) == 3  # bvlc_alexnet, fcn8s-heavy-pascal, VGG16; nothing uploaded
    panel = html.split('id="panel-pretrained"')[1].split("</section>")[0]
    assert "bulk-form" not in panel and "No pretrained models yet" not in panel
    assert 'id="known-pretrained"' in panel


def test_explorer_pages_count_from_one_as_shown(env, monkeypatch):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "paged")
    monkeypatch.setattr("caffeseg.web.views.datasets.PAGE_SIZE", 3)  # the fake's train stage has 4 records
    first = client.get(f"/datasets/{ds}/explore?stage=train").get_data(as_text=True)
    assert "page 1 of 2" in first and "SC-HF-NI-3 / 0048" in first and "SC-HF-NI-3 / 0051" not in first
    second = client.get(f"/datasets/{ds}/explore?stage=train&page=2").get_data(as_text=True)
    assert "page 2 of 2" in second and "SC-HF-NI-3 / 0051" in second and "SC-HF-NI-3 / 0048" not in second
    assert "page=1\"" in second and "Next" not in second
    beyond = client.get(f"/datasets/{ds}/explore?stage=train&page=3")
    assert beyond.status_code == 302 and beyond.headers["Location"].endswith("page=2")


def test_a_failed_dataset_offers_neither_explore_nor_new_model(env):
    app, client, fake, _ = env
    failed = fake.add_job("dataset", "swapped", status="Error")
    html = client.get(f"/datasets/{failed}").get_data(as_text=True)
    assert "Build again" in html and ">Explore<" not in html and "New model on this dataset" not in html
    done = fake.add_job("dataset", "good")
    html = client.get(f"/datasets/{done}").get_data(as_text=True)
    assert ">Explore<" in html and "New model on this dataset" in html


def test_model_download_needs_a_snapshot_and_is_named_after_the_job(env, monkeypatch):
    app, client, fake, _ = env
    waiting = fake.add_job("model", "U-Net (Adam) 12ep", status="Waiting", snapshots=[])
    html = client.get(f"/models/{waiting}").get_data(as_text=True)
    assert 'id="download-btn" aria-disabled="true"' in html and "No snapshot yet" in html
    assert f' href="/models/{waiting}/download"' not in html
    resp = client.get(f"/models/{waiting}/download")  # was a 500 (ServiceError: no snapshot yet)
    assert resp.status_code == 302 and resp.headers["Location"].endswith(f"/models/{waiting}")
    assert "This model has no snapshot yet" in client.get(resp.headers["Location"]).get_data(as_text=True)
    done = fake.add_job("model", "U-Net (Adam) 12ep", status="Done")
    assert f' href="/models/{done}/download"' in client.get(f"/models/{done}").get_data(as_text=True)
    resp = client.get(f"/models/{done}/download")
    assert resp.status_code == 200 and resp.data == b"archive"
    assert f"u-net-adam-12ep_{done}_iter_4.tar.gz" in resp.headers["Content-Disposition"]
    assert f"_{done}_iter_4.tar.gz" in client.get(f"/models/{done}/download?snapshot=4").headers["Content-Disposition"]
    resp = client.get(f"/models/{done}/download?snapshot=99")
    assert resp.status_code == 302
    assert "no snapshot at iteration 99" in client.get(resp.headers["Location"]).get_data(as_text=True)

    def refuse(job_id, snapshot=None, fmt="tar.gz"):
        raise ValueError(f"job {job_id} has no snapshot yet")
    monkeypatch.setattr(fake, "download_stream", refuse)
    resp = client.get(f"/models/{done}/download")
    assert resp.status_code == 302
    assert "could not be packed" in client.get(resp.headers["Location"]).get_data(as_text=True)


def test_model_live_poll_gives_progress_elapsed_eta_snapshots_and_log(env):
    import time
    app, client, fake, _ = env
    now = time.time()
    m = fake.add_job("model", "fcn", status="Running", eta=40, progress=0.25, log="iteration 7 val ...\n",
                     history=[{"status": "Waiting", "time": now - 100}, {"status": "Running", "time": now - 30}])
    live = client.get(f"/models/{m}/live").get_json()
    assert live["status"] == "Running" and live["progress"] == 0.25 and live["eta"] == 40
    assert 29 <= live["elapsed"] <= 40  # running time, not time since submission
    assert [s["iteration"] for s in live["snapshots"]] == [4]
    assert live["snapshots"][0]["archive_url"] == f"/models/{m}/download?snapshot=4"
    assert live["snapshots"][0]["file_url"].endswith("snapshot_iter_4.caffemodel")
    assert live["log"] == "iteration 7 val ...\n" and live["waiting_note"] is None
    html = client.get(f"/models/{m}").get_data(as_text=True)
    assert f'data-live-url="/models/{m}/live"' in html and "ETA 40s" in html
    # Aborted: no ETA any more (the page showed the last one), elapsed stops at the abort.
    fake.jobs_[m].update(status="Aborted", history=fake.jobs_[m]["history"] + [{"status": "Aborted", "time": now - 10}])
    live = client.get(f"/models/{m}/live").get_json()
    assert live["eta"] is None and live["elapsed"] == pytest.approx(20, abs=0.01)
    html = client.get(f"/models/{m}").get_data(as_text=True)
    assert "ETA " not in html and ">20s<" in html


def test_a_dataset_that_models_use_says_so_instead_of_offering_delete(env):
    app, client, fake, _ = env
    ds = fake.add_job("dataset", "in use")
    fake.add_job("model", "first", dataset_id=ds)
    html = client.get(f"/datasets/{ds}").get_data(as_text=True)
    assert re.search(r'<button[^>]*disabled id="delete-btn" aria-describedby="delete-reason"', html)
    assert "Cannot be deleted: used by 1 model (first); delete them first." in html  # written, not only a tooltip
    free = fake.add_job("dataset", "free")
    html = client.get(f"/datasets/{free}").get_data(as_text=True)
    assert 'id="delete-btn" data-confirm="Delete this dataset and its files?"' in html


def test_new_model_offers_only_datasets_it_can_train_on(env):
    app, client, fake, _ = env
    done = fake.add_job("dataset", "built")
    building = fake.add_job("dataset", "building", status="Running")  # the model waits for it
    failed = fake.add_job("dataset", "swapped", status="Error", summary={"train_count": None, "classes": []})
    aborted = fake.add_job("dataset", "stopped", status="Aborted")
    html = client.get("/models/new").get_data(as_text=True)
    offered = set(re.findall(r'<option[^>]*value="([^"]*)"', html.split('id="dataset"', 1)[1].split("</select>", 1)[0]))
    assert {done, building} <= offered and not {failed, aborted} & offered
    import json
    page_data = json.loads(re.search(r'<script id="page-data" type="application/json">(.*?)</script>', html, re.S).group(1))
    assert {d["id"] for d in page_data["datasets"]} == {done, building}
    resp = client.post("/models/new", data=model_form(failed))
    assert resp.status_code == 400 and not [c for c in fake.calls if c[0] == "create_model"]


def test_new_model_page_does_not_load_plotly_with_the_page(env):
    app, client, fake, _ = env
    html = client.get("/models/new").get_data(as_text=True)
    assert not re.search(r'<script[^>]*src="[^"]*plotly', html)  # 4.8 MB: fetched when the LR preview opens
    assert re.search(r'id="lr-chart"[^>]*data-plotly-src="/vendor/plotly\.min\.js', html)


def test_job_and_group_names_have_a_length_limit(env):
    from caffeseg.web.forms import MAX_JOB_NAME
    app, client, fake, data = env
    ds = fake.add_job("dataset", "d")
    form = {"dataset": ds, "epochs": "1", "snapshot_interval": "1", "val_interval": "1",
            "batch_accumulation": "1", "solver_type": "SGD", "base_lr": "0.01", "lr_policy": "fixed",
            "mean_subtraction": "none", "network_source": "custom", "custom_network": "name: 'x'",
            "model_name": "n" * (MAX_JOB_NAME + 1)}
    resp = client.post("/models/new", data=form)
    assert resp.status_code == 400 and f"longer than {MAX_JOB_NAME}" in resp.get_data(as_text=True)
    resp = client.post("/models/new", data=dict(form, model_name="ok", group_name="g" * 65))
    assert resp.status_code == 400 and "longer than 64" in resp.get_data(as_text=True)
    assert not [c for c in fake.calls if c[0] == "create_model"]


def test_the_test_page_of_a_model_without_snapshot_offers_no_forms(env):
    app, client, fake, _ = env
    waiting = fake.add_job("model", "not yet", status="Waiting", snapshots=[])
    html = client.get(f"/models/{waiting}/infer").get_data(as_text=True)
    assert 'id="no-snapshot"' in html and 'id="test-record"' not in html and 'id="test-image"' not in html
    ready = fake.add_job("model", "ready")
    html = client.get(f"/models/{ready}/infer").get_data(as_text=True)
    assert 'id="no-snapshot"' not in html and 'id="test-record"' in html


def test_a_dataset_gone_since_the_form_was_opened_is_named_as_such(env):
    app, client, fake, _ = env
    form = {"dataset": "20260101-000000-9999", "epochs": "1", "snapshot_interval": "1", "val_interval": "1",
            "batch_accumulation": "1", "solver_type": "SGD", "base_lr": "0.01", "lr_policy": "fixed",
            "mean_subtraction": "none", "network_source": "custom", "custom_network": "name: 'x'",
            "model_name": "late"}
    html = client.post("/models/new", data=form).get_data(as_text=True)
    assert "this dataset is no longer available" in html and "Not a valid choice" not in html
