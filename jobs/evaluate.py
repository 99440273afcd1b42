"""Evaluation of a trained model over the whole validation set (DIGITS' "test many", for masks).

Per record: Dice, IoU and pixel accuracy of the predicted LV mask (class 1 vs the rest), LV area
in pixels and mm² (PixelSpacing from dataset.json) for prediction and label. Aggregate: mean ±
std per metric and the worst records by Dice. Written to ``evaluation.json`` in the job folder.

The deploy net is driven through the pycaffe API (``jobs.infer.DeployModel``); the metric maths
is plain numpy so it is testable on its own.
"""
import json
import os

import numpy as np

from jobs.paths import atomic_write_json

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
    """The dataset.json entry of one record (case, image, pixel_spacing...), or {}."""
    records = (info.get("records") or {}).get(stage) or []
    rec = None
    if isinstance(records, list) and index < len(records):
        rec = records[index]
    elif isinstance(records, dict):
        rec = records.get(key)
    return rec if isinstance(rec, dict) else {}


def record_spacing(info, stage, index, key):
    """PixelSpacing of one record: per-record entry in dataset.json if any, else the global one."""
    rec = record_meta(info, stage, index, key)
    if rec:
        for name in ("pixel_spacing", "PixelSpacing", "spacing"):
            if rec.get(name):
                return rec[name]
    return info.get("pixel_spacing")


def iter_stage(dataset_dir, stage="val"):
    """(index, key, image C×H×W, label H×W) for every record of one stage, in key order."""
    from engine.datum import datum_to_array
    from engine.lmdb_io import LmdbReader
    from engine.proto import caffe_pb2
    base = os.path.join(dataset_dir, "%s_db" % stage)
    with LmdbReader(os.path.join(base, "features")) as feats, LmdbReader(os.path.join(base, "labels")) as labels:
        for index, (key, value) in enumerate(feats.items()):
            datum = caffe_pb2.Datum()
            datum.ParseFromString(value)
            label_datum = caffe_pb2.Datum()
            label_datum.ParseFromString(labels.get(key))
            label = datum_to_array(label_datum)
            yield index, key, datum_to_array(datum), label.reshape(label.shape[-2:])


def evaluate(model, dataset_dir, out_path=None, stage="val", progress=None):
    """Run ``model`` (a jobs.infer.DeployModel) over a stage; returns (and writes) the table."""
    with open(os.path.join(dataset_dir, "dataset.json")) as f:
        info = json.load(f)
    records = []
    for index, key, image, label in iter_stage(dataset_dir, stage):
        pred = model.predict(image)["class_map"]
        label = model.crop_like(label)
        row = mask_metrics(pred, label, pixel_spacing=record_spacing(info, stage, index, key))
        row["key"] = key
        meta = record_meta(info, stage, index, key)
        for name in ("case", "image_no", "image", "name"):
            if meta.get(name) is not None:
                row[name] = meta[name]
        records.append(row)
        if progress:
            progress(index + 1)
    table = {"snapshot": os.path.basename(model.weights), "stage": stage, "records": records}
    table.update(summarize(records))
    if out_path:
        atomic_write_json(out_path, table)
    return table
