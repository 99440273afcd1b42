"""The pretrained round trip: the download's info.json with DIGITS' keys (tar.gz and zip, cached
per snapshot and format), Make Pretrained from a model's snapshot, archive upload (caffeseg's
and DIGITS' layouts, safe unpacking, size limits), the upload's labels/image fields, and a
pretrained model's layer table with parameter shapes."""
import io
import json
import os
import tarfile
import zipfile

import numpy as np
import pytest

from caffeseg.jobs import pretrained, pretrained_archive as pa
from caffeseg.jobs import store as st
from caffeseg.jobs.pretrained import UploadError
from caffeseg.jobs.service import ServiceError
from tests.jobs_fixtures import TINY_NET, fake_pycaffe_service, make_dataset_dir
from tests.web_helpers import write_weights


@pytest.fixture
def svc(tmp_path, monkeypatch):
    return fake_pycaffe_service(tmp_path, monkeypatch)


def _conv_weights(path, c_in=1):
    rng = np.random.default_rng(0)
    write_weights(path, {"conv1": [rng.standard_normal((4, c_in, 3, 3)).astype(np.float32),
                                   np.zeros(4, np.float32)],
                         "score": [rng.standard_normal((7, 4, 1, 1)).astype(np.float32),
                                   np.zeros(7, np.float32)]})
    return str(path)


@pytest.fixture
def trained(svc, tmp_path):
    ds = svc.import_dataset(make_dataset_dir(str(tmp_path / "built"), shape=(1, 8, 8)), "phantom")
    [job] = svc.create_model({"dataset_id": ds["id"], "network_text": TINY_NET, "epochs": 4, "name": "tiny"},
                             owner="alice")
    assert svc.train(job["id"]) == st.DONE
    _conv_weights(os.path.join(job["dir"], "snapshot_iter_20.caffemodel"))  # real weights in place
    return svc, svc.show(job["id"])


def _tar_members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_download_info_json_has_digits_keys_in_tar_gz_and_zip(trained):
    svc, job = trained
    tgz, zipped = svc.export(job["id"]), svc.export(job["id"], fmt="zip")
    assert tgz.endswith("model_snapshot_iter_20.tar.gz") and zipped.endswith("model_snapshot_iter_20.zip")
    members = _tar_members(tgz)
    with zipfile.ZipFile(zipped) as zf:
        assert set(zf.namelist()) == set(members)
        zip_info = json.loads(zf.read("info.json"))
    info = json.loads(members["info.json"])
    assert {k: v for k, v in zip_info.items() if k != "exported_at"} == \
        {k: v for k, v in info.items() if k != "exported_at"}
    # DIGITS' names (its Caffe train task's get_task_stats, its job json_dict), each pointing at a member
    for key in ("snapshot file", "model file", "deploy file", "train_val file", "solver file", "labels file"):
        assert info[key] in members, key
    assert info["snapshot file"] == "snapshot_iter_20.caffemodel" and info["model file"] == "original.prototxt"
    assert info["framework"] == "caffe" and info["mean file"] == ""  # trained without a mean image
    assert info["image dimensions"] == [8, 8, 1] and info["image resize mode"] == "squash"
    assert info["image type"] == "grayscale" and info["network file"] == "original.prototxt"
    assert info["job id"] == job["id"] and info["username"] == "alice" and info["creation time"]
    assert members["labels.txt"] == b"background\nlv\n" and info["classes"] == ["background", "lv"]
    # caffeseg's own keys stay
    assert info["snapshot"] == "snapshot_iter_20.caffemodel" and info["deploy"] == "deploy.prototxt"
    # the cache: one archive per snapshot and format, the format in the key
    assert svc.export(job["id"], fmt="zip") == zipped and svc.export(job["id"]) == tgz
    assert sorted(os.listdir(os.path.dirname(tgz))) == [".lock", "model_snapshot_iter_20.json",
                                                        "model_snapshot_iter_20.tar.gz", "model_snapshot_iter_20.zip",
                                                        "model_snapshot_iter_20.zip.json"]
    with pytest.raises(ServiceError, match="unknown download format"):
        svc.export(job["id"], fmt="rar")


