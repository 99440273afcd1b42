"""Clinical evaluation of LV segmentations as the Sunnybrook LV Segmentation Challenge scores them.

Radau et al., "Evaluation Framework for Algorithms Segmenting Short Axis Cardiac MRI", MIDAS
Journal 2009, score an automatic contour against the expert's by

* **APD** (average perpendicular distance, mm): for every point of the automatic contour, the
  distance to the expert contour (the closest point of its polyline, i.e. the perpendicular foot
  on the nearest segment, or a vertex), averaged over the automatic contour's points. We report
  that direction (``apd_mm``), the converse (expert points to the automatic polyline,
  ``apd_expert_to_pred_mm``) and their mean (``apd_symmetric_mm``).
* **good contour**: ``apd_mm < 5`` mm.
* **Dice** of the two filled regions.

and derive per patient the end-diastolic and end-systolic volumes, ejection fraction, stroke
volume and, with epicardial contours, myocardial mass. Here:

* Hausdorff distance (mm): the largest point-to-polyline distance in either direction (same
  distance set as APD).
* Contours: the expert's are the points of its contour file; the automatic one is traced from
  the predicted mask (``mask_contour``: outer boundary of the largest 8-connected component,
  ``cv2.findContours``) at pixel index + 0.5, which undoes the truncation of the expert points
  when the label was filled (``plugin.sunnybrook.contours.fill_polygon``), so a perfect
  prediction's traced contour lies on the expert contour on average.
* LV area (mm²): the polygon (shoelace) area of the contour times the two pixel spacings. For a
  traced mask outline this equals the filled polygon's area to about 0.1 % (the pixel count is
  2–12 % larger: fillPoly includes the pixels the outline crosses).
* Volumes: Simpson's rule as cardiac MRI uses it (summation of discs): V = Σ area × s over the
  slices of one phase, s = slice spacing (centre to centre) from the DICOM slice positions.
  **Gap rule**: a slice position missing *between* two contoured slices of a phase gets the mean
  area of its two neighbours (linear interpolation); positions beyond the first or last contoured
  slice count as zero (no extrapolation: at ES the apical cavity is often closed and the expert
  draws nothing there).
* EF = (EDV − ESV) / EDV × 100 %, SV = EDV − ESV; myocardial mass = 1.05 g/ml × (epicardial −
  endocardial volume) at ED.

Distances use the pixel spacing (row, column) of DICOM's PixelSpacing: x (columns) scales by the
column spacing, y (rows) by the row spacing. numpy + OpenCV only.
"""
import math

import numpy as np

GOOD_APD_MM = 5.0
MYOCARDIUM_G_PER_ML = 1.05
PHASES = ("ED", "ES")


class ClinicalError(ValueError):
    """Input that cannot be scored (what and why in the message)."""


# -- contour geometry ------------------------------------------------------------------------------

def _as_points(points, what="contour"):
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise ClinicalError("%s: expected at least 3 (x, y) points, got shape %s"
                            % (what, tuple(pts.shape)))
    if not np.isfinite(pts).all():
        raise ClinicalError("%s: non-finite coordinate" % what)
    return pts


def _scaled(points, spacing):
    """(x, y) pixel coordinates → mm, spacing = (row, column) mm as DICOM's PixelSpacing."""
    row, col = _spacing(spacing)
    return points * np.array([col, row])


def _spacing(spacing):
    if spacing is None:
        raise ClinicalError("no pixel spacing: mm distances and areas need the DICOM PixelSpacing")
    row, col = float(spacing[0]), float(spacing[1])
    if not (row > 0 and col > 0 and math.isfinite(row) and math.isfinite(col)):
        raise ClinicalError("pixel spacing %r is not two positive numbers" % (spacing,))
    return row, col


