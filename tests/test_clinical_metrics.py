"""jobs/clinical.py on hand-made contours whose APD, Hausdorff and area are known in closed form."""
import math

import numpy as np
import pytest

from caffeseg.jobs import clinical
from caffeseg.plugin.sunnybrook.contours import fill_polygon


def circle(cx, cy, r, n=3600):
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def square(cx, cy, side, step=0.05):
    """Closed square outline with points evenly spaced along its edges (corners included)."""
    h = side / 2.0
    s = np.arange(-h, h, step)
    edges = [np.stack([s, np.full_like(s, -h)], 1), np.stack([np.full_like(s, h), s], 1),
             np.stack([-s, np.full_like(s, h)], 1), np.stack([np.full_like(s, -h), -s], 1)]
    return np.concatenate(edges) + [cx, cy]


def test_circle_against_a_shifted_circle():
    r, d, mm = 20.0, 3.0, 1.25
    got = clinical.contour_distances(circle(100, 100, r), circle(100 + d, 100, r), (mm, mm))
    # Point at angle θ of one circle to the other circle: |√(R² + d² − 2Rd cos θ) − R|;
    # its mean over θ (by the rectangle rule on a fine grid of the closed-form integrand).
    theta = np.linspace(0, 2 * math.pi, 200000, endpoint=False)
    expected_apd = np.mean(np.abs(np.sqrt(r * r + d * d - 2 * r * d * np.cos(theta)) - r)) * mm
    assert got["apd_mm"] == pytest.approx(expected_apd, rel=1e-3)
    assert got["apd_expert_to_pred_mm"] == pytest.approx(expected_apd, rel=1e-3)
    assert got["apd_symmetric_mm"] == pytest.approx(expected_apd, rel=1e-3)
    assert got["hausdorff_mm"] == pytest.approx(d * mm, rel=1e-4)  # at θ = 0 and θ = π


def test_square_against_a_larger_concentric_square():
    a, b, mm = 20.0, 30.0, 1.4
    h = (b - a) / 2
    got = clinical.contour_distances(square(50, 50, a), square(50, 50, b), (mm, mm))
    # inner → outer: every point is h from the outer square
    assert got["apd_mm"] == pytest.approx(h * mm, rel=1e-6)
    # outer → inner, per outer edge of length b: h over the middle a, √(h² + u²) for u in [0, h]
    # at both ends; ∫₀ʰ √(h² + u²) du = h²(√2 + asinh 1)/2
    per_edge = a * h + h * h * (math.sqrt(2) + math.asinh(1.0))
    assert got["apd_expert_to_pred_mm"] == pytest.approx(per_edge / b * mm, rel=1e-3)
    assert got["hausdorff_mm"] == pytest.approx(h * math.sqrt(2) * mm, rel=1e-6)  # outer corner
    assert clinical.contour_area_mm2(square(50, 50, a), (mm, mm)) == pytest.approx(a * a * mm * mm, rel=1e-9)
    # PixelSpacing is (row, column): the area scales by both, distances along x by the column one
    assert clinical.contour_area_mm2(square(50, 50, b), (1.0, 2.0)) == pytest.approx(b * b * 2.0, rel=1e-9)
    horizontal = clinical.contour_distances(square(52, 50, a), square(50, 50, a), (1.0, 2.0))
    assert horizontal["hausdorff_mm"] == pytest.approx(4.0, rel=1e-6)  # 2 columns × 2 mm


def test_traced_mask_of_a_filled_expert_contour_lies_on_it():
    """The label is the expert polygon filled with truncated points; its traced outline (+0.5)
    sits on the expert contour within a fraction of a pixel and keeps its area."""
    rng = np.random.default_rng(1)
    for r in (9.0, 21.0, 35.0):
        n = int(2 * math.pi * r)
        expert = circle(*rng.uniform(90, 160, 2), r, n=n)
        inscribed = n / 2.0 * r * r * math.sin(2 * math.pi / n)  # the n-gon's own area
        mask = fill_polygon(np.zeros((256, 256), np.uint8), expert, 1)
        row = clinical.record_clinical(mask, expert, (1.0, 1.0))
        assert row["apd_mm"] < 0.45 and row["apd_expert_to_pred_mm"] < 0.45
        assert row["hausdorff_mm"] < 1.2 and row["good_contour"]
        assert row["pred_lv_area_mm2"] == pytest.approx(math.pi * r * r, rel=0.01)
        assert row["expert_lv_area_mm2"] == pytest.approx(inscribed, rel=1e-9)


def test_mask_contour_takes_the_largest_component_and_empty_masks():
    mask = np.zeros((64, 64), bool)
    mask[5:8, 5:8] = True           # a 3×3 speck
    mask[20:40, 30:50] = True       # the ventricle
    pts = clinical.mask_contour(mask)
    assert pts[:, 0].min() == 30.5 and pts[:, 0].max() == 49.5 and pts[:, 1].min() == 20.5
    assert clinical.mask_contour(np.zeros((8, 8), bool)) is None
    row = clinical.record_clinical(np.zeros((64, 64), np.uint8), square(30, 30, 10), (1.5, 1.5))
    assert row["apd_mm"] is None and row["good_contour"] is False and row["pred_lv_area_mm2"] == 0.0


