"""MAX_PRETRAINED_UPLOAD=0, replacing a stored inference result safely, the cached library version."""
from __future__ import annotations

import io
import json
import os

import numpy as np

from test_web_fakes import FakeBackend, sunnybrook_plugin
from caffeseg.web import create_app


def test_max_pretrained_upload_0_means_no_limit_on_its_endpoints(tmp_path):
    fake = FakeBackend(tmp_path / "jobs")
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()],
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
    from caffeseg.web.inference_store import save_result
    job = _job(tmp_path)
    save_result(job, _result(1), "record", token="rec-10-ab", extra={"snapshot_stamp": [1, 1]})
    save_result(job, _result(2), "record", token="rec-10-ab", extra={"snapshot_stamp": [2, 2]})
    assert _stored(job, "rec-10-ab")["snapshot_stamp"] == [2, 2]
    assert os.listdir(tmp_path_root(job)) == ["rec-10-ab"]  # no temporary or trash folder left


def test_a_concurrent_fresh_result_is_kept_not_deleted(tmp_path):
    """Two requests for the same out-of-date record: the second must not delete the first's
    fresh result (a reader may be loading its PNGs)."""
    from caffeseg.web.inference_store import save_result
    job = _job(tmp_path)
    save_result(job, _result(1), "record", token="rec-10-ab", extra={"snapshot_stamp": [2, 2]})
    marker = tmp_path_root(job) / "rec-10-ab" / "reader-holds-this"
    marker.write_text("x")
    save_result(job, _result(2), "record", token="rec-10-ab", extra={"snapshot_stamp": [2, 2]})
    assert marker.exists()
    assert os.listdir(tmp_path_root(job)) == ["rec-10-ab"]


def test_a_winner_between_the_two_renames_is_kept(tmp_path, monkeypatch):
    from caffeseg.web import inference_store as inference
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
    from caffeseg.web.views import vendor
    vendor.library_version.cache_clear()
    asked = []
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: asked.append(name) or real(name))
    first = vendor.library_version("plotly.min.js")
    assert vendor.library_version("plotly.min.js") == first
    assert asked == ["plotly"]
    vendor.library_version.cache_clear()


def _site(tmp_path, backend=None):
    fake = backend or FakeBackend(tmp_path / "jobs")
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()],
                      "WTF_CSRF_ENABLED": False})
    model = fake.add_job("model", "fcn", dataset_id=fake.add_job("dataset", "d"))
    return app.test_client(), fake, model


def _png(array):
    import cv2
    ok, buf = cv2.imencode(".png", array)
    return io.BytesIO(buf.tobytes())


def test_an_upload_of_another_size_is_resized_to_the_datasets_size(tmp_path):
    """The fake dataset's images are 32×32: a 100×80 upload is squashed to 32×32 (16-bit kept)
    before the backend sees it, and the result page says so; a 32×32 upload goes as it is."""
    import tifffile
    client, fake, m = _site(tmp_path)
    seen = {}  # what the backend was given, read while it infers (the upload is removed after)
    real_infer = fake.infer

    def infer(job_id, snapshot, *, record=None, image_path=None, visualize=False):
        if image_path and image_path.endswith(".tif"):
            seen["image"] = tifffile.imread(image_path)
        return real_infer(job_id, snapshot, record=record, image_path=image_path, visualize=visualize)
    fake.infer = infer
    small = (np.arange(80 * 100).reshape(80, 100) % 4000).astype(np.uint16)
    resp = client.post(f"/models/{m}/infer", data={"which": "image", "image": (_png(small), "small.png")},
                       content_type="multipart/form-data")
    assert resp.status_code == 302, resp.get_data(as_text=True)
    image = seen["image"]
    assert image.shape == (32, 32) and image.dtype == np.uint16
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "resized from 100×80 to 32×32" in page and "upload small.png" in page
    resp = client.post(f"/models/{m}/infer", data={"which": "image", "image": (_png(small[:32, :32]), "exact.png")},
                       content_type="multipart/form-data")
    assert resp.status_code == 302 and fake.calls[-1][4].endswith("-exact.png")
    assert "resized from" not in client.get(resp.headers["Location"]).get_data(as_text=True)


def test_an_unreadable_upload_is_named_as_the_user_named_it_never_by_server_path(tmp_path):
    from caffeseg.web.backend import BadRequest

    class Refusing(FakeBackend):
        def infer(self, job_id, snapshot, *, record=None, image_path=None, visualize=False):
            if image_path:  # as jobs.service words it
                raise BadRequest(f"cannot read image {image_path} (not an image OpenCV can read)")
            return super().infer(job_id, snapshot, record=record, image_path=image_path, visualize=visualize)
    client, fake, m = _site(tmp_path, Refusing(tmp_path / "jobs"))
    resp = client.post(f"/models/{m}/infer", data={"which": "image", "image": (io.BytesIO(b"junk"), "my bad.png")},
                       content_type="multipart/form-data")
    text = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "cannot read image my bad.png" in text
    assert str(tmp_path) not in text and "uploads" not in text


def test_snapshot_and_visualize_are_shared_by_both_tests_on_the_infer_form(tmp_path):
    client, fake, m = _site(tmp_path)
    html = client.get(f"/models/{m}/infer").get_data(as_text=True)

    def card(card_id):
        return html.split(f'id="{card_id}"', 1)[1].split("</section>", 1)[0]
    shared, record, image = card("infer-shared"), card("infer-record-card"), card("infer-image-card")
    assert 'name="snapshot"' in shared and 'name="visualize"' in shared and "both" in shared
    for own in (record, image):
        assert 'name="snapshot"' not in own and 'name="visualize"' not in own
    assert 'name="record"' in record and 'name="image"' in image


def test_compare_explains_what_is_missing_and_offers_the_ticked_models_records(tmp_path):
    client, fake, m = _site(tmp_path)
    text = client.get("/compare?record=").get_data(as_text=True)  # the form sent with nothing chosen
    assert "tick at least one model" in text and "choose a validation record" in text
    assert "Tick a model to list" in text
    assert "tick at least one model" not in client.get("/compare").get_data(as_text=True)  # the bare form
    listing = client.get(f"/compare/records?models={m}").get_json()
    assert [r["key"] for r in listing["records"]] == ["00000000", "00000001"]
    assert listing["records"][1]["name"] == "SC-HF-NI-3 / 0049"
    assert client.get("/compare/records").get_json()["records"] == []
    text = client.get(f"/compare?models={m}").get_data(as_text=True)
    assert "choose a validation record" in text and "tick at least one model" not in text
    assert 'value="00000001"' in text and "SC-HF-NI-3 / 0049" in text
    assert 'src="/static/js/compare.js"' in text


def test_an_uploaded_image_result_offers_no_compare_with_an_empty_record(tmp_path):
    client, fake, m = _site(tmp_path)
    resp = client.post(f"/models/{m}/infer", data={"which": "image", "image": (_png(np.zeros((32, 32), np.uint8)), "u.png")},
                       content_type="multipart/form-data")
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "Compare with other models" not in page and "/compare?" not in page
    resp = client.post(f"/models/{m}/infer", data={"which": "record", "record": "00000001"})
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "Compare with other models" in page and "record=00000001" in page
