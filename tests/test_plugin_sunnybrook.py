"""Sunnybrook plugin on tiny phantoms: layout mapping, exact values, labels, splits, bad input."""

import os
import shutil

import cv2
import numpy as np
import pydicom
import pytest

from caffeseg.engine.datum import bytes_to_array
from caffeseg.engine.lmdb_io import LmdbReader
from caffeseg.jobs.dataset import DatasetError, build_dataset, load_dataset_info
from caffeseg.plugin.base import FormError, PluginError
from caffeseg.plugin.sunnybrook import SunnybrookPlugin, contours, layout, phantom


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("release"))
    phantom.generate(out, cases=2, seed=1, slices=3)
    return out


def _form(root, **extra):
    form = {"image_folder": os.path.join(root, "challenge_training"),
            "contour_folder": os.path.join(root, "TrainingDataContours"), "val_percent": 25}
    form.update(extra)
    return form


def _copy(release, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(release, dst)
    return dst


def _read(ds_dir, stage, what):
    with LmdbReader(os.path.join(ds_dir, "%s_db" % stage, what)) as db:
        return [(k, bytes_to_array(v)[0]) for k, v in db.items()]


def test_case_names_and_series():
    assert layout.case_from_dir("SC-HF-I-01") == "SC-HF-I-1"
    assert layout.case_from_dir("SC-HYP-40") == "SC-HYP-40"
    assert layout.case_from_dir("SC-N-03") == "SC-N-3"
    assert layout.case_from_dir("contours-manual") is None
    assert layout.dir_from_case("SC-HF-NI-3") == "SC-HF-NI-03"
    assert layout.parse_contour_name("IM-0001-0048-icontour-manual.txt") == (48, "icontour")
    assert layout.parse_contour_name("IM-0001-0048-p2contour-manual.txt") == (48, "p2contour")
    assert layout.image_path("/d", "SC-HF-NI-3", 48) == "/d/SC-HF-NI-3/IM-0379-0048.dcm"
    assert len(layout.SAX_SERIES) == 15 and layout.SAX_SERIES["SC-N-40"] == "0944"


def test_fill_uses_digits_truncation():
    # Points at x.9 truncate to x (DIGITS' astype(int)), so the square covers 1..5, not 2..6.
    square = np.array([[1.9, 1.9], [5.9, 1.9], [5.9, 5.9], [1.9, 5.9]])
    mask = contours.polygon_mask(square, (10, 10))
    assert mask[1, 1] == 1 and mask[5, 5] == 1 and mask[6, 6] == 0 and mask.sum() == 25


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
@pytest.mark.parametrize("encoding", ["none", "png"])
def test_dataset_values_are_exact_and_labels_are_the_contours(release, tmp_path, mode,
                                                              channels, encoding):
    out = str(tmp_path / "ds")
    info = build_dataset(SunnybrookPlugin(), _form(release, channel_conversion=mode, split_by="slice"),
                         out, encoding=encoding)
    assert info["stages"]["train"]["count"] == 9 and info["stages"]["val"]["count"] == 3
    assert info["feature"]["shape"] == [channels, 256, 256] and info["feature"]["dtype"] == "uint16"
    assert info["classes"] == ["background", "LV cavity"]
    assert load_dataset_info(out)["records"] == info["records"]
    for stage in ("train", "val"):
        feats, labels = _read(out, stage, "features"), _read(out, stage, "labels")
        assert [k for k, _ in feats] == [k for k, _ in labels] == \
            [r["key"] for r in info["records"][stage]] == \
            ["%08d" % i for i in range(len(feats))]
        for (key, feat), (_, lab), rec in zip(feats, labels, info["records"][stage]):
            image = os.path.join(release, "challenge_training", rec["files"]["image"])
            ref = pydicom.dcmread(image)
            assert feat.shape == (channels, 256, 256)
            for c in range(channels):
                np.testing.assert_array_equal(feat[c].astype(np.int64),
                                              ref.pixel_array.astype(np.int64))
            assert rec["pixel_spacing"] == [float(v) for v in ref.PixelSpacing]
            pts = contours.read_contour(os.path.join(release, "TrainingDataContours",
                                                     rec["files"]["icontour"]))
            _check_label_is_polygon(lab[0], pts)


def _check_label_is_polygon(label, pts):
    """Independent check against the float polygon: pixels more than 1.5 px inside are 1, more
    than 1.5 px outside are 0 (truncating the points moves the edge by up to sqrt(2) px)."""
    poly = pts.astype(np.float32).reshape(-1, 1, 2)
    ys, xs = np.mgrid[0:label.shape[0]:3, 0:label.shape[1]:3]
    for y, x in zip(ys.ravel(), xs.ravel()):
        d = cv2.pointPolygonTest(poly, (float(x), float(y)), True)
        if d > 1.5:
            assert label[y, x] == 1
        elif d < -1.5:
            assert label[y, x] == 0
    assert set(np.unique(label)) <= {0, 1}


def test_mean_is_float_mean_of_training_features(release, tmp_path):
    from caffeseg.engine.blobproto import read_binaryproto
    out = str(tmp_path / "ds")
    build_dataset(SunnybrookPlugin(), _form(release), out)
    feats = np.stack([f.astype(np.float64) for _, f in _read(out, "train", "features")])
    mean = read_binaryproto(os.path.join(out, "mean.binaryproto"))
    assert mean.shape == (1, 1, 256, 256)
    np.testing.assert_allclose(mean[0], feats.mean(axis=0), rtol=1e-6)
    assert not np.all(mean == np.round(mean))  # not cast to integers


def test_inner_outer_gives_three_classes(release, tmp_path):
    out = str(tmp_path / "ds")
    info = build_dataset(SunnybrookPlugin(), _form(release, contour_type="inner_outer"), out)
    assert info["classes"] == ["background", "LV cavity", "myocardium"]
    assert info["stages"]["train"]["count"] + info["stages"]["val"]["count"] == 6  # ED only
    for _, lab in _read(out, "train", "labels"):
        assert set(np.unique(lab)) == {0, 1, 2}
        assert (lab == 2).sum() > (lab == 1).sum() * 0.3


def test_splits_are_reproducible_and_patient_split_disjoint(release):
    plugin = SunnybrookPlugin()
    values = plugin.validate(_form(release, seed=7))
    a, b = plugin.itemize(values), plugin.itemize(values)
    keys = lambda it, s: [(e.source["case"], e.source["image_no"]) for e in it.stages[s]]
    assert keys(a, "train") == keys(b, "train") and keys(a, "val") == keys(b, "val")
    other = plugin.itemize(plugin.validate(_form(release, seed=8)))
    assert keys(other, "val") != keys(a, "val") or keys(other, "train") != keys(a, "train")
    pv = plugin.validate(_form(release, split_by="patient", val_percent=40, seed=3))
    p = plugin.itemize(pv)
    train_cases = {c for c, _ in keys(p, "train")}
    val_cases = {c for c, _ in keys(p, "val")}
    assert train_cases and val_cases and not (train_cases & val_cases)
    assert p.split["val_cases"] == sorted(val_cases)


def test_ten_percent_of_260_is_26():
    plugin = SunnybrookPlugin()
    entries = [{"case": layout.CASES[i % 15], "image_no": i} for i in range(260)]
    stages, _ = plugin._split(entries, {"val_percent": 10, "seed": 0, "split_by": "slice"})
    assert len(stages["train"]) == 234 and len(stages["val"]) == 26


def _expert(root, case_dir="SC-HF-I-01"):
    return os.path.join(root, "TrainingDataContours", case_dir, "contours-manual", "IRCCI-expert")


def test_bad_entries_are_skipped_with_messages(release, tmp_path):
    root = _copy(release, tmp_path)
    img_dir = os.path.join(root, "challenge_training", "SC-HF-I-1")
    # 1. contour without matching image
    os.remove(os.path.join(img_dir, "IM-0004-0001.dcm"))
    # 2. unreadable DICOM
    with open(os.path.join(img_dir, "IM-0004-0021.dcm"), "wb") as fh:
        fh.write(b"garbage" * 100)
    # 3. contour points outside the image
    bad_ctr = os.path.join(_expert(root), "IM-0001-0041-icontour-manual.txt")
    with open(bad_ctr, "a") as fh:
        fh.write("300.5 12.25\n")
    # 4. an image of another shape (wider, so its contour still fits), not the first record:
    #    the first record's shape is the dataset's shape
    plugin = SunnybrookPlugin()
    order = plugin.itemize(plugin.validate(_form(root, val_percent=0))).stages["train"]
    target = next(e for e in order[1:] if e.source["case"] == "SC-HF-I-2")
    odd = target.payload["image"]
    ds = pydicom.dcmread(odd)
    wide = np.zeros((256, 300), dtype=np.uint16)
    wide[:, :256] = ds.pixel_array
    ds.Rows, ds.Columns = wide.shape
    ds.PixelData = wide.tobytes()
    ds.save_as(odd)
    lines = []
    out = str(tmp_path / "ds")
    info = build_dataset(SunnybrookPlugin(), _form(root, val_percent=0), out, log=lines.append)
    messages = [s["message"] for s in info["skipped"]]
    text = "\n".join(messages)
    assert "IM-0001-0001-icontour-manual.txt: no matching image" in text
    assert "IM-0004-0021.dcm: not a DICOM file" in text
    assert "IM-0001-0041-icontour-manual.txt: 1 contour point(s) outside the 256x256 image" in text
    assert "%s: shape [1, 256, 300] differs from the dataset's [1, 256, 256]" \
        % os.path.basename(odd) in text
    assert info["skipped_count"] == 4 and info["stages"]["train"]["count"] == 12 - 4
    log_text = open(os.path.join(out, "build.log")).read()
    assert "4 skipped" in log_text and all(m in log_text for m in messages)
    assert any("4 skipped" in line for line in lines)


def test_shape_mismatch_kept_when_not_enforced(release, tmp_path):
    root = _copy(release, tmp_path)
    odd = os.path.join(root, "challenge_training", "SC-HF-I-2", "IM-0106-0001.dcm")
    ds = pydicom.dcmread(odd)
    # keep the contour inside: crop to 200 x 256 rows only when the contour fits
    arr = np.zeros((256, 240), dtype=np.uint16)
    arr[:, :] = ds.pixel_array[:, :240]
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    ds.save_as(odd)
    info = build_dataset(SunnybrookPlugin(), _form(root, val_percent=0,
                                                  enforce_same_shape=False),
                         str(tmp_path / "ds"), encoding="png")
    assert info["stages"]["train"]["count"] == 12


@pytest.mark.parametrize("case", ["empty_images", "empty_contours", "not_sunnybrook_contours",
                                  "not_sunnybrook_images"])
def test_folders_that_cannot_be_used(release, tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "holiday_photos"
    (other / "2019").mkdir(parents=True)
    (other / "2019" / "beach.jpg").write_bytes(b"x")
    form = _form(release)
    expect = {"empty_images": ("image_folder", str(empty), "is empty"),
              "empty_contours": ("contour_folder", str(empty), "is empty"),
              "not_sunnybrook_contours": ("contour_folder", str(other),
                                          "is not a Sunnybrook contour release"),
              "not_sunnybrook_images": ("image_folder", str(other),
                                        "is not a Sunnybrook image release")}[case]
    form[expect[0]] = expect[1]
    out = str(tmp_path / "ds")
    with pytest.raises(FormError) as err:  # a form error on the field, before anything is built
        build_dataset(SunnybrookPlugin(), form, out)
    assert expect[1] in err.value.errors[expect[0]] and expect[2] in err.value.errors[expect[0]]
    assert not os.path.exists(out)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".ds")] == []