def test_make_pretrained_then_a_new_model_starts_from_it(trained, tmp_path):
    svc, job = trained
    dest = tmp_path / "pretrained"
    entry = svc.make_pretrained(job["id"], str(dest), name="tiny as pretrained")
    assert entry["id"].startswith("up-") and entry["name"] == "tiny as pretrained"
    assert entry["labels"] == ["background", "lv"] and entry["matched"] == ["conv1", "score"]
    assert entry["image"] == {"channels": 1, "type": "gray", "resize_mode": "squash", "width": 8, "height": 8}
    assert entry["source"] == {"job_id": job["id"], "snapshot": 20, "owner": "alice"}
    folder = os.path.dirname(entry["weights"])
    assert open(entry["prototxt"]).read() == open(os.path.join(job["dir"], "original.prototxt")).read()
    assert open(os.path.join(folder, "deploy.prototxt")).read() == open(os.path.join(job["dir"], "deploy.prototxt")).read()
    assert open(entry["weights"], "rb").read() == open(os.path.join(job["dir"], "snapshot_iter_20.caffemodel"), "rb").read()
    assert [e["id"] for e in pretrained.list_uploads(str(dest))] == [entry["id"]]
    assert not os.listdir(pretrained.uploads_dir(str(dest)) / ".incoming")  # nothing left behind
    [again] = svc.create_model({"dataset_id": job["dataset_id"], "network_text": open(entry["prototxt"]).read(),
                                "pretrained": [entry["weights"]], "epochs": 1, "name": "from pretrained"})
    report = json.load(open(os.path.join(again["dir"], "pretrained_report.json")))
    assert report["matched"] == ["conv1", "score"]
    with pytest.raises(ServiceError, match="no snapshot at iteration 3"):
        svc.make_pretrained(job["id"], str(dest), snapshot=3)


def test_a_download_archive_uploads_back_tar_gz_and_zip(trained, tmp_path):
    svc, job = trained
    dest = str(tmp_path / "pretrained")
    for fmt in ("tar.gz", "zip"):
        entry = pa.import_archive(dest, svc.export(job["id"], fmt=fmt))
        assert entry["name"] == "tiny" and entry["labels"] == ["background", "lv"]
        assert entry["image"]["height"] == 8 and entry["image"]["channels"] == 1
        assert open(entry["prototxt"]).read() == open(os.path.join(job["dir"], "original.prototxt")).read()
        assert entry["files"] == ["deploy.prototxt"] and entry["source"]["job_id"] == job["id"]
    assert len(pretrained.list_uploads(dest)) == 2


def _archive(path, files, fmt="tar.gz"):
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return str(path)
    with tarfile.open(path, "w:gz" if fmt == "tar.gz" else "w") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return str(path)


