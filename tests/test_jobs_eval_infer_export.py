"""Evaluation maths (hand-computed), preprocessing and inference on a recording numpy net,
DICOM upload, contours, and the export archive round trip."""
import io
import json
import os
import tarfile

import numpy as np
import pytest

from caffeseg.engine.datum import array_to_datum
from caffeseg.engine.lmdb_io import LmdbWriter
from caffeseg.jobs import evaluate as ev
from caffeseg.jobs import export as ex
from caffeseg.jobs import infer as inf
from caffeseg.jobs.derive import DatasetFacts, derive_networks, derive_solver
from caffeseg.engine.prototxt import format_message, parse_net
from tests.jobs_fixtures import TINY_NET, make_dataset_dir


def test_mask_metrics_by_hand():
    pred = np.array([[1, 1], [0, 0]])
    label = np.array([[1, 0], [0, 0]])
    m = ev.mask_metrics(pred, label, pixel_spacing=(0.5, 2.0))
    assert m["dice"] == pytest.approx(2 / 3) and m["iou"] == pytest.approx(0.5)
    assert m["pixel_accuracy"] == pytest.approx(0.75)
    assert (m["pred_area_px"], m["label_area_px"]) == (2, 1)
    assert (m["pred_area_mm2"], m["label_area_mm2"]) == (pytest.approx(2.0), pytest.approx(1.0))
    empty = ev.mask_metrics(np.zeros((2, 2)), np.zeros((2, 2)))
    assert empty["dice"] == 1.0 and empty["pred_area_mm2"] is None
    s = ev.summarize([dict(m, key="a"), dict(empty, key="b")], worst=1)
    assert s["summary"]["dice"]["mean"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["summary"]["dice"]["std"] == pytest.approx((1 - 2 / 3) / 2)
    assert [w["key"] for w in s["worst"]] == ["a"]


class FakeBlob:
    def __init__(self, shape):
        self.data = np.zeros(shape, np.float32)

    def reshape(self, *shape):
        self.data = np.zeros(shape, np.float32)


class FakeNet:
    """score channel 1 = input, channel 0 = 0.5: class 1 where the preprocessed pixel > 0.5."""
    def __init__(self, deploy, weights, phase):
        assert os.path.isfile(deploy) and os.path.isfile(weights) and phase == "TEST"
        self.inputs = ["data"]
        self.blobs = {"data": FakeBlob((1, 1, 8, 8))}
        self.params = {}

    def reshape(self):
        pass

    def forward(self):
        x = self.blobs["data"].data
        score = np.concatenate([np.full_like(x, 0.5), x], axis=1)
        self.blobs["score"] = FakeBlob(score.shape)
        self.blobs["score"].data[...] = score
        return {"score": score}


class FakeCaffe:
    TEST = "TEST"
    Net = FakeNet


def write_db(path, arrays):
    with LmdbWriter(path) as w:
        for i, a in enumerate(arrays):
            w.put("%08d" % i, array_to_datum(a).SerializeToString())


@pytest.fixture
def job(tmp_path):
    ds = make_dataset_dir(str(tmp_path / "ds"), train=2, val=2)
    images = [np.zeros((1, 8, 8), np.uint8), np.zeros((1, 8, 8), np.uint8)]
    images[0][0, 2:6, 2:6] = 200  # scaled by 1/255 → 0.78 > 0.5 → class 1
    images[1][0, 0:2, 0:2] = 200
    labels = [np.zeros((1, 8, 8), np.uint8), np.zeros((1, 8, 8), np.uint8)]
    labels[0][0, 2:6, 2:6] = 1  # perfect
    labels[1][0, 0:4, 0:4] = 1  # 4 predicted of 16 → Dice 8/20
    for stage in ("train", "val"):
        write_db(os.path.join(ds, "%s_db" % stage, "features"), images)
        write_db(os.path.join(ds, "%s_db" % stage, "labels"), labels)
    facts = DatasetFacts.load(ds)
    net_text = TINY_NET.replace('include { stage: "val" } data_param',
                                'include { stage: "val" } transform_param { scale: 0.00392156862 } data_param', 1)
    train_val, deploy = derive_networks(parse_net(net_text), facts, {})
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "train_val.prototxt").write_text(format_message(train_val))
    (folder / "deploy.prototxt").write_text(format_message(deploy))
    (folder / "solver.prototxt").write_text(format_message(derive_solver(2, 2, 2, 2, {"epochs": 1})))
    (folder / "job.json").write_text(json.dumps({"classes": ["background", "lv"]}))
    (folder / "snapshot_iter_1.caffemodel").write_bytes(b"w1")
    (folder / "snapshot_iter_2.caffemodel").write_bytes(b"w2")
    (folder / "my_layer.py").write_text("# layer\n")
    return str(folder), ds


