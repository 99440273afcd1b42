"""Evaluation of a trained model over the whole validation set (DIGITS' "test many", for masks).

Per record: Dice, IoU and pixel accuracy of the predicted LV mask (class 1 vs the rest), LV area
in pixels and mm² (PixelSpacing from dataset.json) for prediction and label, and the Sunnybrook
challenge's figures (``jobs.clinical``: APD and Hausdorff distance in mm, good contour, contour
areas in mm², the record's patient, phase ED/ES and slice position). Aggregate: mean ± std per
metric, the worst records by Dice, the challenge's summary rows per phase and the per-patient
table (EDV, ESV, SV, EF, myocardial mass; predicted vs expert) under ``clinical``. Written to
``evaluation.json`` in the job folder; the predicted class maps (image geometry) beside it in
``evaluation_masks.npz`` (``masks_path``) for the contour and DICOM SEG exports.

The deploy net is driven through the pycaffe API (``jobs.infer.DeployModel``); the metric maths
is plain numpy so it is testable on its own.
"""
import os

import numpy as np

from caffeseg.jobs import boundary, clinical
from caffeseg.jobs.dataset import DatasetInfo
from caffeseg.jobs.paths import atomic_output, atomic_write_json

LV_CLASS = 1
METRICS = ("dice", "iou", "pixel_accuracy", "pred_area_px", "label_area_px", "pred_area_mm2", "label_area_mm2")


def mask_metrics(pred, label, lv_class=LV_CLASS, pixel_spacing=None):
    """Metrics of one predicted class map against its label map (same H×W)."""
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError("prediction %s and label %s differ in shape" % (pred.shape, label.shape))
    p, l = pred == lv_class, label == lv_class
    inter, sp, sl = int((p & l).sum()), int(p.sum()), int(l.sum())
    union = sp + sl - inter
    # Both empty: the prediction is perfect (Dice and IoU 1), as most segmentation papers count it.
    dice = 2.0 * inter / (sp + sl) if sp + sl else 1.0
    iou = float(inter) / union if union else 1.0
    px_mm2 = float(pixel_spacing[0]) * float(pixel_spacing[1]) if pixel_spacing else None
    return {"dice": dice, "iou": iou, "pixel_accuracy": float((pred == label).mean()),
            "pred_area_px": sp, "label_area_px": sl,
            "pred_area_mm2": sp * px_mm2 if px_mm2 else None,
            "label_area_mm2": sl * px_mm2 if px_mm2 else None}


def summarize(records, worst=5):
    """{"count", "summary": {metric: {"mean", "std", "min", "max"}}, "worst": [records, lowest Dice first]}."""
    summary = {}
    for name in METRICS:
        values = np.array([r[name] for r in records if r.get(name) is not None], dtype=np.float64)
        if values.size:
            summary[name] = {"mean": float(values.mean()), "std": float(values.std()),
                             "min": float(values.min()), "max": float(values.max())}
    ranked = sorted(records, key=lambda r: r["dice"])[:worst]
    return {"count": len(records), "summary": summary, "worst": ranked}


def record_meta(info, stage, index, key):
    """The dataset.json entry of one record (case, image, pixel_spacing...), or {}: records are
    listed per stage in key order (``jobs.dataset.build_dataset``)."""
    records = (info.get("records") or {}).get(stage) or []
    rec = records[index] if index < len(records) else {}
    return rec if rec.get("key") == key else {}


def record_spacing(info, stage, index, key):
    """PixelSpacing of one record: its own entry in dataset.json if any, else the global one."""
    return record_meta(info, stage, index, key).get("pixel_spacing") or info.get("pixel_spacing")


def iter_stage(dataset_dir, stage="val"):
    """(index, key, image C×H×W, label H×W) for every record of one stage, in key order."""
    from caffeseg.engine.datum import datum_to_array
    from caffeseg.engine.lmdb_io import LmdbReader
    from caffeseg.engine.proto import caffe_pb2
    base = os.path.join(dataset_dir, "%s_db" % stage)
    with LmdbReader(os.path.join(base, "features")) as feats, LmdbReader(os.path.join(base, "labels")) as labels:
        for index, (key, value) in enumerate(feats.items()):
            datum = caffe_pb2.Datum()
            datum.ParseFromString(value)
            label_datum = caffe_pb2.Datum()
            label_datum.ParseFromString(labels.get(key))
            label = datum_to_array(label_datum)
            yield index, key, datum_to_array(datum), label.reshape(label.shape[-2:])


RECORD_META = ("case", "image_no", "image", "name", "phase", "slice_index", "slice_location",
               "trigger_time")


def masks_path(evaluation_path):
    """Where the predicted class maps of an evaluation file are kept."""
    return os.path.splitext(evaluation_path)[0] + "_masks.npz"