def test_zero_usable_entries_fails_and_writes_nothing(release, tmp_path):
    root = _copy(release, tmp_path)
    for case in ("SC-HF-I-1", "SC-HF-I-2"):
        for name in os.listdir(os.path.join(root, "challenge_training", case)):
            with open(os.path.join(root, "challenge_training", case, name), "wb") as fh:
                fh.write(b"broken")
    out = str(tmp_path / "ds")
    with pytest.raises(DatasetError, match="no usable training record: 12 entries skipped"):
        build_dataset(SunnybrookPlugin(), _form(root), out)
    assert not os.path.exists(out)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".ds")] == []


def test_every_contour_missing_its_image_is_a_clear_error(release, tmp_path):
    root = _copy(release, tmp_path)
    shutil.rmtree(os.path.join(root, "challenge_training", "SC-HF-I-1"))
    shutil.rmtree(os.path.join(root, "challenge_training", "SC-HF-I-2"))
    os.makedirs(os.path.join(root, "challenge_training", "SC-N-2"))
    with pytest.raises(PluginError, match="no usable contoured image"):
        build_dataset(SunnybrookPlugin(), _form(root), str(tmp_path / "ds"))


def test_full_size_phantom_release_splits_234_26(tmp_path):
    release = str(tmp_path / "release")
    summary = phantom.generate(release, cases=15, seed=0)
    assert summary["contours"]["icontour"] == 260 and len(summary["cases"]) == 15
    events = []
    info = build_dataset(SunnybrookPlugin(), _form(release, val_percent=10, split_by="slice"), str(tmp_path / "ds"),
                         encoding="png", workers=2, progress=events.append)
    assert info["stages"]["train"]["count"] == 234 and info["stages"]["val"]["count"] == 26
    assert info["skipped_count"] == 0 and events[-1]["done_all"] == 260
    val = info["records"]["val"][0]
    assert val["title"] == "record %s / image %04d" % (val["case"], val["image_no"])
    assert 1.25 <= val["pixel_spacing"][0] <= 1.5


