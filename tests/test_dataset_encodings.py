"""Dataset encodings as DIGITS offers them: features none/PNG/JPEG (JPEG lossy, 8-bit only),
labels none/PNG (lossless only); the CLI builds any plugin's dataset with --set FIELD=VALUE."""
import json
import os

import numpy as np
import pytest

from caffeseg import cli
from caffeseg.engine.datum import bytes_to_array, parse_datum
from caffeseg.jobs.dataset import DatasetInfo
from caffeseg.jobs.service import JobService, ServiceError
from tests.test_plugin_image_segmentation import classes_of, names, read_db, rgb_of, write_pairs
from tests.jobs_fixtures import make_dataset_dir  # noqa: F401


def build(tmp_path, **options):
    feat, lab = write_pairs(str(tmp_path / "d"), names(4))
    svc = JobService(str(tmp_path / "jobs"), backend="engine")
    job = svc.create_dataset("image_segmentation", {"feature_folder": feat, "label_folder": lab,
                                                    "val_percent": 0, "class_count": 3}, "seg", **options)
    return job, DatasetInfo.read(job["dir"])


def test_jpeg_features_and_png_labels(tmp_path):
    job, info = build(tmp_path, encoding="jpg", label_encoding="png")
    assert info.info["feature"]["storage"] == "jpg" and info.info["label"]["storage"] == "png"
    features, labels = read_db(job["dir"], "train", "features"), read_db(job["dir"], "train", "labels")
    assert len(features) == len(labels) == 4
    for (key, f_raw), (_, l_raw), record in zip(features, labels, info.records("train")):
        n = int(record["name"][3:])
        assert parse_datum(f_raw).encoded and parse_datum(l_raw).encoded
        image, _ = bytes_to_array(f_raw)
        expected = rgb_of(n).transpose(2, 0, 1).astype(np.int16)
        assert image.shape == expected.shape and image.dtype == np.uint8
        assert np.abs(image.astype(np.int16) - expected).mean() < 12  # JPEG is lossy, but close
        label, _ = bytes_to_array(l_raw)
        np.testing.assert_array_equal(label[0], classes_of(n))  # PNG labels are exact


def test_jpeg_refuses_16_bit_images_naming_the_way_out(tmp_path):
    from tests.test_plugin_image_segmentation import names as image_names
    from PIL import Image
    feat, lab = write_pairs(str(tmp_path / "d"), image_names(3))
    for name in image_names(3):  # 16-bit gray features
        Image.fromarray((np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000)).save(os.path.join(feat, name + ".png"))
    svc = JobService(str(tmp_path / "jobs"), backend="engine")
    with pytest.raises(ServiceError, match="cannot be stored as JPEG \\(8-bit only\\); use encoding 'none' or 'png'"):
        svc.create_dataset("image_segmentation", {"feature_folder": feat, "label_folder": lab, "val_percent": 0,
                                                  "class_count": 3, "channel_conversion": "L"}, "seg", encoding="jpg")


def test_label_encoding_is_never_lossy(tmp_path):
    svc = JobService(str(tmp_path / "jobs"), backend="engine")
    with pytest.raises(ServiceError, match="label_encoding must be one of none, png, got 'jpg'"):
        svc.submit_dataset("image_segmentation", {}, "x", label_encoding="jpg")


def test_the_engine_data_layer_reads_png_labels_as_the_raw_ones(tmp_path):
    raw_job, _ = build(tmp_path / "raw")
    png_job, _ = build(tmp_path / "png", label_encoding="png")
    raw = [bytes_to_array(v)[0] for _, v in read_db(raw_job["dir"], "train", "labels")]
    png = [bytes_to_array(v)[0] for _, v in read_db(png_job["dir"], "train", "labels")]
    for a, b in zip(raw, png):
        np.testing.assert_array_equal(a, b)


def test_cli_builds_another_plugin_with_set(tmp_path, capsys):
    feat, lab = write_pairs(str(tmp_path / "d"), names(4))
    common = ["--data", str(tmp_path / "data"), "--json"]
    code = cli.main(common + ["dataset", "create", "--plugin", "image_segmentation", "--name", "seg",
                              "--set", "feature_folder=%s" % feat, "--set", "label_folder=%s" % lab,
                              "--set", "class_count=3", "--set", "val_percent=25", "--label-encoding", "png"])
    job = json.loads(capsys.readouterr().out)
    assert code == 0 and job["status"] == "Done"
    info = DatasetInfo.read(job["dir"])
    assert info.counts == {"train": 3, "val": 1} and info.info["label_encoding"] == "png"


def test_cli_names_the_fields_when_the_options_do_not_fit(tmp_path, capsys):
    common = ["--data", str(tmp_path / "data")]
    code = cli.main(common + ["dataset", "create", "--plugin", "image_segmentation", "--name", "x",
                              "--image-folder", "/tmp"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT and "--image-folder is the Sunnybrook plugin's" in err
    assert "feature_folder" in err and "label_folder" in err
    code = cli.main(common + ["dataset", "create", "--plugin", "image_segmentation", "--name", "x", "--set", "nope=1"])
    assert code == cli.EXIT_BAD_INPUT and "--set nope=1: give FIELD=VALUE" in capsys.readouterr().err
    assert cli.main(common + ["dataset", "fields", "image_segmentation"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("feature_folder") and "label_folder" in out


def test_a_jpeg_datasets_mean_is_the_mean_of_its_decoded_pixels(tmp_path):
    # Caffe's compute_image_mean decodes each stored Datum (DecodeDatumNative) and averages those
    # pixels: JPEG is lossy, so the mean of the pixels before encoding is not what a net reads
    from caffeseg.engine.blobproto import read_binaryproto
    job, info = build(tmp_path, encoding="jpg")
    decoded = [bytes_to_array(raw)[0].astype(np.float64) for _, raw in read_db(job["dir"], "train", "features")]
    expected = np.mean(decoded, axis=0)
    before_encoding = np.mean([rgb_of(int(r["name"][3:])).transpose(2, 0, 1).astype(np.float64)
                               for r in info.records("train")], axis=0)
    assert np.abs(expected - before_encoding).max() > 0.5  # the JPEG loss shows in the mean
    mean = np.asarray(read_binaryproto(os.path.join(job["dir"], "mean.binaryproto")))
    np.testing.assert_allclose(mean.reshape(expected.shape), expected, rtol=0, atol=1e-4)
