"""The JSON API: every route, JSON errors, the CSRF rule for state changes, the OpenAPI file."""
from __future__ import annotations

import io
import re

import pytest

from test_web_fakes import FakeBackend, sunnybrook_plugin
from caffeseg.web import create_app

H = {"X-Requested-With": "test"}


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data"
    (data / "sunny" / "images").mkdir(parents=True)
    (data / "sunny" / "contours").mkdir(parents=True)
    fake = FakeBackend(tmp_path / "jobs")
    app = create_app({"DATA_DIR": str(data), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()], "WTF_CSRF_ENABLED": True})
    return app.test_client(), fake, data


def test_health_and_openapi(env):
    client, _, _ = env
    assert client.get("/api/health").get_json() == {"status": "ok"}
    text = client.get("/api/openapi.yaml").get_data(as_text=True)
    assert text.startswith("openapi: 3")
    # Every API route of the app is documented.
    app = client.application
    documented = set(re.findall(r"^  (/api/[^:]*):", text, re.M))
    routes = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule) for r in app.url_map.iter_rules()
              if r.rule.startswith("/api/")}
    routes.discard("/api/jobs/{job_id}/{action}")
    routes |= {"/api/jobs/{job_id}/abort", "/api/jobs/{job_id}/resume", "/api/jobs/{job_id}/clone",
               "/api/jobs/{job_id}/evaluate"}
    assert routes <= documented, routes - documented


def test_errors_are_json(env):
    client, _, _ = env
    resp = client.get("/api/jobs/does-not-exist")
    assert resp.status_code == 404 and resp.get_json()["error"]
    resp = client.get("/api/jobs/bad.id")
    assert resp.status_code == 400 and "invalid job id" in resp.get_json()["error"]
    assert client.get("/api/nothing-here").get_json()["status"] == 404


def test_jobs_listing_and_detail(env):
    client, fake, _ = env
    ds = fake.add_job("dataset", "d")
    m = fake.add_job("model", "m", dataset_id=ds)
    assert {j["id"] for j in client.get("/api/jobs").get_json()} == {ds, m}
    assert [j["id"] for j in client.get("/api/jobs?kind=model").get_json()] == [m]
    detail = client.get(f"/api/jobs/{m}").get_json()
    assert detail["snapshots"][0]["iteration"] == 4 and "log" not in detail
    assert client.get(f"/api/jobs/{m}/log").get_data(as_text=True) == "log of m\n"


def test_metrics_since(env):
    client, fake, _ = env
    m = fake.add_job("model", "m", status="Running")
    first = client.get(f"/api/jobs/{m}/metrics?since=0").get_json()
    assert first["series"]["train/loss"][0] == [0, 1.0]
    later = client.get(f"/api/jobs/{m}/metrics?since=3").get_json()
    assert all(p[0] >= 3 for s in later["series"].values() for p in s)


def test_state_changes_need_json_or_header(env):
    client, fake, _ = env
    m = fake.add_job("model", "m", status="Running")
    # A cross-site form post (no JSON, no custom header) is refused.
    resp = client.post(f"/api/jobs/{m}/abort", data={"x": "1"})
    assert resp.status_code == 403 and fake.job(m)["status"] == "Running"
    assert client.post(f"/api/jobs/{m}/abort", headers=H).get_json()["status"] == "Aborted"
    assert client.post(f"/api/jobs/{m}/resume", json={}).get_json()["status"] == "Running"
    assert client.post(f"/api/jobs/{m}/clone", json={}).get_json()["epochs"] == 3
    assert client.post(f"/api/jobs/{m}/evaluate", json={}).get_json()["summary"]["dice"]["mean"] == 0.8
    assert client.get(f"/api/jobs/{m}/download").data == b"archive"
    assert client.post(f"/api/jobs/{m}/explode", json={}).status_code == 404
    assert client.delete(f"/api/jobs/{m}").status_code == 403
    assert client.delete(f"/api/jobs/{m}", headers=H).get_json() == {"deleted": m}


def test_create_dataset_validates_like_the_form(env):
    client, fake, data = env
    body = {"plugin": "sunnybrook",
            "values": {"image_folder": str(data / "sunny" / "images"), "contour_folder": str(data / "sunny" / "contours"),
                       "val_percent": 20, "split_by": "patient"},
            "options": {"dataset_name": "api-ds", "encoding": "png"}}
    resp = client.post("/api/datasets", json=body)
    assert resp.status_code == 201, resp.get_json()
    call = [c for c in fake.calls if c[0] == "create_dataset"][0]
    assert call[2]["val_percent"] == 20 and call[2]["split_by"] == "patient" and call[3]["encoding"] == "png"
    body["values"]["image_folder"] = "/etc"
    resp = client.post("/api/datasets", json=body)
    assert resp.status_code == 400 and "outside" in resp.get_json()["fields"]["image_folder"]
    assert client.post("/api/datasets", json={"plugin": "nope"}).status_code == 404