def test_evaluate_over_val_set(job):
    folder, ds = job
    model = inf.DeployModel.from_job(folder, caffe=FakeCaffe)
    assert model.weights.endswith("snapshot_iter_2.caffemodel")
    table = ev.evaluate(model, ds, os.path.join(folder, "evaluation.json"))
    dice = [r["dice"] for r in table["records"]]
    assert dice == [pytest.approx(1.0), pytest.approx(8 / 20)]
    assert table["records"][1]["label_area_mm2"] == pytest.approx(16 * 1.25 * 1.25)
    assert table["worst"][0]["key"] == "00000001"
    assert json.load(open(os.path.join(folder, "evaluation.json")))["count"] == 2


def test_infer_record_and_dicom_and_contour(job, tmp_path):
    folder, ds = job
    model = inf.DeployModel.from_job(folder, snapshot=1, caffe=FakeCaffe)
    image, label = inf.record_by_key(ds, "00000000")
    r = model.predict(image, label=label, visualize=True)
    assert r["metrics"]["dice"] == pytest.approx(1.0)
    assert r["probabilities"].shape == (2, 8, 8)
    assert np.allclose(r["probabilities"].sum(axis=0), 1.0)
    assert "data" in r["activations"] and r["activations"]["data"]["histogram"]
    contour = inf.lv_contours(r["class_map"])
    assert len(contour) == 1 and (2.5, 2.5) in contour[0]  # pixel (2, 2) of the outline, at its centre
    from caffeseg.jobs.clinical import mask_contour
    assert sorted(contour[0]) == sorted(map(tuple, mask_contour(r["class_map"] == 1).tolist()))
    assert inf.sunnybrook_contour_text([(2, 3)]) == "2.00 3.00\n"
    with pytest.raises(inf.InferError, match="no record"):
        inf.record_by_key(ds, "nope")
    dcm = write_dicom(tmp_path / "x.dcm", (np.asarray(image[0], np.uint16)))
    r2 = model.predict(inf.load_image(dcm))
    assert np.array_equal(r2["class_map"], r["class_map"])


def write_dicom(path, pixels):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def test_export_archive_round_trip(job, tmp_path):
    folder, ds = job
    archive = ex.export_model(folder, snapshot=1)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"deploy.prototxt", "snapshot_iter_1.caffemodel", "labels.txt", "info.json", "my_layer.py"} <= names
    out = ex.extract(archive, str(tmp_path / "unpacked"))
    assert open(os.path.join(out, "labels.txt")).read() == "background\nlv\n"
    again = inf.DeployModel.from_export(out, caffe=FakeCaffe)
    original = inf.DeployModel.from_job(folder, snapshot=1, caffe=FakeCaffe)
    image, _ = inf.record_by_key(ds, "00000001")
    assert np.array_equal(again.predict(image)["class_map"], original.predict(image)["class_map"])
    assert again.preprocess_spec["scale"] == pytest.approx(0.00392156862)


def test_service_evaluate_infer_export_with_fake_net(job, tmp_path, monkeypatch):
    from caffeseg.jobs.service import JobService, ServiceError
    _, ds = job
    monkeypatch.setattr(inf, "get_caffe", lambda backend="auto": FakeCaffe)
    svc = JobService(str(tmp_path / "jobs"))
    dataset = svc.import_dataset(ds, "d")
    [m] = svc.create_model({"dataset_id": dataset["id"], "network_text": TINY_NET, "epochs": 1})
    with pytest.raises(ServiceError, match="no snapshot yet"):
        svc.infer_record(m["id"], "00000000")
    open(os.path.join(m["dir"], "snapshot_iter_1.caffemodel"), "wb").write(b"w")
    table = svc.evaluate(m["id"])
    assert svc.evaluation(m["id"])["count"] == table["count"] == 2
    one = svc.infer_record(m["id"], "00000001", visualize=True)
    assert one["metrics"]["dice"] == pytest.approx(8 / 20) and one["label"].shape == (8, 8)
    assert one["classes"] == ["background", "lv"] and one["layers"][0]["kind"] == "activation"
    png = str(tmp_path / "up.png")
    import cv2
    image, _ = inf.record_by_key(ds, "00000001")
    cv2.imwrite(png, image[0])
    up = svc.infer_image(m["id"], png)
    assert np.array_equal(up["class_map"], one["class_map"]) and up["label"] is None
    with pytest.raises(ServiceError, match="cannot read image|not an image"):
        svc.infer_image(m["id"], str(tmp_path / "missing.png"))
    folder = svc.infer(m["id"], image_path=str(tmp_path))
    assert [r["source"] for r in folder["results"]] == [png]
    assert tarfile.is_tarfile(svc.export(m["id"]))


