"""``Backend`` on top of ``jobs.service`` (the facade the CLI also uses).

The service is written alongside the web, so this adapter reads its answers leniently (dicts or
objects, a few spellings of each field) and normalises them to the shapes documented in
``web.backend``. Anything the service does not offer raises ``Unavailable``. Parts that only
read files the product writes — the ``prototxt/`` folder, a job's files, a dataset's
``dataset.json`` and LMDBs — are done here directly, so they work whatever the service offers.
"""
from __future__ import annotations

import importlib
import inspect as _inspect
import json
import os
import threading
import time
from pathlib import Path

from web.backend import Backend, BadRequest, NotFound, Unavailable
from web.safety import check_job_id

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NETWORKS_DIR = PROJECT_ROOT / "prototxt"
# Folders inside a job directory whose content is listed as one entry (LMDB internals, results).
OPAQUE_DIRS = ("_db", "inference", "uploads", "__pycache__")


def _get(obj, *names, default=None):
    for name in names:
        if isinstance(obj, dict):
            if name in obj and obj[name] is not None:
                return obj[name]
        elif getattr(obj, name, None) is not None:
            value = getattr(obj, name)
            return value
    return default


def _as_dict(obj) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return dict(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "_asdict"):
        return obj._asdict()
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses
        return dataclasses.asdict(obj)
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


def _epoch(value):
    if value is None or isinstance(value, (int, float)):
        return value
    try:
        from datetime import datetime
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                pass
    return total


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


