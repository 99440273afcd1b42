"""The inference read-out of uploaded DICOM images: mm² area per image, volumes and EF of one
series at ED and ES, checked against the phantom's closed-form truth."""
import os
import zipfile

import pytest

from caffeseg.jobs import series_function as sf
from caffeseg.plugin.sunnybrook import contours, layout
from caffeseg.plugin.sunnybrook.dicom import read_header
from tests.clinical_fixtures import make_release

CASE = "SC-N-3"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("series") / "release")
    return root, make_release(root, cases=[CASE], slices=4)


def _readings(root):
    """Each image of the case 'predicted' as its expert label (the filled contour)."""
    ctr = os.path.join(root, "TrainingDataContours", layout.dir_from_case(CASE), layout.EXPERT_SUBDIR)
    out = []
    image_dir = os.path.join(root, "challenge_training", CASE)
    for name in sorted(os.listdir(image_dir)):
        number = int(name.split("-")[-1].split(".")[0])
        label = contours.polygon_mask(contours.read_contour(
            os.path.join(ctr, layout.contour_name(number, "icontour"))), (256, 256))
        out.append(dict(sf.image_reading(label, read_header(os.path.join(image_dir, name))), source=name))
    return out


def test_area_per_image_and_function_of_the_series(release):
    root, summary = release
    truth = summary["truth"][CASE]
    readings = _readings(root)
    by_number = {s["image_no"]: s for s in truth["slices"]}
    for r in readings:
        number = int(r["source"].split("-")[-1].split(".")[0])
        assert r["lv_area_mm2"] == pytest.approx(by_number[number]["endo_area_mm2"], rel=0.03)
    got = sf.series_function(readings)
    assert got["spacing_mm"] == pytest.approx(10.0)
    assert got["ed_phase"] == "phase 0" and got["es_phase"].startswith("phase ")
    assert got["edv_ml"] == pytest.approx(truth["edv_ml"], rel=0.02)
    assert got["esv_ml"] == pytest.approx(truth["esv_ml"], rel=0.02)
    assert got["ef_percent"] == pytest.approx(truth["ef_percent"], abs=1.5)


def test_what_is_missing_is_said(release):
    root, _ = release
    readings = _readings(root)
    assert "several DICOM slices" in sf.series_function(readings[:1])["why_not"]
    one_phase = [r for r in readings if r["phase_key"] == "phase 0"]
    assert "one cardiac phase" in sf.series_function(one_phase)["why_not"]
    mixed = readings[:2] + [dict(readings[2], series_uid="1.2.3")]
    assert "2 series" in sf.series_function(mixed)["why_not"]


def test_series_files_from_a_zip_stay_inside_the_work_folder(release, tmp_path):
    root, _ = release
    image_dir = os.path.join(root, "challenge_training", CASE)
    archive = str(tmp_path / "upload.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for name in sorted(os.listdir(image_dir)):
            z.write(os.path.join(image_dir, name), "../../evil/" + name)
        z.writestr("folder/", "")
    work = tmp_path / "work"
    work.mkdir()
    files = sf.series_files(archive, str(work))
    assert len(files) == len(os.listdir(image_dir))
    assert all(os.path.dirname(f) == str(work) for f in files)
    assert sf.series_files(image_dir, str(work)) == sorted(os.path.join(image_dir, n) for n in os.listdir(image_dir))