def test_contour_folder_may_be_one_case_and_duplicates_are_reported(release, tmp_path):
    plugin = SunnybrookPlugin()
    one = os.path.join(release, "TrainingDataContours", "SC-HF-I-02")
    items = plugin.itemize(plugin.validate(_form(release, contour_folder=one, val_percent=0)))
    assert {e.source["case"] for e in items.stages["train"]} == {"SC-HF-I-2"}
    root = _copy(release, tmp_path)
    shutil.copytree(os.path.join(root, "TrainingDataContours", "SC-HF-I-01"),
                    os.path.join(root, "TrainingDataContours", "zz_backup", "SC-HF-I-01"))
    items = plugin.itemize(plugin.validate(_form(root)))
    assert sum(len(v) for v in items.stages.values()) == 12
    assert any("already read from" in s["message"] for s in items.skipped)


def test_parent_of_image_folder_gets_a_hint(release):
    plugin = SunnybrookPlugin()
    with pytest.raises(FormError, match="did you mean .*challenge_training"):
        plugin.validate(_form(release, image_folder=release))
    values = dict(plugin.validate(_form(release)), image_folder=release)
    with pytest.raises(PluginError, match="did you mean .*challenge_training"):
        plugin.itemize(values)  # itemize checks too, for callers that skip validate