class ServiceBackend(Backend):
    def __init__(self, settings: dict):
        self.settings = settings
        self._service = None
        self._lock = threading.Lock()
        self._key_cache: dict[tuple, list[str]] = {}

    # -- the jobs service, opened lazily so the app starts even while it is missing ---------
    @property
    def service(self):
        if self._service is None:
            with self._lock:
                if self._service is None:
                    try:
                        module = importlib.import_module("jobs.service")
                    except Exception as exc:  # not written yet / broken install
                        raise Unavailable(f"the jobs service cannot be loaded ({type(exc).__name__}: {exc})") from None
                    self._service = _open_service(module, self.settings)
        return self._service

    def _fn(self, *names):
        for name in names:
            fn = getattr(self.service, name, None)
            if callable(fn):
                return fn
        raise Unavailable(f"the jobs service has no {names[0]}()")

    def _call(self, names, *args, **kwargs):
        fn = self._fn(*names)
        try:
            return fn(*args, **kwargs)
        except (Unavailable, NotFound, BadRequest):
            raise
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        except (ValueError, PermissionError) as exc:
            raise BadRequest(str(exc)) from None

    # -- normalisation ------------------------------------------------------------------------
    def _summary(self, raw) -> dict:
        d = _as_dict(raw)
        job_id = str(_get(d, "id", "job_id"))
        kind = str(_get(d, "kind", "type", "job_type", default="model")).lower()
        kind = {"pretrained_model": "pretrained", "pretrainedmodel": "pretrained"}.get(kind, kind)
        status = str(_get(d, "status", "state", default="?"))
        submitted = _epoch(_get(d, "submitted", "created", "created_at", "submitted_at"))
        elapsed = _get(d, "elapsed", "runtime", "elapsed_s")
        if elapsed is None and submitted:
            end = _epoch(_get(d, "finished", "finished_at", "ended_at")) or time.time()
            started = _epoch(_get(d, "started", "started_at")) or submitted
            elapsed = max(0.0, end - started)
        metrics = {}
        for name, m in (_get(d, "metrics", "key_metrics", default={}) or {}).items():
            m = _as_dict(m) if not isinstance(m, (list, tuple)) else {"spark": list(m)}
            spark = list(_get(m, "spark", "series", "values", default=[]) or [])
            metrics[name] = {"last": _get(m, "last", default=spark[-1] if spark else None),
                             "min": _get(m, "min", default=min(spark) if spark else None),
                             "max": _get(m, "max", default=max(spark) if spark else None),
                             "spark": spark[-60:]}
        out = dict(d)
        out.update({"id": job_id, "kind": kind, "name": str(_get(d, "name", default=job_id)),
                    "group": _get(d, "group", "group_name", default="") or "", "status": status.capitalize()
                    if status.islower() else status, "submitted": submitted, "elapsed": elapsed,
                    "progress": _get(d, "progress"), "metrics": metrics})
        job_dir = _get(d, "dir", "path", "job_dir", "directory")
        if job_dir is None:
            job_dir = Path(self.settings["JOBS_DIR"]) / job_id
        out["dir"] = str(job_dir)
        out["dataset_id"] = _get(d, "dataset_id", "dataset")
        return out

    # -- listing and lifecycle ----------------------------------------------------------------
    def jobs(self, kind=None):
        fn = self._fn("list_jobs", "jobs", "list")
        try:
            raw = fn(kind=kind) if kind and "kind" in _inspect.signature(fn).parameters else fn()
        except (TypeError, ValueError):
            raw = fn()
        jobs = [self._summary(j) for j in raw]
        return [j for j in jobs if kind is None or j["kind"] == kind]

    def job(self, job_id):
        check_job_id(job_id)
        raw = self._call(("show", "get_job", "job", "show_job"), job_id)
        if raw is None:
            raise NotFound(f"job {job_id} does not exist")
        job = self._summary(raw)
        job_dir = Path(job["dir"])
        job["files"] = list_job_files(job_dir)
        job["size"] = job.get("size") or _dir_size(job_dir)
        history = _get(job, "history", "status_history", default=[]) or []
        job["history"] = [{"status": _get(_as_dict(h) if not isinstance(h, (list, tuple)) else
                                          {"status": h[0], "time": h[1]}, "status", "state"),
                           "time": _epoch(_get(_as_dict(h) if not isinstance(h, (list, tuple)) else
                                               {"status": h[0], "time": h[1]}, "time", "timestamp", "at"))}
                          for h in history]
        if job.get("log") is None:
            job["log"] = self._read_log(job_dir)
        if job["kind"] == "dataset" and not job.get("info"):
            info_path = job_dir / "dataset.json"
            if info_path.is_file():
                try:
                    job["info"] = json.loads(info_path.read_text())
                except ValueError:
                    job["info"] = {}
        if job["kind"] == "dataset":
            job["info"] = _dataset_info_view(job.get("info") or {})
            job["summary"] = _dataset_summary(job["info"])
        if job["kind"] == "model":
            job["snapshots"] = self._snapshots(job, job_dir)
            if job.get("dataset_id"):
                try:
                    job["dataset_name"] = self._summary(self._call(("show", "get_job", "job"), job["dataset_id"]))["name"]
                except Exception:  # the dataset may have been deleted
                    job["dataset_name"] = None
        return job

    @staticmethod
    def _read_log(job_dir: Path) -> str | None:
        for name in ("log.txt", "job.log", "train.log", "caffe_output.log", "create.log", "dataset.log"):
            path = job_dir / name
            if path.is_file():
                text = path.read_text(errors="replace")
                return text[-200000:]
        return None

    @staticmethod
    def _snapshots(job: dict, job_dir: Path) -> list[dict]:
        raw = job.get("snapshots")
        ipe = job.get("iters_per_epoch")
        if raw:
            out = []
            for s in raw:
                s = _as_dict(s) if not isinstance(s, (int, float)) else {"iteration": int(s)}
                it = int(_get(s, "iteration", "iter"))
                file = _get(s, "file", "path", default=f"snapshot_iter_{it}.caffemodel")
                file = Path(file).name if str(file).startswith(str(job_dir)) or "/" not in str(file) else file
                path = job_dir / file
                out.append({"iteration": it, "epoch": _get(s, "epoch", default=(it / ipe) if ipe else None),
                            "file": str(file), "size": path.stat().st_size if path.is_file() else None})
            return out
        out = []
        for path in job_dir.glob("*_iter_*.caffemodel"):
            try:
                it = int(path.stem.rsplit("_", 1)[1])
            except ValueError:
                continue
            out.append({"iteration": it, "epoch": (it / ipe) if ipe else None, "file": path.name,
                        "size": path.stat().st_size})
        return sorted(out, key=lambda s: s["iteration"])

    def metrics(self, job_id, since=0):
        check_job_id(job_id)
        raw = self._call(("metrics", "metric_series", "get_metrics", "metrics_since"), job_id, since)
        raw = _as_dict(raw) if not isinstance(raw, list) else {"series": raw}
        series = raw.get("series", {})
        if isinstance(series, list):  # rows: (iteration, name, value) or dicts
            grouped: dict[str, list] = {}
            for row in series:
                r = _as_dict(row) if not isinstance(row, (list, tuple)) else dict(zip(("iteration", "name", "value", "phase"), row))
                name = str(_get(r, "name", "series", "key"))
                phase = _get(r, "phase", "stage")
                if phase and "/" not in name and name != "lr":
                    name = f"{phase}/{name}"
                grouped.setdefault(name, []).append([int(_get(r, "iteration", "iter")), float(_get(r, "value"))])
            series = grouped
        out = {k: v for k, v in raw.items() if k != "series"}
        out["series"] = {name: [[int(p[0]), float(p[1])] for p in pts if int(p[0]) >= since]
                         for name, pts in series.items()}
        if "status" not in out or "progress" not in out:
            try:
                job = self._summary(self._call(("show", "get_job", "job"), job_id))
                out.setdefault("status", job["status"])
                out.setdefault("progress", job.get("progress"))
                out.setdefault("eta", job.get("eta"))
                out.setdefault("iters_per_epoch", job.get("iters_per_epoch"))
            except Unavailable:
                pass
        return out

    def abort(self, job_id):
        self._call(("abort", "abort_job"), check_job_id(job_id))

    def delete(self, job_id):
        self._call(("delete", "delete_job"), check_job_id(job_id))

    def resume(self, job_id):
        self._call(("resume", "resume_job"), check_job_id(job_id))

    def clone(self, job_id):
        raw = self._call(("clone_values", "clone_options", "clone", "clone_job"), check_job_id(job_id))
        return _as_dict(raw) if not isinstance(raw, str) else {"id": raw}

    # -- creation ---------------------------------------------------------------------------
    def create_dataset(self, plugin_id, values, options):
        fn = self._fn("create_dataset")
        kwargs = dict(options)
        for alias, name in DATASET_OPTION_ALIASES.items():
            kwargs.setdefault(alias, options.get(name))
        try:
            result = fn(plugin_id, values, **_accepted_kwargs(fn, kwargs))
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        except ValueError as exc:
            raise BadRequest(str(exc), getattr(exc, "field_errors", None)) from None
        return str(_get(_as_dict(result), "id", "job_id")) if not isinstance(result, str) else result

    def create_model(self, options):
        fn = self._fn("create_model", "create_models")
        try:
            result = fn(options)
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        except ValueError as exc:
            raise BadRequest(str(exc), getattr(exc, "field_errors", None)) from None
        if isinstance(result, (str, int)):
            return [str(result)]
        return [r if isinstance(r, str) else str(_get(_as_dict(r), "id", "job_id")) for r in result]

    # -- datasets (read from the files the dataset builder writes) ---------------------------
    def _dataset_dir(self, job_id) -> Path:
        job = self.job(job_id)
        if job["kind"] != "dataset":
            raise NotFound(f"job {job_id} is not a dataset")
        return Path(job["dir"]), job

    def _keys(self, db_path: Path) -> list[str]:
        key = (str(db_path), db_path.stat().st_mtime if db_path.exists() else 0)
        if key not in self._key_cache:
            try:
                from engine.lmdb_io import LmdbReader
            except ImportError as exc:
                raise Unavailable(f"LMDB reading is not available ({exc})") from None
            with LmdbReader(str(db_path)) as reader:
                self._key_cache[key] = list(reader.keys())
        return self._key_cache[key]

    def dataset_records(self, job_id, stage, offset, limit):
        job_dir, job = self._dataset_dir(job_id)
        info = job.get("info") or {}
        names = _record_names(info, stage)
        db = job_dir / f"{stage}_db" / "features"
        if not db.exists():
            return {"total": 0, "records": []}
        keys = self._keys(db)
        recs = [{"index": i, "key": k, "name": names.get(k) or names.get(str(i))}
                for i, k in enumerate(keys[offset:offset + limit], start=offset)]
        return {"total": len(keys), "records": recs}

    def dataset_record(self, job_id, stage, index):
        job_dir, job = self._dataset_dir(job_id)
        try:
            from engine.datum import bytes_to_array
            from engine.lmdb_io import LmdbReader
        except ImportError as exc:
            raise Unavailable(f"dataset reading is not available ({exc})") from None
        db = job_dir / f"{stage}_db" / "features"
        keys = self._keys(db) if db.exists() else []
        if not 0 <= index < len(keys):
            raise NotFound(f"no record {index} in the {stage} set")
        arrays = []
        for part in ("features", "labels"):
            path = job_dir / f"{stage}_db" / part
            if not path.exists():
                arrays.append(None)
                continue
            with LmdbReader(str(path)) as reader:
                array, _ = bytes_to_array(reader.get(keys[index]), f"{path} key {keys[index]}")
            arrays.append(array)
        label = arrays[1]
        if label is not None and label.ndim == 3:
            label = label[0]
        info = job.get("info") or {}
        return arrays[0], label, {"palette": info.get("palette")}

    # -- networks ---------------------------------------------------------------------------
    def standard_networks(self):
        out = []
        titles = _network_titles(NETWORKS_DIR / "README.md")
        if NETWORKS_DIR.is_dir():
            for path in sorted(NETWORKS_DIR.glob("*.prototxt")):
                if path.name.endswith(("deploy.prototxt", "solver.prototxt")):
                    continue
                text = path.read_text(errors="replace")
                first = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "")
                out.append({"name": path.stem, "title": titles.get(path.name, path.stem.replace("_", " ")),
                            "description": first, "text": text})
        return out

    def pretrained_models(self):
        try:
            return [self._summary(j) for j in self.jobs("pretrained")]
        except Unavailable:
            return []

    def inspect_network(self, text, dataset_id=None):
        from web.netinspect import inspect
        return inspect(text, self._dataset_shape(dataset_id))

    def _dataset_shape(self, dataset_id):
        if not dataset_id:
            return None
        try:
            info = self.job(dataset_id).get("info") or {}
        except Exception:  # an unknown dataset only loses the shape hint
            return None
        shape = info.get("feature_shape")
        return list(shape) if shape else None

    # -- evaluation / inference ---------------------------------------------------------------
    def evaluation(self, job_id):
        raw = self._call(("evaluation", "get_evaluation", "evaluation_table"), check_job_id(job_id))
        return _evaluation_view(_as_dict(raw) if raw is not None else None)

    def infer(self, job_id, snapshot, *, record=None, image_path=None, visualize=False):
        check_job_id(job_id)
        if record is not None:
            fn = self._fn("infer_record", "infer")
            kwargs = {"snapshot": snapshot, "visualize": visualize}
            raw = fn(job_id, record, **_accepted_kwargs(fn, kwargs)) if fn.__name__ == "infer_record" else \
                fn(job_id, record=record, **_accepted_kwargs(fn, kwargs))
        else:
            fn = self._fn("infer_image", "infer_file", "infer")
            kwargs = {"snapshot": snapshot, "visualize": visualize}
            raw = fn(job_id, image_path, **_accepted_kwargs(fn, kwargs)) if fn.__name__ != "infer" else \
                fn(job_id, image_path=image_path, **_accepted_kwargs(fn, kwargs))
        return _inference_view(_as_dict(raw))

    def download(self, job_id, snapshot=None):
        fn = self._fn("export", "export_model", "download")
        result = fn(check_job_id(job_id), **_accepted_kwargs(fn, {"snapshot": snapshot}))
        return str(result if isinstance(result, (str, os.PathLike)) else _get(_as_dict(result), "path"))