def test_resize_image_squashes_to_the_dataset_size_keeping_dtype():
    """DIGITS resizes an image of another size to the dataset's ('squash', bilinear) before
    inferring it; an image of the right size is left untouched."""
    img = (np.arange(80 * 100, dtype=np.uint32).reshape(1, 80, 100) * 7 % 60000).astype(np.uint16)
    out = inf.resize_image(img, 256, 256)
    assert out.shape == (1, 256, 256) and out.dtype == np.uint16
    assert inf.resize_image(out, 256, 256) is out
    rgb = np.zeros((3, 10, 20), np.uint8)
    rgb[0] = 200
    big = inf.resize_image(rgb, 40, 30)
    assert big.shape == (3, 40, 30) and big[0].min() == 200 and big[1].max() == 0
    flat = np.full((1, 6, 6), 1234, np.uint16)
    assert np.all(inf.resize_image(flat, 9, 5) == 1234)


def test_web_upload_of_another_size_is_resized_to_the_dataset_size(job, tmp_path, monkeypatch):
    """Through the real service: a model with a mean image refused an upload of another size
    ("mean image (1, 8, 8) does not match image (1, 10, 12)"); it is now resized like DIGITS,
    the result page says so, and an image of the dataset's size is used as it is."""
    import io
    import cv2
    from caffeseg.engine.blobproto import write_binaryproto
    from caffeseg.jobs.service import JobService
    from caffeseg.web import create_app
    from caffeseg.web.service_backend import ServiceBackend
    _, ds = job
    write_binaryproto(os.path.join(ds, "mean.binaryproto"), np.full((1, 1, 8, 8), 10.0, np.float32))
    monkeypatch.setattr(inf, "get_caffe", lambda backend="auto": FakeCaffe)
    svc = JobService(str(tmp_path / "jobs"))
    dataset = svc.import_dataset(ds, "d")
    [m] = svc.create_model({"dataset_id": dataset["id"], "network_text": TINY_NET, "epochs": 1,
                            "mean": "image"})
    open(os.path.join(m["dir"], "snapshot_iter_1.caffemodel"), "wb").write(b"w")
    backend = ServiceBackend({"JOBS_DIR": str(tmp_path / "jobs")}, svc)
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "BACKEND": backend, "WTF_CSRF_ENABLED": False})
    client = app.test_client()
    small = np.zeros((10, 12), np.uint8)
    small[2:8, 3:9] = 250

    def upload(array, name):
        ok, png = cv2.imencode(".png", array)
        return client.post(f"/models/{m['id']}/infer", data={"which": "image", "image": (io.BytesIO(png.tobytes()), name)},
                           content_type="multipart/form-data")
    resp = upload(small, "small.png")
    assert resp.status_code == 302, resp.get_data(as_text=True)
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "resized from 12×10 to 8×8" in page and "upload small.png" in page
    token = resp.headers["Location"].rsplit("/", 1)[1]
    shown = cv2.imread(os.path.join(m["dir"], "inference", token, "image.png"), cv2.IMREAD_UNCHANGED)
    assert shown.shape == (8, 8)  # the overlay is drawn on the resized image
    exact = np.zeros((8, 8), np.uint8)
    resp = upload(exact, "exact.png")
    assert resp.status_code == 302
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "resized from" not in page



def test_export_is_built_once_per_snapshot_and_rebuilt_when_it_changes(job):
    folder, _ = job
    first = ex.export_model(folder, snapshot=1)
    assert os.path.dirname(first) == os.path.join(folder, ex.EXPORT_DIR)
    built = os.stat(first).st_mtime_ns
    assert ex.export_model(folder, snapshot=1) == first and os.stat(first).st_mtime_ns == built  # cached
    snap = os.path.join(folder, "snapshot_iter_1.caffemodel")
    with open(snap, "ab") as f:
        f.write(b"more")  # the snapshot changed: the archive must follow
    again = ex.export_model(folder, snapshot=1)
    with tarfile.open(again) as tar:
        member = tar.getmember("snapshot_iter_1.caffemodel")
        assert member.size == os.path.getsize(snap)
        assert all(m.mode == 0o644 and m.uid == 0 and m.uname == "" for m in tar.getmembers())
    assert os.stat(again).st_mode & 0o777 == 0o644
    assert not [n for n in os.listdir(os.path.dirname(again)) if n.startswith(".tmp-")]


def test_export_keeps_only_the_newest_archives(job):
    folder, _ = job
    import shutil
    for it in (2, 3):
        shutil.copy(os.path.join(folder, "snapshot_iter_1.caffemodel"), os.path.join(folder, "snapshot_iter_%d.caffemodel" % it))
    for it in (1, 2, 3):
        ex.export_model(folder, snapshot=it)
    names = sorted(n for n in os.listdir(os.path.join(folder, ex.EXPORT_DIR)) if n.endswith(".tar.gz"))
    assert names == ["model_snapshot_iter_2.tar.gz", "model_snapshot_iter_3.tar.gz"]
    assert ex.KEEP_ARCHIVES == 2