def test_swapped_folders_are_named_as_such(release):
    form = _form(release)
    form["image_folder"], form["contour_folder"] = form["contour_folder"], form["image_folder"]
    with pytest.raises(FormError) as err:
        SunnybrookPlugin().validate(form)
    assert "look swapped" in err.value.errors["contour_folder"]
    assert "look swapped" in err.value.errors["image_folder"]


def test_outer_without_inner_is_reported_in_inner_outer_mode(release, tmp_path):
    root = _copy(release, tmp_path)
    os.remove(os.path.join(_expert(root), "IM-0001-0001-icontour-manual.txt"))
    plugin = SunnybrookPlugin()
    items = plugin.itemize(plugin.validate(_form(root, contour_type="inner_outer")))
    assert sum(len(v) for v in items.stages.values()) == 5
    assert [s["message"] for s in items.skipped] == [
        "%s: outer contour without an inner contour"
        % os.path.join(_expert(root), "IM-0001-0001-ocontour-manual.txt")]


def test_process_workers_build_the_same_sunnybrook_dataset(release, tmp_path):
    a = build_dataset(SunnybrookPlugin(), _form(release), str(tmp_path / "a"), workers=1)
    b = build_dataset(SunnybrookPlugin(), _form(release), str(tmp_path / "b"), workers=2,
                      executor="process")
    assert a["records"] == b["records"]
    for (_, x), (_, y) in zip(_read(str(tmp_path / "a"), "train", "features"),
                              _read(str(tmp_path / "b"), "train", "features")):
        np.testing.assert_array_equal(x, y)
