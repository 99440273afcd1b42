"""Phantom generator: real Sunnybrook layout, scanner-like headers, plausible anatomy."""

import os

import numpy as np
import pydicom
import pytest

from caffeseg.plugin.sunnybrook import contours, layout, phantom


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("phantom"))
    return out, phantom.generate(out, cases=2, seed=3, slices=3)


def test_layout_uses_real_names(tiny):
    out, summary = tiny
    assert summary["cases"] == ["SC-HF-I-1", "SC-HF-I-2"]
    assert sorted(os.listdir(os.path.join(out, "challenge_training"))) == summary["cases"]
    assert sorted(os.listdir(os.path.join(out, "TrainingDataContours"))) == \
        ["SC-HF-I-01", "SC-HF-I-02"]
    names = sorted(os.listdir(os.path.join(out, "challenge_training", "SC-HF-I-2")))
    assert len(names) == 6 and all(n.startswith("IM-0106-") and n.endswith(".dcm") for n in names)
    assert "IM-0106-0001.dcm" in names  # slice 0, end-diastole
    expert = os.path.join(out, "TrainingDataContours", "SC-HF-I-01", "contours-manual",
                          "IRCCI-expert")
    icontours = sorted(n for n in os.listdir(expert) if "icontour" in n)
    assert len(icontours) == 6 and icontours[0] == "IM-0001-0001-icontour-manual.txt"
    assert summary["contours"]["icontour"] == 12 and summary["contours"]["ocontour"] == 6


def test_every_contour_has_its_image(tiny):
    out, _ = tiny
    for case, case_dir in layout.find_contour_dirs(os.path.join(out, "TrainingDataContours")):
        for name in os.listdir(os.path.join(case_dir, layout.EXPERT_SUBDIR)):
            image_no, _kind = layout.parse_contour_name(name)
            assert os.path.isfile(layout.image_path(os.path.join(out, "challenge_training"),
                                                    case, image_no)), name


def test_dicom_headers_look_like_a_scanner(tiny):
    out, _ = tiny
    path = os.path.join(out, "challenge_training", "SC-HF-I-1", "IM-0004-0001.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID
    assert ds.Modality == "MR" and ds.BitsAllocated == 16 and ds.BitsStored == 12
    assert ds.PixelRepresentation == 0 and ds.Rows == ds.Columns == 256
    assert 1.25 <= float(ds.PixelSpacing[0]) <= 1.5
    assert ds.InstanceNumber == 1 and "SliceLocation" in ds and "TriggerTime" in ds
    px = ds.pixel_array
    assert px.dtype == np.uint16 and px.max() <= 4095 and px.max() > 1000


def test_lv_cavity_is_bright_ring_darker_and_sized_right(tiny):
    out, _ = tiny
    expert = os.path.join(out, "TrainingDataContours", "SC-HF-I-01", "contours-manual",
                          "IRCCI-expert")
    for name in sorted(os.listdir(expert)):
        image_no, kind = layout.parse_contour_name(name)
        if kind != "icontour":
            continue
        px = pydicom.dcmread(layout.image_path(os.path.join(out, "challenge_training"),
                                               "SC-HF-I-1", image_no)).pixel_array
        cavity = contours.polygon_mask(contours.read_contour(os.path.join(expert, name)),
                                       px.shape)
        assert 0.005 <= cavity.mean() <= 0.025
        ocontour = os.path.join(expert, layout.contour_name(image_no, "ocontour"))
        if os.path.exists(ocontour):
            ring = contours.polygon_mask(contours.read_contour(ocontour), px.shape) & (1 - cavity)
            assert px[cavity == 1].mean() > 2 * px[ring == 1].mean()


def test_contours_are_subpixel_and_jittered(tiny):
    out, _ = tiny
    path = os.path.join(out, "TrainingDataContours", "SC-HF-I-01", "contours-manual",
                        "IRCCI-expert", "IM-0001-0001-icontour-manual.txt")
    pts = contours.read_contour(path)
    assert len(pts) > 50
    assert np.mean(pts != np.round(pts)) > 0.9


def test_deterministic_for_a_seed(tmp_path):
    a = phantom.generate(str(tmp_path / "a"), cases=["SC-N-2"], seed=5, slices=1)
    b = phantom.generate(str(tmp_path / "b"), cases=["SC-N-2"], seed=5, slices=1)
    c = phantom.generate(str(tmp_path / "c"), cases=["SC-N-2"], seed=6, slices=1)
    rel = os.path.join("SC-N-2", "IM-0898-0001.dcm")
    pa, pb, pc = (pydicom.dcmread(os.path.join(r["image_folder"], rel)) for r in (a, b, c))
    assert pa.PixelData == pb.PixelData and pa.SOPInstanceUID == pb.SOPInstanceUID
    assert pa.PixelData != pc.PixelData


def test_default_layout_matches_the_release_counts(tmp_path):
    # 15 cases: 10 with 17 inner contours, 5 with 18 -> 260, like the challenge release.
    plans = [phantom._default_slices(i) for i in range(15)]
    assert sum(2 * n - (1 if drop else 0) for n, drop in plans) == 260
    one = phantom.generate(str(tmp_path), cases=1, seed=0)
    assert one["contours"]["icontour"] == 17 and one["images"] == 18


def test_bad_arguments():
    with pytest.raises(ValueError, match="cases"):
        phantom.generate("/nonexistent", cases=16)
    with pytest.raises(ValueError, match="unknown Sunnybrook case"):
        phantom.generate("/nonexistent", cases=["SC-X-1"])


def test_progress_and_slices_per_case_alias(tmp_path):
    calls = []
    summary = phantom.generate(str(tmp_path), cases=["SC-HYP-3"], seed=0, slices_per_case=2,
                               progress=lambda done, total: calls.append((done, total)))
    assert summary["images"] == 4 and calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    names = sorted(os.listdir(os.path.join(summary["image_folder"], "SC-HYP-3")))
    assert all(n.startswith("IM-0650-") for n in names)
