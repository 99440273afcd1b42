"""MAX_PRETRAINED_UPLOAD=0, replacing a stored inference result safely, the cached library version."""
from __future__ import annotations

import io
import json
import os

import numpy as np

from test_web_fakes import FakeBackend, fake_plugin
from web import create_app


def test_max_pretrained_upload_0_means_no_limit_on_its_endpoints(tmp_path):
    fake = FakeBackend(tmp_path / "jobs")
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "BACKEND": fake, "PLUGINS": [fake_plugin()],
                      "MAX_CONTENT_LENGTH": 1000, "MAX_PRETRAINED_UPLOAD": 0})
    client = app.test_client()
    assert "any size" in client.get("/?tab=pretrained").get_data(as_text=True)

    def post(url, size, **headers):
        return client.post(url, data={"name": "n", "prototxt": (io.BytesIO(b"name: 'x'"), "n.prototxt"),
                                      "weights": (io.BytesIO(b"w" * size), "n.caffemodel")},
                           content_type="multipart/form-data", headers=headers)
    # past MAX_CONTENT_LENGTH, yet not 413: refused for the missing token / the content instead
    assert post("/pretrained/upload", 50_000).status_code == 400
    assert post("/api/pretrained", 50_000, **{"X-Requested-With": "t"}).status_code == 400
    assert client.post("/models/new", data={"x": "y" * 5000}).status_code == 413  # others keep the app limit


def _result(value):
    return {"image": np.full((4, 4), value, np.float32), "prediction": np.zeros((4, 4), np.int64),
            "classes": ["bg", "lv"], "palette": [[0, 0, 0], [255, 0, 0]], "snapshot": 10}


def _job(tmp_path):
    job = {"id": "m1", "dir": str(tmp_path / "m1")}
    os.makedirs(job["dir"])
    return job


def _stored(job, token):
    return json.loads((tmp_path_root(job) / token / "result.json").read_text())


def tmp_path_root(job):
    from pathlib import Path
    return Path(job["dir"]) / "inference"


def test_a_stale_result_is_replaced_and_nothing_is_left_aside(tmp_path):
    from web.views.inference import save_result
    job = _job(tmp_path)
    save_result(job, _result(1), "record", token="rec-10-ab", extra={"snapshot_stamp": [1, 1]})
    save_result(job, _result(2), "record", token="rec-10-ab", extra={"snapshot_stamp": [2, 2]})
    assert _stored(job, "rec-10-ab")["snapshot_stamp"] == [2, 2]
    assert os.listdir(tmp_path_root(job)) == ["rec-10-ab"]  # no temporary or trash folder left


def test_a_concurrent_fresh_result_is_kept_not_deleted(tmp_path):
    """Two requests for the same out-of-date record: the second must not delete the first's
    fresh result (a reader may be loading its PNGs)."""
    from web.views.inference import save_result
    job = _job(tmp_path)
    save_result(job, _result(1), "record", token="rec-10-ab", extra={"snapshot_stamp": [2, 2]})
    marker = tmp_path_root(job) / "rec-10-ab" / "reader-holds-this"
    marker.write_text("x")
    save_result(job, _result(2), "record", token="rec-10-ab", extra={"snapshot_stamp": [2, 2]})
    assert marker.exists()
    assert os.listdir(tmp_path_root(job)) == ["rec-10-ab"]


def test_a_winner_between_the_two_renames_is_kept(tmp_path, monkeypatch):
    from web.views import inference
    job = _job(tmp_path)
    inference.save_result(job, _result(1), "record", token="rec-10-ab", extra={"snapshot_stamp": [1, 1]})
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((str(src), str(dst)))
        real_rename(src, dst)
        if ".trash-" in str(dst) and len(calls) == 2:  # another request installs its result now
            os.makedirs(dst.parent / "rec-10-ab")
            (dst.parent / "rec-10-ab" / "result.json").write_text(json.dumps({"snapshot_stamp": [2, 2], "who": "other"}))
            (dst.parent / "rec-10-ab" / "image.png").write_bytes(b"png")
    monkeypatch.setattr(inference.os, "rename", rename)
    inference.save_result(job, _result(2), "record", token="rec-10-ab", extra={"snapshot_stamp": [2, 2]})
    assert _stored(job, "rec-10-ab")["who"] == "other"
    assert os.listdir(tmp_path_root(job)) == ["rec-10-ab"]


def test_library_version_is_looked_up_once(monkeypatch):
    import importlib.metadata
    from web.views import vendor
    vendor.library_version.cache_clear()
    asked = []
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: asked.append(name) or real(name))
    first = vendor.library_version("plotly.min.js")
    assert vendor.library_version("plotly.min.js") == first
    assert asked == ["plotly"]
    vendor.library_version.cache_clear()
