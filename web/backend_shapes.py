"""The jobs service's answers in the shapes ``web.backend`` documents for the views: a job's
listing entry (elapsed time, key metrics with sparklines, dataset facts), its files, snapshots,
charted metric series, the evaluation table and an inference result.

Pure functions over what ``jobs.service.JobService`` returns (and a job folder's listing);
``web.service_backend.ServiceBackend`` calls the service and hands its answers here.
"""
from __future__ import annotations

import time
from pathlib import Path

from caffeseg.jobs.dataset import record_name
from caffeseg.jobs.store import ACTIVE
from caffeseg.web.backend import running_seconds

# Folders inside a job directory whose content is listed as one entry (LMDB internals, results).
OPAQUE_DIRS = ("_db", "inference", "uploads", "__pycache__")
LOG_LIMIT = 200000  # characters of a log the pages get (its end)
BOOKKEEPING_SERIES = ("epoch", "eta", "throughput")  # phase-less rows that are not charted
EVALUATION_COLUMNS = ("dice", "iou", "pixel_accuracy")
SPARK_POINTS = 60


def list_job_files(job_dir: Path) -> list[dict]:
    """Files a user may open or download, relative to the job directory (one level of folders)."""
    out = []
    if not job_dir.is_dir():
        return out
    for entry in sorted(job_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            out.append({"name": entry.name, "size": entry.stat().st_size})
        elif entry.is_dir() and not entry.name.endswith(OPAQUE_DIRS):
            for sub in sorted(entry.iterdir()):
                if sub.is_file() and not sub.name.startswith("."):
                    out.append({"name": f"{entry.name}/{sub.name}", "size": sub.stat().st_size})
    return out


def dataset_view(info) -> dict:
    """A ``jobs.dataset.DatasetInfo`` (or None: unreadable) as the dataset page and the model
    form read it."""
    if info is None:
        return {"counts": {}, "classes": [], "palette": [], "form_values": {}}
    return {"counts": info.counts, "feature_shape": info.feature_shape, "feature_dtype": info.feature_dtype,
            "label_shape": info.label_shape, "label_dtype": info.label_dtype, "classes": info.classes,
            "palette": info.palette, "form_values": info.form_values,
            "split": info.info.get("split") or {},  # by slice|patient, val_cases, cases_in_both
            "skipped": list(info.info.get("skipped") or [])}  # [{file, message}]: records left out, why


def job_summary(job: dict, metric_rows=None, dataset_info=None) -> dict:
    """A ``JobService.show`` answer as a listing entry: a model's key metrics from its metric
    rows, a dataset's facts from its ``DatasetInfo``."""
    history = [{"status": status, "time": at} for status, at in job["history"]]
    if job["kind"] == "model":
        elapsed = running_seconds(history, job["status"])
    else:
        end = job["updated_at"] if job["status"] not in ACTIVE else time.time()  # a build's time runs on
        elapsed = max(0.0, end - job["created_at"])
    out = dict(job, group=job["group_name"] or "", submitted=job["created_at"], elapsed=elapsed,
               history=history, metrics={})
    if job["kind"] == "model":
        out["metrics"] = _key_metrics(series(metric_rows or [])[0])
    else:
        out["info"] = dataset_view(dataset_info)
        counts = out["info"]["counts"]
        out["summary"] = {"train_count": counts.get("train"), "val_count": counts.get("val"),
                          "feature_shape": out["info"].get("feature_shape"),
                          "feature_dtype": out["info"].get("feature_dtype"), "classes": out["info"]["classes"]}
        out["plugin"] = job["options"].get("plugin")
    return out


def series(rows, since=0) -> tuple[dict, dict]:
    """The service's metric rows → charted series {train/<name>, val/<name>, lr: [[it, v]]} and
    the bookkeeping ones (epoch, eta, throughput)."""
    charted, bookkeeping = {}, {}
    for iteration, name, value, phase in rows:
        if iteration < since:
            continue
        if phase:
            # A non-finite output (stored as NULL) stays a point: null, a gap in the chart; the
            # job's status message says why (the runner stops on it).
            charted.setdefault(f"{phase}/{name}", []).append([iteration, None if value is None else float(value)])
            continue
        if value is None:
            continue
        if name in BOOKKEEPING_SERIES:
            bookkeeping.setdefault(name, []).append([iteration, float(value)])
            continue
        charted.setdefault(name, []).append([iteration, float(value)])
    return charted, bookkeeping


def metrics_view(raw: dict, since=0) -> dict:
    """``JobService.metrics`` → ``Backend.metrics``: the charted series and the last throughput."""
    charted, bookkeeping = series(raw["series"], since)
    throughput = bookkeeping.get("throughput")
    return {"status": raw["status"], "progress": raw["progress"], "eta": raw["eta"],
            "iters_per_epoch": raw["iters_per_epoch"], "series": charted,
            "throughput": throughput[-1][1] if throughput else None}


def _key_metrics(charted: dict) -> dict:
    """last/min/max and a sparkline of every output the job records (train/<name>, val/<name>),
    as DIGITS' model table (the home page shows the validation outputs and the training loss
    first; its column chooser shows the others)."""
    out = {}
    for name, points in charted.items():
        if name.startswith(("val/", "train/")):
            values = [p[1] for p in points if p[1] is not None]
            if not values:
                continue
            step = max(1, len(values) // SPARK_POINTS)
            out[name] = {"last": values[-1], "min": min(values), "max": max(values), "spark": values[::step]}
    return out


def snapshot_entries(snapshots, job_dir: Path, per_epoch) -> list[dict]:
    """``[(iteration, file name)]`` → ``[{iteration, epoch, file, size}]`` (size None: file gone)."""
    return [{"iteration": it, "epoch": it / per_epoch if per_epoch else None, "file": name,
             "size": (job_dir / name).stat().st_size if (job_dir / name).is_file() else None}
            for it, name in snapshots]


def evaluation_view(table):
    """The service's evaluation table with each worst record's name and the columns to show."""
    if not table:
        return None
    worst = [dict(w, name=record_name(w)) for w in table["worst"]]
    columns = [k for k in EVALUATION_COLUMNS if worst and k in worst[0]]
    # every record named, and the clinical part (docs/CLINICAL.md) for the evaluation page
    records = [dict(r, name=record_name(r)) for r in table["records"]]
    return {"summary": table["summary"], "worst": worst, "worst_columns": columns, "records": records,
            "clinical": table.get("clinical"), "snapshot": table.get("snapshot"), "stage": table.get("stage")}


def inference_view(raw: dict, info) -> dict:
    """``infer_record``/``infer_image``'s answer → ``Backend.infer``'s (palette from the dataset)."""
    import numpy as np
    # png: DIGITS' picture of the layer (activation grid, conv weights; jobs.visualize), stored as
    # a file beside the result by web.inference_store; param_count on a layer's first weight row
    layers = [{"name": layer["name"], "kind": layer["kind"], "shape": layer["shape"], "mean": layer["mean"],
               "std": layer["std"], "hist": {"counts": layer["histogram"], "edges": layer["edges"]},
               "png": layer.get("png"), "param_count": layer.get("param_count")}
              for layer in raw.get("layers") or []]
    snapshot = raw["snapshot"]
    probabilities = raw.get("probabilities")
    return {"image": np.asarray(raw["image"]), "prediction": np.asarray(raw["class_map"]),
            "probabilities": None if probabilities is None else np.asarray(probabilities),  # C x H x W
            # the foreground class's probability (2-class results): the view's binary threshold
            "foreground_probability": (np.asarray(probabilities)[1] if probabilities is not None
                                       and np.ndim(probabilities) == 3 and len(probabilities) == 2 else None),
            "label": None if raw.get("label") is None else np.asarray(raw["label"]),
            "classes": list(raw.get("classes") or (info.classes if info is not None else [])),
            "palette": info.palette if info is not None else [],
            "metrics": {k: float(v) for k, v in (raw.get("metrics") or {}).items() if isinstance(v, (int, float))},
            "layers": layers, "source": raw.get("source"), "param_total": raw.get("param_total"),
            "snapshot": int(snapshot.rsplit("_iter_", 1)[1].split(".")[0]) if "_iter_" in snapshot else snapshot}