def test_create_model_with_sweep(env):
    client, fake, _ = env
    ds = fake.add_job("dataset", "d")
    body = {"dataset": ds, "model_name": "api-m", "base_lr": [0.1, 0.01], "epochs": 2,
            "network_source": "standard", "standard_network": "fcn_tiny", "lr_policy": "fixed"}
    resp = client.post("/api/models", json=body)
    assert resp.status_code == 201, resp.get_json()
    assert len(resp.get_json()["ids"]) == 2
    resp = client.post("/api/models", json=dict(body, base_lr="zero"))
    assert resp.status_code == 400 and "base_lr" in resp.get_json()["fields"]


def test_records_networks_paths(env):
    client, fake, data = env
    ds = fake.add_job("dataset", "d")
    recs = client.get(f"/api/datasets/{ds}/records?stage=val").get_json()
    assert recs["total"] == 2 and recs["records"][1]["name"] == "SC-HF-NI-3 / 0049"
    assert client.get(recs["records"][0]["feature_url"]).mimetype == "image/png"
    assert client.get(f"/api/datasets/{ds}/records?stage=test").status_code == 400
    assert client.get("/api/networks").get_json()["standard"][0]["name"] == "fcn_tiny"
    comp = client.get("/api/paths/complete?prefix=" + str(data) + "/su").get_json()
    assert comp["completions"] == [str(data.resolve() / "sunny") + "/"]
    assert client.get("/api/paths/complete?prefix=/etc/pa").get_json()["completions"] == []
    assert client.get("/api/paths/complete?prefix=").get_json()["completions"] == [str(data.resolve()) + "/"]


def test_network_inspect_requires_text_and_reports_the_error_line(env, monkeypatch):
    from caffeseg.web.backend import Unavailable
    client, fake, _ = env
    assert client.post("/api/network/inspect", json={}).status_code == 400
    res = client.post("/api/network/inspect", json={"text": 'name: "n"\nlayer {\n  typo: 1\n}\n'})
    assert res.status_code == 400 and res.get_json()["line"] == 3 and "typo" in res.get_json()["error"]
    # A feature this installation cannot run (Unavailable): the API says so with a 501.
    def unavailable(*args, **kwargs):
        raise Unavailable("network visualization is not available in this installation")
    monkeypatch.setattr(fake, "inspect_network", unavailable)
    assert client.post("/api/network/inspect", json={"text": "name: 'x'"}).status_code == 501


def test_infer_api_record_and_upload(env):
    client, fake, _ = env
    m = fake.add_job("model", "m")
    res = client.post(f"/api/jobs/{m}/infer", json={"record": "00000001", "snapshot": 4})
    assert res.status_code == 201
    body = res.get_json()
    assert body["metrics"]["dice"] == 0.9 and body["has_label"] and set(body["urls"]) == {"image", "prediction", "label"}
    assert client.get(body["urls"]["prediction"]).status_code == 200
    res = client.post(f"/api/jobs/{m}/infer", headers=H, data={"image": (io.BytesIO(b"DICM"), "x.dcm")},
                      content_type="multipart/form-data")
    assert res.status_code == 201 and not res.get_json()["has_label"]
    assert client.post(f"/api/jobs/{m}/infer", json={}).status_code == 400
    assert client.post(f"/api/jobs/{m}/infer", json={"record": "zzz"}).status_code == 400
    assert client.get(f"/api/jobs/{m}/evaluation").get_json()["summary"]["dice"]["mean"] == 0.8


def test_openapi_document_is_valid_yaml_with_schemas(env):
    import yaml
    client, _, _ = env
    doc = yaml.safe_load(client.get("/api/openapi.yaml").get_data(as_text=True))
    assert doc["openapi"].startswith("3.")
    assert "Error" in doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method != "parameters":
                assert op.get("summary") and op.get("responses"), (path, method)


def test_the_api_link_opens_a_reference_page_of_every_operation(env):
    import yaml
    client, _, _ = env
    home = client.get("/").get_data(as_text=True)
    assert 'href="/api/">API</a>' in home
    resp = client.get("/api/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    spec = yaml.safe_load(client.get("/api/openapi.yaml").get_data(as_text=True))
    for path, item in spec["paths"].items():
        for method in item:
            if method in ("get", "post", "put", "patch", "delete"):
                assert f'id="{method}{path}"'.replace("/", "-").replace("{", "").replace("}", "") in html, (method, path)
    assert "variant" in html and "one of <code>gray</code>, <code>rgb</code>" in html  # body fields of POST /api/pretrained/{name}/prepare