def test_good_contour_threshold_is_5_mm():
    exp = circle(100, 100, 20)
    shifted = fill_polygon(np.zeros((256, 256), np.uint8), circle(100 + 12, 100, 20, 200), 1)
    far = clinical.record_clinical(shifted, exp, (1.0, 1.0))
    assert far["apd_mm"] > 5 and not far["good_contour"]
    assert clinical.GOOD_APD_MM == 5.0


def test_bad_inputs_are_named():
    with pytest.raises(clinical.ClinicalError, match="expert contour"):
        clinical.contour_distances(circle(5, 5, 3), [[0, 0], [1, 1]], (1, 1))
    with pytest.raises(clinical.ClinicalError, match="pixel spacing"):
        clinical.contour_area_mm2(circle(5, 5, 3), (0, 1))
    with pytest.raises(clinical.ClinicalError, match="PixelSpacing"):
        clinical.contour_area_mm2(circle(5, 5, 3), None)


def test_simpson_disc_volumes_with_the_gap_rule():
    recs = [{"phase": "ED", "slice_location": loc, "pred_lv_area_mm2": a, "expert_lv_area_mm2": a * 1.1}
            for loc, a in ((0.0, 1000.0), (-10.0, 800.0), (-20.0, 500.0))]
    # ES: the middle slice is missing (interpolated), the apex beyond the last contour counts zero
    recs += [{"phase": "ES", "slice_location": loc, "pred_lv_area_mm2": a, "expert_lv_area_mm2": a}
             for loc, a in ((0.0, 600.0), (-20.0, 200.0))]
    got = clinical.patient_function(recs)
    assert got["spacing_mm"] == 10.0
    assert got["pred"]["edv_ml"] == pytest.approx((1000 + 800 + 500) * 10 / 1000.0)
    assert got["pred"]["esv_ml"] == pytest.approx((600 + 400 + 200) * 10 / 1000.0)
    assert got["gaps"]["ES"] == [-10.0]
    assert got["pred"]["sv_ml"] == pytest.approx(23.0 - 12.0)
    assert got["pred"]["ef_percent"] == pytest.approx(100 * 11.0 / 23.0)
    assert got["expert"]["edv_ml"] == pytest.approx(25.3)
    assert got["diff"]["edv_ml"] == pytest.approx(23.0 - 25.3)
    assert got["pred"]["myocardial_mass_g"] is None


def test_myocardial_mass_from_epicardial_areas():
    recs = [{"phase": "ED", "slice_location": loc, "pred_lv_area_mm2": 1000.0, "expert_lv_area_mm2": 1000.0,
             "pred_epi_area_mm2": 1800.0, "expert_epi_area_mm2": 2000.0} for loc in (5.0, 13.0)]
    got = clinical.patient_function(recs)
    assert got["spacing_mm"] == 8.0
    assert got["pred"]["myocardial_mass_g"] == pytest.approx(1.05 * 2 * 800 * 8 / 1000.0)
    assert got["expert"]["myocardial_mass_g"] == pytest.approx(1.05 * 2 * 1000 * 8 / 1000.0)


def test_agreement_bland_altman_and_correlation():
    got = clinical.agreement([(60, 55), (50, 52), (40, 37), (None, 3)])
    d = np.array([5.0, -2.0, 3.0])
    assert got["n"] == 3 and got["bias"] == pytest.approx(2.0)
    assert got["sd"] == pytest.approx(d.std(ddof=1))
    assert got["upper"] == pytest.approx(2.0 + 1.96 * d.std(ddof=1))
    assert got["r"] == pytest.approx(np.corrcoef([60, 50, 40], [55, 52, 37])[0, 1])
    assert clinical.agreement([]) is None


def test_phase_summary_and_partial_patients():
    recs = [{"case": "A", "phase": "ED", "slice_location": 0.0, "apd_mm": 2.0, "dice": 0.9, "good_contour": True,
             "hausdorff_mm": 4.0, "pred_lv_area_mm2": 10.0, "expert_lv_area_mm2": 11.0},
            {"case": "A", "phase": "ES", "slice_location": 0.0, "apd_mm": 6.0, "dice": 0.7, "good_contour": False,
             "hausdorff_mm": 9.0, "pred_lv_area_mm2": 5.0, "expert_lv_area_mm2": 6.0},
            {"case": "A", "phase": "ED", "slice_location": -10.0, "apd_mm": 4.0, "dice": 0.8, "good_contour": True,
             "hausdorff_mm": 5.0, "pred_lv_area_mm2": 10.0, "expert_lv_area_mm2": 11.0}]
    rows = {r["phase"]: r for r in clinical.phase_summary(recs)}
    assert rows["ED"]["count"] == 2 and rows["ED"]["apd_mm"]["mean"] == pytest.approx(3.0)
    assert rows["ED"]["apd_mm"]["std"] == pytest.approx(math.sqrt(2.0))
    assert rows["ES"]["good_percent"] == 0.0 and rows["all"]["good_percent"] == pytest.approx(200 / 3)
    # the challenge's APD and Dice over the good contours only
    assert rows["all"]["apd_mm_good"]["mean"] == pytest.approx(3.0) and rows["all"]["apd_mm"]["mean"] == pytest.approx(4.0)
    assert rows["all"]["dice_good"]["mean"] == pytest.approx(0.85) and rows["ES"]["dice_good"] is None
    table = clinical.patient_table(recs, all_cases_count={"A": 5})
    assert table["patients"][0]["partial"] and "A: 3 of its 5" in table["warnings"][0]
    assert table["agreement"]["ef_percent"] is None