# -- helpers that shape the service's answers for the templates ------------------------------

# The web's option names → other names a service signature may use for them.
DATASET_OPTION_ALIASES = {"name": "dataset_name", "group": "group_name", "workers": "encoder_threads",
                          "threads": "encoder_threads", "batch_size": "encoder_batch_size",
                          "backend": "db_backend"}


def _network_titles(readme: Path) -> dict:
    """File name → display name, from the table in prototxt/README.md (| title | `file` | ...)."""
    titles = {}
    if readme.is_file():
        for line in readme.read_text(errors="replace").splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 2 and cells[1].startswith("`") and cells[1].endswith(".prototxt`"):
                titles[cells[1].strip("`")] = cells[0]
    return titles


def _accepted_kwargs(fn, kwargs: dict) -> dict:
    try:
        params = _inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _open_service(module, settings):
    """Find the facade in jobs.service whatever its exact constructor is called."""
    for name in ("open_service", "get_service", "create_service"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn(settings["JOBS_DIR"])
    for name in ("JobService", "Service", "JobsService"):
        cls = getattr(module, name, None)
        if cls is not None:
            return cls(settings["JOBS_DIR"])
    return module


def _dataset_info_view(info: dict) -> dict:
    """dataset.json → the keys the dataset page reads (counts, shapes, dtypes, classes, palette)."""
    view = dict(info)
    stages = info.get("stages") if isinstance(info.get("stages"), dict) else {}
    counts = dict(info.get("counts") or info.get("entry_counts") or {})
    for stage, s in stages.items():
        if isinstance(s, dict):
            c = _get(s, "count", "entries", "entry_count")
            if c is not None:
                counts.setdefault(stage, c)
    view["counts"] = counts
    for key in ("feature_shape", "feature_dtype", "label_shape", "label_dtype"):
        if key not in view:
            alt = _get(info, key.replace("feature", "features").replace("label", "labels"))
            if alt is None:
                nested = info.get(key.split("_")[0]) or info.get(key.split("_")[0] + "s")
                if isinstance(nested, dict):
                    alt = nested.get(key.split("_")[1])
            view[key] = alt
    classes = info.get("classes") or info.get("labels") or info.get("class_names") or []
    if classes and isinstance(classes[0], dict):
        view["palette"] = view.get("palette") or [c.get("color") or c.get("colour") for c in classes]
        classes = [c.get("name") for c in classes]
    view["classes"] = classes
    return view


def _dataset_summary(info: dict) -> dict:
    counts = info.get("counts") or {}
    return {"train_count": counts.get("train"), "val_count": counts.get("val"),
            "feature_shape": info.get("feature_shape"), "feature_dtype": info.get("feature_dtype"),
            "classes": info.get("classes")}


def _record_name(rec) -> str | None:
    if isinstance(rec, str):
        return rec
    if not isinstance(rec, dict):
        return None
    if rec.get("name"):
        return str(rec["name"])
    case = _get(rec, "case", "patient", "case_name")
    image = _get(rec, "image", "image_number", "slice", "instance")
    if case is not None and image is not None:
        if isinstance(image, int):
            image = f"{image:04d}"
        return f"{case} / {Path(str(image)).stem.rsplit('-', 1)[-1]}"
    source = _get(rec, "source", "file", "image_file", "feature")
    return Path(str(source)).name if source else None


def _record_names(info: dict, stage: str) -> dict:
    """Record key (and index, as a string) → a readable name like 'SC-HF-NI-3 / 0048'."""
    raw = None
    for key in ("records", "keys", "sources", "entries"):
        block = info.get(key)
        if isinstance(block, dict) and stage in block:
            raw = block[stage]
            break
    names = {}
    if isinstance(raw, dict):
        for i, (k, rec) in enumerate(raw.items()):
            names[str(k)] = _record_name(rec)
            names.setdefault(str(i), names[str(k)])
    elif isinstance(raw, list):
        for i, rec in enumerate(raw):
            name = _record_name(rec)
            key = _get(rec, "key") if isinstance(rec, dict) else None
            names[str(i)] = name
            if key is not None:
                names[str(key)] = name
    return names


def _evaluation_view(raw):
    if not raw:
        return None
    summary = raw.get("summary") or raw.get("aggregate") or {}
    if isinstance(summary, list):
        summary = {str(_get(s, "metric", "name")): s for s in summary}
    per_record = raw.get("records") or raw.get("per_record") or []
    worst = raw.get("worst") or sorted(per_record, key=lambda r: _get(r, "dice", default=1.0))[:10]
    columns = raw.get("worst_columns") or [k for k in ("dice", "iou", "pixel_accuracy") if worst and k in worst[0]]
    return {"summary": summary, "worst": [dict(w, name=_record_name(w) or w.get("key")) for w in worst],
            "worst_columns": columns, "records": per_record}


def _inference_view(raw: dict) -> dict:
    import numpy as np
    out = dict(raw)
    out["image"] = np.asarray(_get(raw, "image", "input", "feature"))
    pred = _get(raw, "prediction", "class_map", "classes_map", "mask")
    out["prediction"] = np.asarray(pred)
    label = _get(raw, "label", "ground_truth")
    out["label"] = None if label is None else np.asarray(label)
    out["classes"] = list(_get(raw, "classes", "class_names", "labels_names", default=[]) or [])
    out["palette"] = list(_get(raw, "palette", "colors", default=[]) or [])
    metrics = _get(raw, "metrics", "stats", default={}) or {}
    out["metrics"] = {k: float(v) for k, v in _as_dict(metrics).items() if isinstance(v, (int, float))}
    layers = []
    for layer in _get(raw, "layers", "visualizations", "activations", default=[]) or []:
        layer = _as_dict(layer)
        hist = layer.get("hist") or layer.get("histogram")
        if hist is not None and not isinstance(hist, dict):
            hist = {"counts": list(hist)}
        layers.append({"name": layer.get("name"), "kind": layer.get("kind") or layer.get("type"),
                       "shape": list(layer.get("shape") or []), "mean": layer.get("mean"),
                       "std": layer.get("std"), "hist": hist})
    out["layers"] = layers
    return out
