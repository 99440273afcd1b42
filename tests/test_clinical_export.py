"""Take-away formats: Sunnybrook contour zip laid out like the expert release, DICOM SEG round trip
through pydicom and highdicom."""
import io
import os
import zipfile

import numpy as np
import pydicom
import pytest

from caffeseg.jobs import clinical
from caffeseg.jobs import clinical_export as cx
from caffeseg.jobs import evaluate as ev
from caffeseg.plugin.sunnybrook import layout
from tests.clinical_fixtures import OracleModel, make_dataset, make_release


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    root = str(base / "release")
    make_release(root, cases=["SC-HF-I-1", "SC-N-2"], slices=3)
    ds_dir = str(base / "ds")
    info = make_dataset(root, ds_dir, val_percent=40)
    out = str(base / "evaluation.json")
    table = ev.evaluate(OracleModel(ds_dir), ds_dir, out)
    return info, table, cx.load_masks(ev.masks_path(out)), root


def test_contour_zip_is_laid_out_like_the_expert_release_and_reads_back(evaluated):
    info, table, masks, root = evaluated
    case = info["split"]["val_cases"][0]
    name, ctype, data = cx.export(table, masks, info, "contours", case=case)
    assert name == "contours-%s.zip" % case and ctype == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(data))
    rows = [r for r in table["records"] if r["case"] == case]
    expected = {"%s/contours-auto/caffeseg/IM-0001-%04d-icontour-auto.txt"
                % (layout.dir_from_case(case), r["image_no"]) for r in rows}
    assert set(z.namelist()) == expected
    expert_dir = os.path.join(root, "TrainingDataContours", layout.dir_from_case(case), layout.EXPERT_SUBDIR)
    for r in rows:
        text = z.read("%s/contours-auto/caffeseg/IM-0001-%04d-icontour-auto.txt"
                      % (layout.dir_from_case(case), r["image_no"])).decode("ascii")
        lines = text.splitlines()
        assert all(len(line.split()) == 2 for line in lines)
        pts = np.array([[float(v) for v in line.split()] for line in lines])
        expert = np.loadtxt(os.path.join(expert_dir, layout.contour_name(r["image_no"], "icontour")))
        # the exported contour is the one the evaluation scored (2 decimals in the file)
        got = clinical.contour_distances(pts, expert, (1.0, 1.0))
        spacing = next(x["pixel_spacing"] for x in info["records"]["val"] if x["key"] == r["key"])
        assert got["apd_mm"] == pytest.approx(r["apd_mm"] / spacing[0], abs=0.02)
    one = cx.export(table, masks, info, "contours", key=rows[0]["key"])[2]
    assert len(zipfile.ZipFile(io.BytesIO(one)).namelist()) == 1


def test_dicom_seg_of_a_patient_round_trips(evaluated):
    """One SEG per phase (ED and ES frames share plane positions), each referencing its sources;
    highdicom gives back the stored masks frame by frame."""
    import highdicom as hd
    info, table, masks, root = evaluated
    case = info["split"]["val_cases"][0]
    name, ctype, data = cx.export(table, masks, info, "dicom-seg", case=case)
    assert name == "seg-%s.zip" % case and ctype == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(z.namelist()) == ["seg-%s-ED.dcm" % case, "seg-%s-ES.dcm" % case]
    for phase in ("ED", "ES"):
        blob = z.read("seg-%s-%s.dcm" % (case, phase))
        ds = pydicom.dcmread(io.BytesIO(blob))
        assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
        rows = [r for r in table["records"] if r["case"] == case and r["phase"] == phase]
        sources = {}
        for r in rows:
            src = pydicom.dcmread(cx.source_image_path(info, r["key"]))
            sources[str(src.SOPInstanceUID)] = r["key"]
            assert ds.StudyInstanceUID == src.StudyInstanceUID
            assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
        referenced = {str(item.ReferencedSOPInstanceUID)
                      for series in ds.ReferencedSeriesSequence for item in series.ReferencedInstanceSequence}
        assert referenced == set(sources)
        assert int(ds.NumberOfFrames) == len(rows) == 3
        assert ds.SegmentSequence[0].SegmentLabel == "LV cavity"
        seg = hd.seg.segread(io.BytesIO(blob))
        for uid, key in sources.items():
            pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])
            np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), masks[key] == 1)
            assert (masks[key] == 1).sum() > 100
    one = table["records"][0]
    name, ctype, data = cx.export(table, masks, info, "dicom-seg", key=one["key"])
    assert ctype == "application/dicom" and int(pydicom.dcmread(io.BytesIO(data)).NumberOfFrames) == 1


def test_dicom_seg_of_all_patients_is_one_file_per_series(evaluated):
    info, table, masks, _ = evaluated
    name, ctype, data = cx.export(table, masks, info, "dicom-seg")
    z = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(z.namelist()) == sorted("seg-%s-%s.dcm" % (c, p) for c in info["split"]["val_cases"]
                                          for p in ("ED", "ES"))
    for member in z.namelist():
        assert pydicom.dcmread(io.BytesIO(z.read(member))).Modality == "SEG"


def test_export_errors_say_what_to_do(evaluated, tmp_path):
    info, table, masks, _ = evaluated
    with pytest.raises(cx.ExportError, match="evaluate the model again"):
        cx.load_masks(str(tmp_path / "evaluation_masks.npz"))
    with pytest.raises(cx.ExportError, match="of patient SC-N-40"):
        cx.export(table, masks, info, "contours", case="SC-N-40")
    with pytest.raises(cx.ExportError, match="contours or dicom-seg"):
        cx.export(table, masks, info, "rtstruct")
    moved = dict(info, form_values=dict(info["form_values"], image_folder=str(tmp_path / "gone")))
    with pytest.raises(cx.ExportError, match="is gone"):
        cx.export(table, masks, moved, "dicom-seg", key=table["records"][0]["key"])
