"""The web's GPU parts (issue 20): the home page's free-GPU count, the model page's hardware panel
(and its live refresh data), the model form's GPU fields and their mapping to the service."""
from __future__ import annotations

import pytest

from test_web_fakes import FakeBackend, sunnybrook_plugin
from test_web_pages import model_form
from caffeseg.web import create_app, job_options


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    fake = FakeBackend(tmp_path / "jobs")
    app = create_app({"DATA_DIR": str(data), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()],
                      "WTF_CSRF_ENABLED": False, "TESTING": True})
    return app.test_client(), fake


def test_home_says_how_many_gpus_are_free(env):
    client, fake = env
    assert "No GPU on this server: trainings run on the CPU." in client.get("/").get_data(as_text=True)
    fake.gpus = {"total": 2, "free": [1], "jobs": {0: ["m"], 1: []}}
    assert "1 of 2 GPUs free (1)" in client.get("/").get_data(as_text=True)


def test_model_page_shows_the_hardware_it_runs_on(env):
    client, fake = env
    m = fake.add_job("model", "m1", status="Running")
    fake.hardware_panel = {
        "device": "GPU 0,1",
        "gpus": [{"index": 0, "name": "NVIDIA H100", "memory_used": 3 << 30, "memory_total": 80 << 30,
                  "utilization_percent": 97},
                 {"index": 1, "name": "NVIDIA H100", "memory_used": 2 << 30, "memory_total": 80 << 30,
                  "utilization_percent": 95}],
        "process": {"pid": 42, "processes": 2, "rss_bytes": 1500 << 20, "cpu_seconds": 10.0, "threads": 30,
                    "cpu_percent": 180.4},
        "system": {"cores": 16, "load_average": [3.25, 2.0, 1.0], "memory_total": 128 << 30,
                   "memory_available": 100 << 30, "memory_used_fraction": 0.2}}
    html = client.get(f"/models/{m}").get_data(as_text=True)
    assert 'id="hardware"' in html and "GPU 0,1" in html
    assert "NVIDIA H100: 3072 of 81920 MiB, 97 % busy" in html
    assert "1500 MiB memory, 180 % CPU (100 % = one core), 30 threads in 2 processes" in html
    assert "16 cores, load 3.25, 28.0 of 128.0 GiB memory in use" in html
    live = client.get(f"/models/{m}/live").get_json()
    assert live["hardware"]["gpus"][1]["utilization_percent"] == 95  # what model_page.js refreshes from


def test_cpu_model_page_says_cpu_and_not_running(env):
    client, fake = env
    m = fake.add_job("model", "m1", status="Done")
    html = client.get(f"/models/{m}").get_data(as_text=True)
    assert '<td id="hw-device">CPU</td>' in html and "not running" in html


def test_model_form_offers_the_gpu_choice_and_says_real_caffe_takes_one(env):
    client, fake = env
    ds = fake.add_job("dataset", "sunny-ds")
    html = client.get(f"/models/new?dataset={ds}").get_data(as_text=True)
    for name in ("gpu_count", "gpus", "share_gpus"):
        assert f'name="{name}"' in html, name
    assert "real Caffe trains a job on one GPU" in html


def test_model_form_passes_the_gpu_choice_on(env):
    client, fake = env
    ds = fake.add_job("dataset", "sunny-ds")
    resp = client.post("/models/new", data=model_form(ds, gpu_count="2", share_gpus="y"))
    assert resp.status_code == 302, resp.get_data(as_text=True)
    options = [c for c in fake.calls if c[0] == "create_model"][0][1]
    assert options["gpu_count"] == 2 and options["share_gpus"] is True


@pytest.mark.parametrize("over, message", [
    ({"gpus": "0,x"}, "GPU numbers separated by commas"),
    ({"gpus": "0,1", "gpu_count": "1"}, "not both"),
    ({"gpu_count": "-1"}, "Number must be"),
])
def test_bad_gpu_fields_are_shown_beside_them(env, over, message):
    client, fake = env
    ds = fake.add_job("dataset", "sunny-ds")
    resp = client.post("/models/new", data=model_form(ds, **over))
    assert resp.status_code in (200, 400)
    assert message in resp.get_data(as_text=True)
    assert not [c for c in fake.calls if c[0] == "create_model"]


def test_form_values_map_to_the_service_options_and_back(tmp_path):
    form = dict(dataset="d", model_name="m", epochs=1, base_lr=[0.01], gpu_count=None, gpus="0, 2",
                share_gpus=True)
    options, _ = job_options.service_model_options(form, tmp_path)
    assert (options["gpus"], options["share_gpus"]) == ("0, 2", True) and "gpu_count" not in options
    options, _ = job_options.service_model_options(dict(form, gpus="", gpu_count=0, share_gpus=False), tmp_path)
    assert options["gpu_count"] == 0 and "gpus" not in options and "share_gpus" not in options
    back = job_options.model_form_values({"gpus": [0, 2], "share_gpus": True, "gpu_count": None})
    assert back["gpus"] == "0,2" and back["share_gpus"] is True
