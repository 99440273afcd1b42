"""Uploads to infer do not pile up (issue 16 item 7): removed after their inference, whether it
succeeded or failed, and leftovers of a stopped process are pruned."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np

from test_web_fakes import FakeBackend
from test_web_upload_and_results import _png, _site
from caffeseg.web.backend import BadRequest
from caffeseg.web.inference_store import STALE_UPLOAD_SECONDS, prune_uploads


def _uploads(fake, model):
    folder = Path(fake.job(model)["dir"]) / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_successful_inference_leaves_no_upload(tmp_path):
    client, fake, m = _site(tmp_path)
    big = (np.arange(80 * 100).reshape(80, 100) % 4000).astype(np.uint16)  # resized to 32×32 first
    resp = client.post(f"/models/{m}/infer", data={"which": "image", "image": (_png(big), "slice.png")},
                       content_type="multipart/form-data")
    assert resp.status_code == 302
    assert _uploads(fake, m) == []
    assert "upload slice.png" in client.get(resp.headers["Location"]).get_data(as_text=True)  # result kept


def test_a_failed_inference_leaves_no_upload(tmp_path):
    class Refusing(FakeBackend):
        def infer(self, job_id, snapshot, *, record=None, image_path=None, visualize=False):
            raise BadRequest(f"cannot read image {image_path}")
    client, fake, m = _site(tmp_path, Refusing(tmp_path / "jobs"))
    for i in range(3):
        resp = client.post(f"/models/{m}/infer", data={"which": "image", "image": (io.BytesIO(b"junk"), f"b{i}.png")},
                           content_type="multipart/form-data")
        assert resp.status_code == 400
    assert _uploads(fake, m) == []  # before: one file per failed attempt, forever
    api = client.post(f"/api/jobs/{m}/infer", data={"image": (io.BytesIO(b"junk"), "c.png")},
                      headers={"X-Requested-With": "test"}, content_type="multipart/form-data")
    assert api.status_code == 400 and _uploads(fake, m) == []


def test_leftovers_of_a_stopped_process_are_pruned(tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    old, fresh = folder / "old.png", folder / "fresh.png"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    past = time.time() - STALE_UPLOAD_SECONDS - 10
    os.utime(old, (past, past))
    assert prune_uploads(folder) == ["old.png"]
    assert sorted(p.name for p in folder.iterdir()) == ["fresh.png"]