def test_a_digits_layout_archive_in_a_folder_uploads(tmp_path):
    weights = open(_conv_weights(tmp_path / "w.caffemodel", c_in=3), "rb").read()
    info = {"name": "digits model", "framework": "caffe", "snapshot file": "snapshot_iter_90.caffemodel",
            "model file": "original.prototxt", "deploy file": "deploy.prototxt", "mean file": "mean.binaryproto",
            "labels file": "labels.txt", "image dimensions": [256, 256, 3], "image resize mode": "squash",
            "digits version": "6.1.1"}
    archive = _archive(tmp_path / "20170101-000000-abcd_epoch_30.0.tar", {
        "model/info.json": json.dumps(info).encode(), "model/snapshot_iter_90.caffemodel": weights,
        "model/original.prototxt": TINY_NET.encode(), "model/deploy.prototxt": TINY_NET.encode(),
        "model/mean.binaryproto": b"\x00" * 16, "model/labels.txt": b"road\n\nsky\n"}, fmt="tar")
    entry = pa.import_archive(str(tmp_path / "store"), archive)
    assert entry["name"] == "digits model" and entry["labels"] == ["road", "sky"]
    assert entry["image"] == {"channels": 3, "type": "color", "resize_mode": "squash", "width": 256, "height": 256}
    assert entry["files"] == ["deploy.prototxt", "mean.binaryproto"]


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_unsafe_or_oversized_archives_are_refused(tmp_path, monkeypatch, fmt):
    store = str(tmp_path / "store")
    weights = open(_conv_weights(tmp_path / "w.caffemodel"), "rb").read()
    good = {"info.json": json.dumps({"snapshot file": "w.caffemodel", "model file": "net.prototxt"}).encode(),
            "w.caffemodel": weights, "net.prototxt": TINY_NET.encode()}
    with pytest.raises(UploadError, match="unsafe member name"):
        pa.import_archive(store, _archive(tmp_path / ("a1." + fmt), dict(good, **{"../evil.txt": b"x"}), fmt))
    with pytest.raises(UploadError, match="unsafe member name"):
        pa.import_archive(store, _archive(tmp_path / ("a2." + fmt), dict(good, **{"/etc/evil": b"x"}), fmt))
    with pytest.raises(UploadError, match="no info.json"):
        pa.import_archive(store, _archive(tmp_path / ("a3." + fmt), {"w.caffemodel": weights}, fmt))
    with pytest.raises(UploadError, match="does not contain"):
        pa.import_archive(store, _archive(tmp_path / ("a4." + fmt), dict(good, **{
            "info.json": json.dumps({"snapshot file": "other.caffemodel", "model file": "net.prototxt"}).encode()}), fmt))
    with pytest.raises(UploadError, match="more than 64 members"):
        pa.import_archive(store, _archive(tmp_path / ("a5." + fmt), dict(good, **{"f%d" % i: b"" for i in range(70)}), fmt))
    monkeypatch.setenv("CAFFESEG_MAX_PRETRAINED_BYTES", str(len(weights) // 2))
    with pytest.raises(UploadError, match="unpacks to more than"):
        pa.import_archive(store, _archive(tmp_path / ("a6." + fmt), good, fmt))
    monkeypatch.delenv("CAFFESEG_MAX_PRETRAINED_BYTES")
    assert pa.import_archive(store, _archive(tmp_path / ("ok." + fmt), good, fmt))["name"] == "w"
    assert not os.path.exists(os.path.join(os.path.dirname(store), "evil.txt"))
    assert len(os.listdir(pretrained.uploads_dir(store))) == 2  # .incoming and the one good upload


def test_a_symlink_member_is_refused(tmp_path):
    path = tmp_path / "link.tar"
    with tarfile.open(path, "w") as tar:
        link = tarfile.TarInfo("info.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UploadError, match="not a regular file"):
        pa.import_archive(str(tmp_path / "store"), str(path))
    with pytest.raises(UploadError, match="not a tar, tar.gz or zip"):
        pa.import_archive(str(tmp_path / "store"), str(_conv_weights(tmp_path / "w.caffemodel")))


def test_upload_form_fields_are_checked_and_kept(tmp_path):
    weights = _conv_weights(tmp_path / "w.caffemodel")
    entry = pretrained.save_upload(str(tmp_path / "s"), "with fields", TINY_NET, weights, labels=b"bg\nlv\n",
                                   image={"type": "Gray", "resize_mode": "crop", "width": "64", "height": "48"})
    assert entry["labels"] == ["bg", "lv"] and entry["image"] == {"channels": 1, "type": "gray",
                                                                  "resize_mode": "crop", "width": 64, "height": 48}
    assert open(os.path.join(os.path.dirname(entry["weights"]), "labels.txt")).read() == "bg\nlv\n"
    for image, field in (({"type": "sepia"}, "image_type"), ({"type": "color", "resize_mode": "stretch"}, "resize_mode"),
                         ({"type": "color", "width": "0"}, "width"), ({"type": "color", "height": "x"}, "height")):
        with pytest.raises(UploadError) as refused:
            pretrained.save_upload(str(tmp_path / "s"), "bad", TINY_NET, _conv_weights(tmp_path / "w2.caffemodel"),
                                   image=image)
        assert refused.value.field == field
    with pytest.raises(UploadError, match="not UTF-8"):
        pretrained.save_upload(str(tmp_path / "s"), "bad", TINY_NET, _conv_weights(tmp_path / "w3.caffemodel"),
                               labels=b"\xff\xfe")


def test_layer_table_streams_shapes_and_counts(tmp_path):
    weights = _conv_weights(tmp_path / "w.caffemodel", c_in=3)
    table = pa.layer_table(weights, TINY_NET)
    assert table["layers"] == [
        {"name": "conv1", "type": "Convolution", "shapes": [[4, 3, 3, 3], [4]], "param_count": 4 * 27 + 4},
        {"name": "score", "type": "Convolution", "shapes": [[7, 4, 1, 1], [7]], "param_count": 28 + 7}]
    assert table["total"] == 112 + 35
    # a legacy V1 caffemodel (layers, blobs with num/channels/height/width): shapes from the legacy dims
    from caffeseg.engine.proto import caffe_pb2
    net = caffe_pb2.NetParameter(name="old")
    old = net.layers.add(name="conv1", type=caffe_pb2.V1LayerParameter.CONVOLUTION)
    blob = old.blobs.add(num=2, channels=1, height=3, width=3)
    blob.data.extend([0.5] * 18)
    (tmp_path / "v1.caffemodel").write_bytes(net.SerializeToString())
    legacy = pa.layer_table(str(tmp_path / "v1.caffemodel"), TINY_NET)
    assert legacy["layers"] == [{"name": "conv1", "type": "Convolution", "shapes": [[2, 1, 3, 3]], "param_count": 18}]
    image = pa.layer_weight_image(weights, "conv1")
    import cv2
    decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (2 * 3 + 1, 2 * 3 + 1, 3)  # 4 colour filters in a 2 x 2 grid, 1 px gaps
    assert pa.layer_weight_image(weights, "score") is not None
    with pytest.raises(KeyError):
        pa.layer_weight_image(weights, "fc9")
    (tmp_path / "net.caffemodel").write_text(TINY_NET)  # a prototxt under a caffemodel's name
    with pytest.raises(ValueError):
        pa.layer_table(str(tmp_path / "net.caffemodel"))


def test_names_that_are_not_upload_names_are_cleaned():
    assert pa.upload_name("tiny lr=0.1 bs=2") == "tiny lr_0.1 bs_2"
    assert pa.upload_name("  ..über/net  ") == "ber_net"
    assert pa.upload_name("===") == "pretrained" and len(pa.upload_name("x" * 100)) == 64