def point_to_polyline(points, polyline, chunk=512):
    """Distance of each point (N×2) to the closed polyline (M×2 vertices, last joined to first):
    the minimum over its segments of the distance to the segment (perpendicular foot or end)."""
    p = np.asarray(points, dtype=np.float64)
    a = np.asarray(polyline, dtype=np.float64)
    b = np.roll(a, -1, axis=0)
    ab = b - a
    length2 = (ab * ab).sum(axis=1)
    length2[length2 == 0] = 1.0  # a repeated vertex: its zero segment reduces to the vertex
    out = np.empty(len(p))
    for start in range(0, len(p), chunk):
        q = p[start:start + chunk, None, :]                      # n × 1 × 2
        t = np.clip(((q - a) * ab).sum(axis=2) / length2, 0.0, 1.0)  # n × M
        foot = a + t[..., None] * ab
        out[start:start + chunk] = np.sqrt(((q - foot) ** 2).sum(axis=2)).min(axis=1)
    return out


def contour_distances(pred, expert, spacing):
    """APD (both directions, mm) and Hausdorff distance (mm) of two closed contours in pixel
    coordinates. {"apd_mm", "apd_expert_to_pred_mm", "apd_symmetric_mm", "hausdorff_mm"}."""
    p = _scaled(_as_points(pred, "predicted contour"), spacing)
    e = _scaled(_as_points(expert, "expert contour"), spacing)
    forward = point_to_polyline(p, e)
    backward = point_to_polyline(e, p)
    return {"apd_mm": float(forward.mean()),
            "apd_expert_to_pred_mm": float(backward.mean()),
            "apd_symmetric_mm": float((forward.mean() + backward.mean()) / 2),
            "hausdorff_mm": float(max(forward.max(), backward.max()))}


def polygon_area(points):
    """Shoelace area (px²) of a closed polygon."""
    pts = _as_points(points)
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def contour_area_mm2(points, spacing):
    row, col = _spacing(spacing)
    return polygon_area(points) * row * col


