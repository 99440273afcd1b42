"""Per-patient LV function on phantom patients whose volumes the generator knows in closed form
(plugin/sunnybrook/phantom.py: truth = Σ closed-form contour area × 10 mm), and the evaluation's
clinical columns through a real dataset build.

Tolerances: expert-contour volumes within 1 % of the truth (contour points are jittered by
0.25 px), traced-mask volumes within 2 %, EF within 1 percentage point."""
import os

import numpy as np
import pytest

from caffeseg.jobs import clinical
from caffeseg.jobs import evaluate as ev
from caffeseg.plugin.sunnybrook import contours, layout, phantom
from tests.clinical_fixtures import CASES, OracleModel, make_dataset, make_release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("clinical") / "release")
    return root, make_release(root)


def _expert_records(root, case, truth, source):
    ctr = os.path.join(root, "TrainingDataContours", layout.dir_from_case(case), layout.EXPERT_SUBDIR)
    spacing = (truth["pixel_spacing"],) * 2
    rows = []
    for s in truth["slices"]:
        inner = contours.read_contour(os.path.join(ctr, layout.contour_name(s["image_no"], "icontour")))
        if source == "mask":
            inner = clinical.mask_contour(contours.polygon_mask(inner, (256, 256)) == 1)
        row = {"phase": s["phase"], "slice_location": s["slice_location"],
               "pred_lv_area_mm2": clinical.contour_area_mm2(inner, spacing),
               "expert_lv_area_mm2": clinical.contour_area_mm2(inner, spacing)}
        if s["phase"] == "ED":
            outer = contours.read_contour(os.path.join(ctr, layout.contour_name(s["image_no"], "ocontour")))
            if source == "mask":
                outer = clinical.mask_contour(contours.polygon_mask(outer, (256, 256)) == 1)
            row["pred_epi_area_mm2"] = row["expert_epi_area_mm2"] = clinical.contour_area_mm2(outer, spacing)
        rows.append(row)
    return rows


def test_truth_is_the_closed_form_disc_stack(release):
    _, summary = release
    truth = summary["truth"]["SC-N-2"]
    assert truth["slice_spacing_mm"] == 10.0 and len(truth["slices"]) == 10
    ed = [s for s in truth["slices"] if s["phase"] == "ED"]
    assert truth["edv_ml"] == pytest.approx(sum(s["endo_area_mm2"] for s in ed) * 10 / 1000)
    # a cavity of radius ~20 px at ~1.4 mm: tens of ml, EF of the phantom's ES factor 0.72-0.80
    # squared (area) → 36-48 %, a little less at the apex
    assert 20 < truth["edv_ml"] < 120 and 30 < truth["ef_percent"] < 52


@pytest.mark.parametrize("source,tol", [("file", 0.01), ("mask", 0.02)])
def test_volumes_from_contours_match_the_phantom_truth(release, source, tol):
    root, summary = release
    for case in CASES:
        truth = summary["truth"][case]
        got = clinical.patient_function(_expert_records(root, case, truth, source))
        assert got["spacing_mm"] == pytest.approx(10.0)
        assert got["expert"]["edv_ml"] == pytest.approx(truth["edv_ml"], rel=tol)
        assert got["expert"]["esv_ml"] == pytest.approx(truth["esv_ml"], rel=tol)
        assert got["expert"]["ef_percent"] == pytest.approx(truth["ef_percent"], abs=1.0)
        assert got["expert"]["myocardial_mass_g"] == pytest.approx(truth["myocardial_mass_g"], rel=2 * tol)


def test_default_layout_truth_leaves_out_the_uncontoured_apex(tmp_path):
    summary = phantom.generate(str(tmp_path / "r"), cases=["SC-HF-I-1"], seed=0)
    truth = summary["truth"]["SC-HF-I-1"]
    assert sum(1 for s in truth["slices"] if s["phase"] == "ES") == 8  # 9 slices, apex ES missing
    assert sum(1 for s in truth["slices"] if s["phase"] == "ED") == 9


@pytest.fixture(scope="module")
def dataset(release, tmp_path_factory):
    root, _ = release
    out = str(tmp_path_factory.mktemp("clinical_ds") / "ds")
    return out, make_dataset(root, out)


def test_records_carry_patient_phase_and_slice_position(dataset, release):
    _, info = dataset
    _, summary = release
    assert info["split"]["by"] == "patient"  # the default for evaluation datasets
    rec = info["records"]["val"][0]
    truth = {s["image_no"]: s for s in summary["truth"][rec["case"]]["slices"]}
    assert rec["phase"] == truth[rec["image_no"]]["phase"]
    assert rec["slice_location"] == pytest.approx(truth[rec["image_no"]]["slice_location"], abs=1e-3)
    assert rec["slice_index"] == truth[rec["image_no"]]["slice_index"]
    assert rec["spacing_between_slices"] == 10.0 and rec["slice_thickness"] == 8.0
    assert rec["series_uid"] and rec["sop_uid"] and rec["patient_id"] == rec["case"]


def test_evaluation_adds_the_clinical_columns_and_patient_table(dataset, release, tmp_path):
    ds_dir, info = dataset
    _, summary = release
    out = str(tmp_path / "evaluation.json")
    table = ev.evaluate(OracleModel(ds_dir), ds_dir, out)
    val_cases = set(info["split"]["val_cases"])
    assert {r["case"] for r in table["records"]} == val_cases
    for r in table["records"]:
        assert r["expert_contour_source"] == "file"
        assert r["apd_mm"] < 1.0 and r["good_contour"] and r["phase"] in ("ED", "ES")
        assert r["boundary_f"] == 1.0  # the oracle's mask is the label
    phases = {row["phase"]: row for row in table["clinical"]["phase_summary"]}
    assert phases["ED"]["good_percent"] == 100.0 and phases["ES"]["count"] == 5 * len(val_cases)
    patients = {p["case"]: p for p in table["clinical"]["patients"]}
    for case in val_cases:
        p, truth = patients[case], summary["truth"][case]
        assert not p["partial"]
        assert p["expert"]["edv_ml"] == pytest.approx(truth["edv_ml"], rel=0.01)
        assert p["pred"]["edv_ml"] == pytest.approx(truth["edv_ml"], rel=0.02)
        assert p["pred"]["ef_percent"] == pytest.approx(truth["ef_percent"], abs=1.0)
    masks = np.load(ev.masks_path(out))
    assert sorted(masks.files) == sorted(r["key"] for r in table["records"])
    # an over-segmenting model: larger volumes, a positive EDV bias
    grown = ev.evaluate(OracleModel(ds_dir, grow=2), ds_dir)
    for p in grown["clinical"]["patients"]:
        assert p["diff"]["edv_ml"] > 0 and p["diff"]["esv_ml"] > 0
    assert grown["clinical"]["agreement"]["edv_ml"]["bias"] > 0


def test_slice_split_warns_about_patients_on_both_sides(release, tmp_path):
    root, _ = release
    out = str(tmp_path / "ds")
    info = make_dataset(root, out, split_by="slice")
    assert info["split"]["cases_in_both"]
    table = ev.evaluate(OracleModel(out), out)
    warnings = table["clinical"]["warnings"]
    assert "split by slice" in warnings[0]
    partial = [p for p in table["clinical"]["patients"] if p["partial"]]
    assert partial and any("in this stage, the others in training" in w for w in warnings)
    assert table["clinical"]["agreement"]["ef_percent"] is None or \
        table["clinical"]["agreement"]["ef_percent"]["n"] == len(table["clinical"]["patients"]) - len(partial)
