"""Hardening of the JSON API (issue 16 items 15, 16, 17, 21): unknown keys are a 400 naming them,
the documented example uses the real names, the service's one option check answers the API as it
answers the CLI, and a prototxt syntax error's JSON has its line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from test_web_fakes import FakeBackend, sunnybrook_plugin
from tests.jobs_fixtures import TINY_NET, make_dataset_dir
from caffeseg.web import create_app

DOCS = Path(__file__).resolve().parent.parent / "docs" / "WEB.md"


@pytest.fixture
def fake_env(tmp_path):
    data = tmp_path / "data"
    (data / "sample" / "challenge_training").mkdir(parents=True)
    (data / "sample" / "Sunnybrook Cardiac MR Database ContoursPart3").mkdir(parents=True)
    (data / "sample" / "TrainingDataContours").mkdir(parents=True)
    fake = FakeBackend(tmp_path / "jobs")
    app = create_app({"DATA_DIR": str(data), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()],
                      "WTF_CSRF_ENABLED": False, "TESTING": True})
    return app.test_client(), fake, data


def _documented_dataset_body(data):
    """The POST /api/datasets example of docs/WEB.md, with its /data paths on this test's data."""
    text = DOCS.read_text()
    match = re.search(r"localhost:5000/api/datasets -d '(\{.*?\})'", text, re.S)
    assert match, "docs/WEB.md has no POST /api/datasets example"
    # the shell pieces of the example ('"$HOME"'/.caffeseg or /data) become this test's data folder
    body = match.group(1).replace("'\"$HOME\"'/.caffeseg/", str(data) + "/").replace('"/data/', '"%s/' % data)
    return json.loads(body)


# -- item 15 -------------------------------------------------------------------------------------

def test_the_documented_dataset_example_uses_real_names_and_is_accepted(fake_env):
    client, fake, data = fake_env
    body = _documented_dataset_body(data)
    assert "val_pct" not in json.dumps(body)
    resp = client.post("/api/datasets", json=body)
    assert resp.status_code == 201, resp.get_json()


def test_unknown_keys_are_a_400_naming_them(fake_env):
    client, fake, data = fake_env
    body = _documented_dataset_body(data)
    body["values"]["val_pct"] = 30  # the old documented name: was ignored (201, default 10 %)
    resp = client.post("/api/datasets", json=body)
    assert resp.status_code == 400
    assert "val_pct" in resp.get_json()["error"] and resp.get_json()["fields"] == {"val_pct": "unknown field"}
    resp = client.post("/api/datasets", json=dict(_documented_dataset_body(data), option={"x": 1}))
    assert resp.status_code == 400 and "option" in resp.get_json()["error"]
    ds = fake.add_job("dataset", "d")
    model = {"dataset": ds, "model_name": "m", "network_source": "standard", "standard_network": "fcn_tiny",
             "learning_rate": 0.1}
    resp = client.post("/api/models", json=model)
    assert resp.status_code == 400 and "learning_rate" in resp.get_json()["fields"]
    resp = client.post("/api/network/inspect", json={"text": "name: 'x'", "datset": ds})
    assert resp.status_code == 400 and "datset" in resp.get_json()["error"]


def test_val_percent_100_is_refused_by_the_api(fake_env):
    client, fake, data = fake_env
    body = _documented_dataset_body(data)
    body["values"]["val_percent"] = 100
    resp = client.post("/api/datasets", json=body)
    assert resp.status_code == 400 and "val_percent" in resp.get_json()["fields"]


def test_a_non_finite_point_is_a_gap_not_dropped(real_env):
    client, service, dataset = real_env
    job = service.store.add_job("20260101-000000-abcd", "model", "m", str(Path(dataset["dir"]).parent / "m"),
                                dataset_id=dataset["id"], status="Error")
    service.store.add_metrics(job["id"], [(5, "train", "loss", 0.7), (5, "val", "loss", float("nan")),
                                          (10, "train", "loss", 0.6)])
    series = client.get(f"/api/jobs/{job['id']}/metrics").get_json()["series"]
    assert series["val/loss"] == [[5, None]]  # null: Plotly leaves a gap; the job's error says why
    assert series["train/loss"] == [[5, 0.7], [10, 0.6]]


# -- items 16, 17, 21 on the real service ----------------------------------------------------------

@pytest.fixture
def real_env(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "START_WORKER": False, "WTF_CSRF_ENABLED": False})
    service = app.extensions["caffeseg_backend"].service
    dataset = service.import_dataset(make_dataset_dir(str(tmp_path / "built"), train=10, val=4), "ds")
    return app.test_client(), service, dataset


def _model_body(dataset, **extra):
    body = {"dataset": dataset["id"], "model_name": "m", "network_source": "custom", "custom_network": TINY_NET,
            "epochs": 1, "lr_policy": "fixed", "mean_subtraction": "none"}
    body.update(extra)
    return body


@pytest.mark.parametrize("extra, words", [
    ({"base_lr": -1}, "base_lr"),  # the form's own range check answers first, naming the field
    ({"base_lr": 0}, "base_lr"),
    ({"batch_size": 32}, "larger than the 10 training records"),
    ({"lr_policy": "exp", "lr_gamma": 0}, "0 after the first iteration"),
    ({"lr_policy": "poly", "lr_power": -1}, "grow"),
])
def test_the_api_gets_the_services_one_option_check(real_env, extra, words):
    client, service, dataset = real_env
    resp = client.post("/api/models", json=_model_body(dataset, **extra))
    assert resp.status_code == 400, resp.get_json()
    assert words in json.dumps(resp.get_json())
    assert not any(j["kind"] == "model" for j in service.list_jobs())


def test_a_prototxt_syntax_error_has_its_line_in_the_json(real_env):
    client, service, dataset = real_env
    broken = TINY_NET.rstrip() + '\nlayer {\n  name: "x"\n  typo_field: 1\n}\n'
    line = broken.splitlines().index("  typo_field: 1") + 1
    resp = client.post("/api/models", json=_model_body(dataset, custom_network=broken))
    data = resp.get_json()
    assert resp.status_code == 400 and "typo_field" in data["error"]
    assert data["line"] == line, data


def test_a_warning_of_the_option_check_is_on_the_model_page(real_env, tmp_path):
    client, service, _ = real_env
    no_val = service.import_dataset(make_dataset_dir(str(tmp_path / "noval"), train=10, val=0), "no val")
    resp = client.post("/api/models", json=_model_body(no_val))
    assert resp.status_code == 201, resp.get_json()
    [job_id] = resp.get_json()["ids"]
    page = client.get(f"/models/{job_id}").get_data(as_text=True)
    assert "data-warning" in page and "the dataset has no validation records" in page
    assert client.get(f"/api/jobs/{job_id}").get_json()["warnings"][0].startswith("the dataset has no validation")


def test_a_sweep_from_the_form_says_the_option_checks_warning_on_the_page_it_leads_to(real_env, tmp_path):
    client, service, _ = real_env
    no_val = service.import_dataset(make_dataset_dir(str(tmp_path / "noval"), train=10, val=0), "no val")
    form = dict(_model_body(no_val), base_lr="0.01,0.001", solver_type="SGD", snapshot_interval="1",
                val_interval="1", batch_accumulation="1")
    resp = client.post("/models/new", data=form)
    assert resp.status_code == 302, resp.get_data(as_text=True)[:2000]
    assert len([j for j in service.list_jobs() if j["kind"] == "model"]) == 2
    home = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "2 models created" in home and "Warning: the dataset has no validation records" in home