def _full_frame(pred, shape):
    """A prediction of a centre-cropped net placed back into the H×W image (background outside
    the crop: Caffe's TEST crop is centred, as ``DeployModel.crop_like``)."""
    if pred.shape == tuple(shape):
        return pred
    top, left = (shape[0] - pred.shape[0]) // 2, (shape[1] - pred.shape[1]) // 2
    full = np.zeros(shape, dtype=pred.dtype)
    full[top:top + pred.shape[0], left:left + pred.shape[1]] = pred
    return full


def _expert_contour(info, meta, kind, label_mask):
    """(points, source) of the expert's contour: its contour file when the dataset names one that
    is still readable, else the outline traced from the label mask."""
    from caffeseg.plugin.base import EntryError
    from caffeseg.plugin.sunnybrook.contours import read_contour
    rel = (meta.get("files") or {}).get(kind)
    folder = (info.get("form_values") or {}).get("contour_folder")
    if rel and folder and os.path.isfile(os.path.join(folder, rel)):
        try:
            return read_contour(os.path.join(folder, rel)), "file"
        except EntryError:
            pass  # an edited or damaged file: fall back to the label the model was trained on
    outline = clinical.mask_contour(label_mask)
    return outline, ("label" if outline is not None else None)


def clinical_columns(info, meta, pred_full, label_full, spacing):
    """The challenge's per-record columns (see jobs.clinical) in image geometry."""
    expert, source = _expert_contour(info, meta, "icontour", label_full == LV_CLASS)
    if spacing is None:
        return {"expert_contour_source": source, "clinical_error": "no PixelSpacing"}
    row = clinical.record_clinical(pred_full, expert, spacing, lv_class=LV_CLASS)
    row["expert_contour_source"] = source
    # Outline agreement of the two masks within 2 px (jobs.boundary), beside the contour distances.
    row["boundary_f"] = boundary.boundary_f_score(pred_full == LV_CLASS, label_full == LV_CLASS)[0]
    if (label_full == 2).any() or (meta.get("files") or {}).get("ocontour"):
        # Epicardium = cavity + myocardium (classes 1 and 2), for the myocardial mass at ED.
        epi_pred = clinical.mask_contour(pred_full >= 1)
        epi_expert, _ = _expert_contour(info, meta, "ocontour", label_full >= 1)
        row["pred_epi_area_mm2"] = clinical.contour_area_mm2(epi_pred, spacing) if epi_pred is not None else 0.0
        row["expert_epi_area_mm2"] = (clinical.contour_area_mm2(epi_expert, spacing)
                                      if epi_expert is not None else None)
    return row


def _dataset_cases(info):
    """({case: records in all stages}, {case: slice spacing from all its records' positions})."""
    counts, locations = {}, {}
    for stage_records in (info.get("records") or {}).values():
        for rec in stage_records if isinstance(stage_records, list) else []:
            if isinstance(rec, dict) and rec.get("case") is not None:
                counts[rec["case"]] = counts.get(rec["case"], 0) + 1
                if rec.get("slice_location") is not None:
                    locations.setdefault(rec["case"], []).append(rec["slice_location"])
    return counts, {c: clinical.slice_spacing(locs) for c, locs in locations.items()}


def evaluate(model, dataset_dir, out_path=None, stage="val", progress=None):
    """Run ``model`` (a jobs.infer.DeployModel) over a stage; returns (and writes) the table."""
    info = DatasetInfo.read(dataset_dir).info  # the one reader: refuses another format or version
    records, masks = [], {}
    for index, key, image, label in iter_stage(dataset_dir, stage):
        pred = model.predict(image)["class_map"]
        cropped_label = model.crop_like(label)
        spacing = record_spacing(info, stage, index, key)
        row = mask_metrics(pred, cropped_label, pixel_spacing=spacing)
        row["key"] = key
        meta = record_meta(info, stage, index, key)
        for name in RECORD_META:
            if meta.get(name) is not None:
                row[name] = meta[name]
        pred_full = _full_frame(np.asarray(pred), label.shape)
        row.update(clinical_columns(info, meta, pred_full, np.asarray(label), spacing))
        masks[key] = pred_full.astype(np.uint8)
        records.append(row)
        if progress:
            progress(index + 1)
    table = {"snapshot": os.path.basename(model.weights), "stage": stage, "records": records}
    table.update(summarize(records))
    table["clinical"] = clinical_summary(info, records)
    if out_path:
        with atomic_output(masks_path(out_path)) as f:  # a reader never sees a torn zip
            np.savez_compressed(f, **masks)
        atomic_write_json(out_path, table)
    return table


def clinical_summary(info, records):
    """{"phase_summary", "patients", "agreement", "warnings"} of jobs.clinical for one stage."""
    counts, spacing = _dataset_cases(info)
    out = {"phase_summary": clinical.phase_summary(records)}
    out.update(clinical.patient_table(records, all_cases_count=counts, spacing_by_case=spacing))
    split = info.get("split") or {}
    if split.get("by") == "slice":
        out["warnings"].insert(0, "the dataset was split by slice: patients with slices in both "
                               "training and validation have incomplete volumes and are left out "
                               "of the EF agreement (build it split by patient)")
    return out