def mask_contour(mask):
    """Outline of the largest 8-connected component of a 2-D boolean mask as an N×2 (x, y) array
    at pixel index + 0.5 (see the module docstring), or None when the mask is empty or its
    largest component is a single line of fewer than 3 pixels."""
    import cv2
    m = np.ascontiguousarray(np.asarray(mask, dtype=bool), dtype=np.uint8)
    if m.ndim != 2:
        raise ClinicalError("mask_contour: expected a 2-D mask, got shape %s" % (m.shape,))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if count < 2:
        return None
    # The largest component by its pixel count (contourArea of a thin shape can be 0), traced
    # alone: it may lie inside a hole of a smaller one, where RETR_EXTERNAL on the whole mask
    # would not report it.
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    alone = np.ascontiguousarray(labels == biggest, dtype=np.uint8)
    found = cv2.findContours(alone, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contours = found[0] if len(found) == 2 else found[1]
    best = max(contours, key=len)  # one 8-connected component: one outer contour
    pts = best[:, 0, :].astype(np.float64) + 0.5
    return pts if len(pts) >= 3 else None


# -- per record ------------------------------------------------------------------------------------

def record_clinical(pred_map, expert_contour, spacing, lv_class=1):
    """The challenge's per-contour figures of one record.

    pred_map: H×W class map (image coordinates); expert_contour: N×2 (x, y) expert points or
    None; spacing: PixelSpacing (row, column) mm. Returns apd_mm, apd_expert_to_pred_mm,
    apd_symmetric_mm, hausdorff_mm, good_contour, pred_lv_area_mm2, expert_lv_area_mm2
    (None where undefined: no predicted outline → distances None and good_contour False)."""
    pred_outline = mask_contour(np.asarray(pred_map) == lv_class)
    row = {"apd_mm": None, "apd_expert_to_pred_mm": None, "apd_symmetric_mm": None,
           "hausdorff_mm": None, "good_contour": False,
           "pred_lv_area_mm2": contour_area_mm2(pred_outline, spacing) if pred_outline is not None else 0.0,
           "expert_lv_area_mm2": None}
    if expert_contour is not None:
        row["expert_lv_area_mm2"] = contour_area_mm2(expert_contour, spacing)
        if pred_outline is not None:
            row.update(contour_distances(pred_outline, expert_contour, spacing))
            row["good_contour"] = bool(row["apd_mm"] < GOOD_APD_MM)
    return row


def _stats(values):
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not v.size:
        return None
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def phase_summary(records):
    """The challenge's summary rows: per phase (ED, ES, all) the % of good contours (APD < 5 mm; a
    record without a predicted outline counts as not good), mean ± std of APD (mm) and Dice over
    the good contours (as the challenge's result tables give them: ``apd_mm_good``,
    ``dice_good``) and over all records (``apd_mm``, ``dice``), and of the Hausdorff distance.
    Records without an expert contour are left out."""
    rows = []
    for phase in PHASES + ("all",):
        chosen = [r for r in records if r.get("expert_lv_area_mm2") is not None
                  and (phase == "all" or r.get("phase") == phase)]
        if not chosen:
            continue
        good_rows = [r for r in chosen if r.get("good_contour")]
        good = len(good_rows)
        rows.append({"phase": phase, "count": len(chosen),
                     "apd_mm": _stats(r.get("apd_mm") for r in chosen),
                     "dice": _stats(r.get("dice") for r in chosen),
                     "apd_mm_good": _stats(r.get("apd_mm") for r in good_rows),
                     "dice_good": _stats(r.get("dice") for r in good_rows),
                     "hausdorff_mm": _stats(r.get("hausdorff_mm") for r in chosen),
                     "good_contours": good, "good_percent": 100.0 * good / len(chosen)})
    return rows


# -- per patient -----------------------------------------------------------------------------------

def slice_spacing(locations):
    """Centre-to-centre slice spacing (mm) from the slice positions of one patient: the smallest
    gap between distinct positions (positions within 0.01 mm are one). None for a single slice."""
    locs = np.unique(np.round(np.asarray([float(x) for x in locations], dtype=np.float64), 2))
    if locs.size < 2:
        return None
    return float(np.diff(locs).min())


def disc_volume_ml(slices, spacing_mm):
    """Simpson's rule (summation of discs) over the slices of one phase with the gap rule of the
    module docstring. slices: [(location mm, area mm²)]. Returns (volume ml, filled gap positions)."""
    if not slices:
        return None, []
    ordered = sorted((float(loc), float(area)) for loc, area in slices)
    if spacing_mm is None:
        if len(ordered) > 1:
            raise ClinicalError("several slices but no slice spacing")
        spacing_mm = 0.0
    total, filled = 0.0, []
    for i, (loc, area) in enumerate(ordered):
        total += area * spacing_mm
        if i + 1 < len(ordered):
            nxt_loc, nxt_area = ordered[i + 1]
            missing = int(round((nxt_loc - loc) / spacing_mm)) - 1 if spacing_mm else 0
            for k in range(missing):
                filled.append(loc + (k + 1) * spacing_mm)
                total += (area + nxt_area) / 2.0 * spacing_mm
    return total / 1000.0, filled  # mm³ → ml


def _function(edv, esv, myo_ml=None):
    out = {"edv_ml": edv, "esv_ml": esv, "sv_ml": None, "ef_percent": None,
           "myocardial_mass_g": None if myo_ml is None else MYOCARDIUM_G_PER_ML * myo_ml}
    if edv is not None and esv is not None:
        out["sv_ml"] = edv - esv
        out["ef_percent"] = 100.0 * (edv - esv) / edv if edv > 0 else None
    return out


def patient_function(records, spacing_mm=None):
    """Volumes of one patient from its records ({"phase", "slice_location", "pred_lv_area_mm2",
    "expert_lv_area_mm2", optional "pred_epi_area_mm2"/"expert_epi_area_mm2"}).

    spacing_mm: slice spacing; by default from the records' slice positions (all phases).
    Returns {"spacing_mm", "slices": {ED: n, ES: n}, "pred": {...}, "expert": {...},
    "diff": {pred − expert}, "gaps": {ED: [positions], ES: [...]}}."""
    if spacing_mm is None:
        spacing_mm = slice_spacing(r["slice_location"] for r in records)
    result = {"spacing_mm": spacing_mm, "slices": {}, "gaps": {}}
    for source in ("pred", "expert"):
        vol, myo = {}, None
        for phase in PHASES:
            rows = [r for r in records if r.get("phase") == phase
                    and r.get("%s_lv_area_mm2" % source) is not None]
            result["slices"][phase] = len(rows)
            vol[phase], gaps = disc_volume_ml([(r["slice_location"], r["%s_lv_area_mm2" % source])
                                               for r in rows], spacing_mm)
            result["gaps"][phase] = gaps
            epi = [r for r in rows if r.get("%s_epi_area_mm2" % source) is not None]
            if phase == "ED" and epi and len(epi) == len(rows):
                epi_ml, _ = disc_volume_ml([(r["slice_location"], r["%s_epi_area_mm2" % source])
                                            for r in epi], spacing_mm)
                myo = epi_ml - vol["ED"]
        result[source] = _function(vol["ED"], vol["ES"], myo)
    result["diff"] = {k: (result["pred"][k] - result["expert"][k]
                          if result["pred"][k] is not None and result["expert"][k] is not None else None)
                      for k in result["pred"]}
    return result


def agreement(pairs):
    """Bland–Altman and correlation of (predicted, expert) pairs: bias = mean(pred − expert),
    sd of the differences (n − 1), 95 % limits bias ± 1.96 sd, Pearson r (None below 3 pairs or
    with a constant side)."""
    pts = [(float(p), float(e)) for p, e in pairs if p is not None and e is not None]
    if not pts:
        return None
    p, e = np.array(pts).T
    d = p - e
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    r = None
    if d.size >= 3 and p.std() > 0 and e.std() > 0:
        r = float(np.corrcoef(p, e)[0, 1])
    return {"n": int(d.size), "bias": float(d.mean()), "sd": sd,
            "lower": float(d.mean() - 1.96 * sd), "upper": float(d.mean() + 1.96 * sd), "r": r}


def patient_table(records, all_cases_count=None, spacing_by_case=None):
    """Per-patient rows of an evaluation and the EF/EDV/ESV agreement over complete patients.

    records: evaluation rows with "case", "phase", "slice_location" and the area columns.
    all_cases_count: {case: number of records of that case in the whole dataset}; a patient with
    records outside the evaluated stage is *partial* (its volumes miss those slices): it is
    listed, flagged, warned about and left out of the agreement.
    spacing_by_case: {case: spacing mm} from all the case's records (default: the evaluated ones).
    Returns {"patients": [...], "agreement": {"ef_percent"|"edv_ml"|"esv_ml": {...}}, "warnings": [...]}."""
    by_case, skipped = {}, 0
    for r in records:
        if r.get("case") is None or r.get("phase") not in PHASES or r.get("slice_location") is None:
            skipped += 1
            continue
        by_case.setdefault(r["case"], []).append(r)
    patients, warnings = [], []
    if skipped:
        warnings.append("%d record(s) without patient, ED/ES phase or slice position are not in the "
                        "per-patient volumes (datasets built before this metadata existed: rebuild "
                        "the dataset)" % skipped)
    for case in sorted(by_case):
        rows = by_case[case]
        spacing = (spacing_by_case or {}).get(case)
        info = patient_function(rows, spacing)
        info["case"] = case
        total = (all_cases_count or {}).get(case, len(rows))
        info["partial"] = total > len(rows)
        if info["partial"]:
            warnings.append("patient %s: %d of its %d slices are in this stage, the others in "
                            "training — its volumes are incomplete and the split leaks its anatomy "
                            "into training (build the dataset split by patient)" % (case, len(rows), total))
        for phase in PHASES:
            if info["gaps"][phase]:
                warnings.append("patient %s %s: %d missing slice position(s) between contoured "
                                "slices filled by interpolation" % (case, phase, len(info["gaps"][phase])))
        patients.append(info)
    complete = [p for p in patients if not p["partial"]]
    agree = {k: agreement((p["pred"][k], p["expert"][k]) for p in complete)
             for k in ("ef_percent", "edv_ml", "esv_ml", "sv_ml", "myocardial_mass_g")}
    return {"patients": patients, "agreement": agree, "warnings": warnings}
