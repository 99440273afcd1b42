"""Test Many (a server folder, a list file, uploads, a zip, a whole dataset stage) as one request
with progress, per-image statistics, CSV, compact class-map/probability files; DIGITS' layer
pictures (activation grids, weight images, parameter counts) in the single-image answer."""
import csv
import io
import os
import threading
import time
import zipfile

import cv2
import numpy as np
import pytest

from caffeseg.jobs import infer as inf
from caffeseg.jobs import infer_many as im
from caffeseg.jobs import visualize
from caffeseg.jobs.service import ServiceError
from tests.test_jobs_eval_infer_export import fake_model_job, job  # noqa: F401 (the fixture)


@pytest.fixture
def model(job, tmp_path, monkeypatch):  # noqa: F811
    return fake_model_job(job, tmp_path, monkeypatch)


def _images(folder, n=3):
    """n 8x8 PNGs; image k has a 2x(k+1) block of 200 (class 1 after the 1/255 scale)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k in range(n):
        image = np.zeros((8, 8), np.uint8)
        image[0:2, 0:k + 1] = 200
        path = os.path.join(folder, "img%d.png" % k)
        cv2.imwrite(path, image)
        paths.append(path)
    return paths


def test_a_server_folder_inside_the_roots(model, tmp_path):
    svc, m, _ = model
    _images(str(tmp_path / "data" / "many"))
    (tmp_path / "data" / "many" / "notes.txt").write_text("not an image")
    done = svc.test_many(m["id"], folder=str(tmp_path / "data" / "many"), roots=[str(tmp_path / "data")],
                         probabilities=True, wait=True)
    assert done["status"]["state"] == "Done" and done["status"]["done"] == done["status"]["total"] == 3
    rows = done["rows"]
    assert [r["source"] for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert [r["lv_area_px"] for r in rows] == [2, 4, 6]  # counted by hand: 2 x (k+1) pixels
    assert rows[2]["classes"]["lv"] == {"pixels": 6, "fraction": 6 / 64.0}
    assert rows[2]["classes"]["background"]["pixels"] == 58
    # the fake net scores (0.5, x) per pixel, x the preprocessed pixel (TINY_NET's train_val has no
    # transform scale, so x = 200 or 0): p(lv) = 1 / (1 + e^(0.5 - x)), p(background at 0) = e^0.5 / (e^0.5 + 1)
    p_lv, p_bg0 = 1.0 / (1.0 + np.exp(0.5 - 200.0)), np.exp(0.5) / (np.exp(0.5) + 1.0)
    assert rows[0]["mean_confidence"] == pytest.approx((2 * p_lv + 62 * p_bg0) / 64, rel=1e-5)
    class_map = cv2.imread(os.path.join(done["folder"], rows[1]["files"]["class_map"]), cv2.IMREAD_UNCHANGED)
    assert class_map.dtype == np.uint8 and class_map.sum() == 4 and class_map[0, :2].tolist() == [1, 1]
    probs = np.load(os.path.join(done["folder"], rows[1]["files"]["probabilities"]))
    assert probs.dtype == np.float16 and probs.shape == (2, 8, 8)
    assert float(probs[1, 0, 0]) == pytest.approx(p_lv, abs=1e-3)
    with open(os.path.join(done["folder"], "results.csv")) as f:
        table = list(csv.DictReader(f))
    assert [t["lv_area_px"] for t in table] == ["2", "4", "6"] and float(table[2]["fraction_lv"]) == 6 / 64.0
    assert [r["id"] for r in svc.test_many_list(m["id"])] == [done["id"]]
    # the web's results grid: a coloured thumbnail of each class map
    from caffeseg.web import create_app
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "JOBS_DIR": svc.root, "WTF_CSRF_ENABLED": False,
                      "START_WORKER": False})
    client = app.test_client()
    page = client.get(f"/models/{m['id']}/test-many/{done['id']}").get_data(as_text=True)
    assert page.count('class="tm-thumb"') == 3 and "img2.png" in page
    thumb = client.get(f"/models/{m['id']}/test-many/{done['id']}/preview/1.png")
    colour = cv2.imdecode(np.frombuffer(thumb.data, np.uint8), cv2.IMREAD_COLOR)
    assert colour.shape == (8, 8, 3) and (colour[0, 0] != colour[7, 7]).any()  # LV coloured, background not
    assert client.get(f"/models/{m['id']}/test-many/{done['id']}/preview/9.png").status_code == 404
    with pytest.raises(ServiceError, match="outside the data folders"):
        svc.test_many(m["id"], folder=str(tmp_path), roots=[str(tmp_path / "data")], wait=True)
    assert len(svc.test_many_list(m["id"])) == 1  # a refused request leaves nothing behind


def test_a_list_file_with_labels_and_an_unreadable_entry(model, tmp_path):
    svc, m, _ = model
    paths = _images(str(tmp_path / "imgs"), 2)
    broken = tmp_path / "imgs" / "broken.png"
    broken.write_bytes(b"not a png")
    listing = tmp_path / "imgs" / "list.txt"
    listing.write_text("# DIGITS-style list\nimg0.png 1\n%s\n%s 0\n" % (paths[1], broken))
    done = svc.test_many(m["id"], list_file=str(listing), wait=True)
    rows = done["rows"]
    assert [r["lv_area_px"] for r in rows[:2]] == [2, 4]
    assert "error" in rows[2] and "lv_area_px" not in rows[2]  # one bad image does not stop the others
    listing.write_text("img0.png\nmissing.png\n")
    with pytest.raises(ServiceError, match="line 2 of .*missing.png is not a file"):
        svc.test_many(m["id"], list_file=str(listing), wait=True)


def test_a_zip_and_uploads(model, tmp_path):
    svc, m, _ = model
    paths = _images(str(tmp_path / "imgs"), 2)
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.write(paths[0], "a/img.png")
        zf.write(paths[1], "b/img.png")  # the same base name in another folder stays apart
        zf.writestr("readme.txt", "skipped")
        zf.writestr("../evil.png", open(paths[0], "rb").read())  # written flat inside the request
    done = svc.test_many(m["id"], zip_path=str(bundle), wait=True)
    assert [r["source"] for r in done["rows"]] == ["a/img.png", "b/img.png", "../evil.png"]
    assert [r["lv_area_px"] for r in done["rows"]] == [2, 4, 2]
    assert sorted(os.listdir(os.path.join(done["folder"], "inputs"))) == ["00000_img.png", "00001_img.png",
                                                                           "00002_evil.png"]
    assert not (tmp_path / "evil.png").exists()
    uploads = svc.test_many(m["id"], paths=paths, wait=True)
    assert [r["lv_area_px"] for r in uploads["rows"]] == [2, 4]
    with pytest.raises(ServiceError, match="exactly one"):
        svc.test_many(m["id"], paths=paths, zip_path=str(bundle), wait=True)


def test_a_whole_dataset_stage_with_metrics(model):
    svc, m, _ = model
    done = svc.test_many(m["id"], dataset_stage="val", wait=True)
    rows = done["rows"]
    assert [r["source"] for r in rows] == ["val:00000000", "val:00000001"]
    assert [r["dice"] for r in rows] == [pytest.approx(1.0), pytest.approx(8 / 20)]  # the fixture's by-hand values
    with open(os.path.join(done["folder"], "results.csv")) as f:
        assert "dice" in next(csv.reader(f))
    with pytest.raises(ServiceError, match="train or val"):
        svc.test_many(m["id"], dataset_stage="test", wait=True)


def test_background_request_reports_progress_and_stops_on_abort(model, tmp_path, monkeypatch):
    svc, m, _ = model
    paths = _images(str(tmp_path / "imgs"), 3)
    gate = threading.Event()
    slow_predict = inf.DeployModel.predict

    def predict(self, *args, **kwargs):
        gate.wait(10)
        return slow_predict(self, *args, **kwargs)
    monkeypatch.setattr(inf.DeployModel, "predict", predict)
    started = svc.test_many(m["id"], paths=paths)
    assert started["status"]["state"] == "Running" and started["status"]["done"] == 0
    svc.test_many_abort(m["id"], started["id"])
    gate.set()
    for _ in range(200):
        status = svc.test_many_status(m["id"], started["id"])
        if status["status"]["state"] != "Running":
            break
        time.sleep(0.05)
    assert status["status"]["state"] == "Aborted" and len(status["rows"]) < 3
    # a request a dead process left Running reads as Interrupted
    import json
    with open(os.path.join(status["folder"], "status.json"), "w") as f:
        json.dump(dict(status["status"], state="Running"), f)
    assert svc.test_many_status(m["id"], started["id"])["status"]["state"] == "Interrupted"
    with pytest.raises(KeyError):
        svc.test_many_status(m["id"], "t-../../x")


def test_compact_encodings_round_trip():
    class_map = np.array([[0, 1], [2, 1]], np.uint8)
    decoded = cv2.imdecode(np.frombuffer(im.encode_class_map(class_map), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded, class_map)
    probs = np.array([[[0.25, 0.5]], [[0.75, 0.5]]], np.float32)
    back = np.load(io.BytesIO(im.encode_probabilities(probs)))
    assert back.dtype == np.float16 and np.array_equal(back.astype(np.float32), probs)


def test_layer_pictures_by_hand():
    grid = visualize.tile(np.stack([np.zeros((2, 2)), np.ones((2, 2)), np.full((2, 2), 0.5)]))
    # 3 planes → 2 x 2 grid of 2x2 tiles with 1 px gaps; one scale: 0 → 0, 1 → 255, 0.5 → 128
    assert grid.shape == (5, 5) and grid[0, 0] == 0 and grid[0, 3] == 255 and grid[3, 0] == 128
    assert grid[2].tolist() == [0] * 5 and grid[3:, 3:].tolist() == [[0, 0], [0, 0]]
    assert visualize.weight_image(np.zeros((4, 4))) is None  # InnerProduct: no picture, as DIGITS
    assert visualize.weight_image(np.ones((2, 3, 3, 3))).shape == (3, 7, 3)
    counts, total = visualize.param_counts({"conv1": [np.zeros((4, 1, 3, 3)), np.zeros(4)], "fc": [np.zeros((2, 8))]})
    assert counts == {"conv1": 40, "fc": 16} and total == 56


def test_single_image_answer_has_activation_pictures(model):
    svc, m, _ = model
    one = svc.infer_record(m["id"], "00000000", visualize=True)
    data = next(row for row in one["layers"] if row["name"] == "data")
    picture = cv2.imdecode(np.frombuffer(data["png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert picture.shape == (8, 8) and picture.max() == 255 and picture.min() == 0
    score = next(row for row in one["layers"] if row["name"] == "score")
    assert cv2.imdecode(np.frombuffer(score["png"], np.uint8), cv2.IMREAD_UNCHANGED).shape == (8, 17)
    assert one["param_total"] == 0  # the fake net has no parameters