def test_concurrent_exports_build_one_archive_without_errors(job):
    import threading
    folder, _ = job
    results, errors = [], []

    def download():
        try:
            results.append(ex.export_model(folder, snapshot=1))
        except Exception as exc:  # the race of the old code: [Errno 2] ... .tmp -> ...
            errors.append(exc)

    threads = [threading.Thread(target=download) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and tarfile.is_tarfile(results[0])
    assert os.path.isfile(results[0][:-len(".tar.gz")] + ".json")


def _streamed(folder, **kw):
    path, chunks = ex.export_stream(folder, **kw)
    return path, b"".join(chunks)


def test_a_first_download_is_streamed_while_it_is_built_and_equals_the_cached_archive(job, monkeypatch):
    folder, _ = job
    monkeypatch.setattr(ex, "STREAM_CHUNK", 64)  # several blocks even for the test's tiny snapshot
    sizes = []
    path, chunks = ex.export_stream(folder, snapshot=1)
    body = b""
    for block in chunks:
        sizes.append(len(block))
        body += block
    assert len(sizes) > 1  # it came in pieces, not at the end in one
    assert body == open(path, "rb").read() and tarfile.is_tarfile(path)
    built = os.stat(path).st_mtime_ns
    again, body2 = _streamed(folder, snapshot=1)  # cached now: sent from the file, not rebuilt
    assert again == path and body2 == body and os.stat(path).st_mtime_ns == built


def test_a_zip_download_is_sent_from_the_file(job):
    folder, _ = job
    path, body = _streamed(folder, snapshot=1, fmt="zip")
    assert path.endswith(".zip") and body == open(path, "rb").read()


def test_stream_errors_come_before_the_first_byte(job):
    folder, _ = job
    with pytest.raises(inf.InferError, match="no snapshot at iteration 99"):
        ex.export_stream(folder, snapshot=99)


def test_a_client_that_stops_reading_stops_the_build_and_leaves_no_partial_file(job, monkeypatch):
    folder, _ = job
    monkeypatch.setattr(ex, "STREAM_CHUNK", 16)
    path, chunks = ex.export_stream(folder, snapshot=1)
    next(chunks)
    chunks.close()  # the browser went away
    import time
    deadline = time.time() + 10
    leftovers = lambda: [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".tmp-")]  # noqa: E731
    while leftovers() and time.time() < deadline:
        time.sleep(0.05)
    assert not leftovers()
    _, body = _streamed(folder, snapshot=1)  # the next request builds it whole
    assert tarfile.is_tarfile(io.BytesIO(body))


def test_the_webs_inference_answer_does_not_look_the_job_up_again(job, tmp_path, monkeypatch):
    """Backend.infer reads the dataset's facts from the answer's dataset_id: JobService.show
    (which parses the job's prototxts for the Settings panel) is not called per answer, and an
    unknown job is still a 404."""
    from caffeseg.web.backend import NotFound
    from caffeseg.web.service_backend import ServiceBackend
    svc, m, _ = fake_model_job(job, tmp_path, monkeypatch)
    backend = ServiceBackend({"JOBS_DIR": str(tmp_path / "jobs")}, svc)
    shows = []
    real_show = svc.show
    monkeypatch.setattr(svc, "show", lambda job_id: shows.append(job_id) or real_show(job_id))
    image = tmp_path / "one.png"
    import cv2
    cv2.imwrite(str(image), np.zeros((8, 8), np.uint8))
    answer = backend.infer(m["id"], None, image_path=str(image))
    assert shows == [] and answer["prediction"].shape == (8, 8)
    with pytest.raises(NotFound):
        backend.infer("m-000000000000", None, image_path=str(image))


def fake_model_job(job, tmp_path, monkeypatch):
    """(service, model job with one snapshot, dataset folder): a model of TINY_NET on ``job``'s
    dataset whose nets are FakeCaffe's."""
    from caffeseg.jobs.service import JobService
    _, ds = job
    monkeypatch.setattr(inf, "get_caffe", lambda backend="auto": FakeCaffe)
    svc = JobService(str(tmp_path / "jobs"))
    dataset = svc.import_dataset(ds, "d")
    [m] = svc.create_model({"dataset_id": dataset["id"], "network_text": TINY_NET, "epochs": 1})
    open(os.path.join(m["dir"], "snapshot_iter_1.caffemodel"), "wb").write(b"w")
    return svc, m, ds
