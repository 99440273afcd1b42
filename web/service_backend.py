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

from web.backend import Backend, BadRequest, NotFound, Unavailable, running_seconds
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
        # LMDB refuses to open a database that is already open in the same process, and the
        # explorer's images are requested in parallel while the service (inference, evaluation)
        # opens the same val database: every LMDB use from this process goes through this lock.
        self._lmdb_lock = threading.RLock()

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
                    service = _open_service(module, self.settings)
                    # Single-process serve: this process also runs the queued trainings, unless a
                    # separate `caffeseg worker` does (START_WORKER false).
                    if self.settings.get("START_WORKER", True) and callable(getattr(service, "start_worker", None)):
                        service.start_worker()
                    self._service = service
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
            raise NotFound(str(exc).strip("'\"")) from None
        except (ValueError, PermissionError) as exc:
            raise BadRequest(str(exc), getattr(exc, "field_errors", None)) from None

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
            finished = status.lower() in ("done", "error", "aborted", "interrupted")
            end = _epoch(_get(d, "finished", "finished_at", "ended_at",
                              "updated_at" if finished else "__none__")) or time.time()
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
                    "group": _get(d, "group", "group_name", default="") or "",
                    "status": status.capitalize() if status.islower() else status,
                    "submitted": submitted, "elapsed": elapsed, "progress": _get(d, "progress"),
                    "metrics": metrics})
        job_dir = _get(d, "dir", "path", "job_dir", "directory")
        if job_dir is None:
            job_dir = Path(self.settings["JOBS_DIR"]) / job_id
        out["dir"] = str(job_dir)
        out["dataset_id"] = _get(d, "dataset_id", "dataset")
        out.pop("options", None) if not isinstance(out.get("options"), dict) else None
        return out

    # -- listing and lifecycle ----------------------------------------------------------------
    def jobs(self, kind=None):
        fn = self._fn("list_jobs", "jobs", "list")
        try:
            raw = fn(kind=kind) if kind and "kind" in _inspect.signature(fn).parameters else fn()
        except (TypeError, ValueError):
            raw = fn()
        jobs = [self._summary(j) for j in raw]
        jobs = [j for j in jobs if kind is None or j["kind"] == kind]
        for job in jobs:
            if job["kind"] == "dataset" and job["status"].lower() == "running" and job["progress"] is None:
                from jobs.service import build_progress  # the service's own reading (list_jobs has none)
                job["progress"] = build_progress(job["dir"])
            if job["kind"] == "dataset" and "summary" not in job:
                job["summary"] = _dataset_summary(_dataset_info_view(_read_json(Path(job["dir"]) / "dataset.json")))
            if job["kind"] == "model" and not job["metrics"]:
                job["metrics"] = self._key_metrics(job)
                job["progress"] = job["progress"] if job["progress"] is not None else _runner_progress(job["dir"])
            if job["kind"] == "model":
                job["elapsed"] = running_seconds(self._history(job["id"]), job["status"], job["elapsed"])
        return jobs

    def _history(self, job_id) -> list[dict]:
        """The job's status history from the store (the listing carries none)."""
        store = getattr(self.service, "store", None)
        try:
            return [_history_entry(h) for h in store.history(job_id)] if store is not None else []
        except Exception:  # noqa: BLE001 - a listing must not fail on one job's history
            return []

    def _key_metrics(self, job) -> dict:
        """last/min/max and a sparkline of the validation outputs and the training loss."""
        try:
            series = self._series(job["id"], 0)[0]
        except (Unavailable, NotFound, BadRequest):
            return {}
        out = {}
        for name, points in series.items():
            if not points or not (name.startswith("val/") or name == "train/loss"):
                continue
            values = [p[1] for p in points]
            step = max(1, len(values) // 60)
            out[name] = {"last": values[-1], "min": min(values), "max": max(values), "spark": values[::step]}
        return out

    def job(self, job_id):
        check_job_id(job_id)
        raw = self._call(("show", "get_job", "job", "show_job"), job_id)
        if raw is None:
            raise NotFound(f"job {job_id} does not exist")
        job = self._summary(raw)
        job_dir = Path(job["dir"])
        job["files"] = list_job_files(job_dir)
        job["size"] = job.get("size") or _dir_size(job_dir)
        job["history"] = [_history_entry(h) for h in (_get(job, "history", "status_history", default=[]) or [])]
        if job["kind"] == "model":
            job["elapsed"] = running_seconds(job["history"], job["status"], job["elapsed"])
        if job.get("log") is None:
            job["log"] = self._read_log(job_dir)
        if job["kind"] == "dataset":
            info = job.get("info")
            if not info and (job_dir / "dataset.json").is_file():
                try:
                    info = json.loads((job_dir / "dataset.json").read_text())
                except ValueError:
                    info = {}
            job["info"] = _dataset_info_view(info or {})
            job["summary"] = _dataset_summary(job["info"])
            job["plugin"] = (job.get("options") or {}).get("plugin")  # progress: from the service's show
        if job["kind"] == "model":
            job["iters_per_epoch"] = _iters_per_epoch(job_dir) or job.get("iters_per_epoch")
            status = _read_json(job_dir / "runner_status.json")
            if job.get("progress") is None and status.get("max_iter"):
                job["progress"] = float(status.get("iter") or 0) / float(status["max_iter"])
            job["eta"] = job.get("eta") or status.get("eta")
            if job["status"].lower() == "running" and job.get("eta") is None:
                job["eta"] = self._last_value(job_id, "eta")
            job["snapshots"] = self._snapshots(job, job_dir)
            if job.get("dataset_id"):
                try:
                    job["dataset_name"] = self._summary(self._call(("show", "get_job", "job"), job["dataset_id"]))["name"]
                except (NotFound, BadRequest, Unavailable):  # the dataset may have been deleted
                    job["dataset_name"] = None
        return job

    def _last_value(self, job_id, name):
        try:
            extra = self._series(job_id, 0)[1]
        except (Unavailable, NotFound, BadRequest):
            return None
        values = extra.get(name) or []
        return values[-1][1] if values else None

    @staticmethod
    def _read_log(job_dir: Path) -> str | None:
        for name in ("log.txt", "build.log", "job.log", "train.log", "caffe_output.log", "create.log", "dataset.log"):
            path = job_dir / name
            if path.is_file():
                text = path.read_text(errors="replace")
                return text[-200000:]
        return None

    def snapshots(self, job):
        """A model's snapshots from its listing entry, without the rest of ``job()`` (the New
        Model form lists those of every previous model)."""
        job_dir = Path(job["dir"])
        return self._snapshots(dict(job, iters_per_epoch=_iters_per_epoch(job_dir)), job_dir)

    @staticmethod
    def _snapshots(job: dict, job_dir: Path) -> list[dict]:
        raw = job.get("snapshots")
        ipe = job.get("iters_per_epoch")
        entries = []
        if raw:
            for s in raw:
                if isinstance(s, (list, tuple)):  # (iteration, file name)
                    entries.append((int(s[0]), str(s[1]) if len(s) > 1 else f"snapshot_iter_{int(s[0])}.caffemodel"))
                elif isinstance(s, (int, float)):
                    entries.append((int(s), f"snapshot_iter_{int(s)}.caffemodel"))
                else:
                    s = _as_dict(s)
                    it = int(_get(s, "iteration", "iter"))
                    entries.append((it, str(_get(s, "file", "path", default=f"snapshot_iter_{it}.caffemodel"))))
        else:
            for path in job_dir.glob("*_iter_*.caffemodel"):
                try:
                    entries.append((int(path.stem.rsplit("_", 1)[1]), path.name))
                except ValueError:
                    continue
        out = []
        for it, file in sorted(entries):
            name = Path(file).name
            path = job_dir / name
            out.append({"iteration": it, "epoch": (it / ipe) if ipe else None, "file": name,
                        "size": path.stat().st_size if path.is_file() else None})
        return out

    def _series(self, job_id, since):
        """The service's metric rows grouped into named series, plus the bookkeeping series."""
        raw = self._call(("metrics", "metric_series", "get_metrics", "metrics_since"), job_id, since)
        raw = _as_dict(raw) if not isinstance(raw, list) else {"series": raw}
        series = raw.get("series", {})
        extra: dict[str, list] = {}
        if isinstance(series, list):  # rows: (iteration, name, value, phase) or dicts
            grouped: dict[str, list] = {}
            for row in series:
                r = _as_dict(row) if not isinstance(row, (list, tuple)) else dict(zip(("iteration", "name", "value", "phase"), row))
                name = str(_get(r, "name", "series", "key"))
                phase = _get(r, "phase", "stage")
                point = [int(_get(r, "iteration", "iter")), _get(r, "value")]
                if not phase and name in BOOKKEEPING_SERIES:
                    extra.setdefault(name, []).append(point)
                    continue
                if phase and "/" not in name and name != "lr":
                    name = f"{phase}/{name}"
                grouped.setdefault(name, []).append(point)
            series = grouped
        clean = {name: [[int(p[0]), float(p[1])] for p in pts if int(p[0]) >= since and p[1] is not None]
                 for name, pts in series.items()}
        return clean, extra, {k: v for k, v in raw.items() if k != "series"}

    def metrics(self, job_id, since=0):
        check_job_id(job_id)
        series, extra, out = self._series(job_id, since)
        out["series"] = series
        epochs = [p for p in extra.get("epoch", []) if p[1]]
        if epochs and not out.get("iters_per_epoch"):
            out["iters_per_epoch"] = epochs[-1][0] / float(epochs[-1][1])
        if extra.get("eta") and out.get("eta") is None:
            out["eta"] = extra["eta"][-1][1]  # dropped below unless the job is running
        if extra.get("throughput"):
            out["throughput"] = extra["throughput"][-1][1]
        if out.get("iters_per_epoch") is None or "status" not in out:
            try:
                job = self.job(job_id)
                out.setdefault("status", job["status"])
                out.setdefault("progress", job.get("progress"))
                if out.get("iters_per_epoch") is None:
                    out["iters_per_epoch"] = job.get("iters_per_epoch")
            except (Unavailable, NotFound):
                pass
        if str(out.get("status") or "").lower() != "running":
            out["eta"] = None  # a finished, aborted or waiting job has no time left to show
        return out

    def abort(self, job_id):
        self._call(("abort", "abort_job"), check_job_id(job_id))

    def delete(self, job_id):
        check_job_id(job_id)
        self._call(("delete", "delete_job"), job_id)

    def resume(self, job_id):
        self._call(("resume", "resume_job"), check_job_id(job_id))

    def clone(self, job_id):
        raw = self._call(("clone_values", "clone_options"), check_job_id(job_id))
        values = _as_dict(raw)
        kind = self._summary(self._call(("show", "get_job", "job"), job_id))["kind"]
        if kind == "dataset":
            return {"plugin": values.get("plugin"), "values": values.get("values") or {},
                    "options": {"dataset_name": values.get("name"), "group_name": values.get("group_name")}}
        return model_form_values(values)

    # -- creation ---------------------------------------------------------------------------
    def create_dataset(self, plugin_id, values, options):
        """Queue the build with the jobs service and return the new job's id at once.

        The service checks the plugin's form values first (errors go beside the fields) and
        records the job as Waiting; its worker builds it, writing progress and log to the job."""
        kwargs = {"name": options.get("dataset_name") or "dataset", "group_name": options.get("group_name") or None,
                  "encoding": options.get("encoding") or "none", "workers": options.get("encoder_threads") or 1}
        kwargs.update(_builder_extras(options))
        job = self._call(("submit_dataset",), plugin_id, dict(values), **kwargs)
        return job if isinstance(job, str) else str(_get(_as_dict(job), "id", "job_id"))

    def create_model(self, options):
        service_options, staged = service_model_options(options, self.settings)
        try:
            result = self._call(("create_model", "create_models"), service_options)
        finally:
            if staged is not None:
                import shutil
                shutil.rmtree(staged, ignore_errors=True)
        jobs = [result] if isinstance(result, (str, dict)) else list(result)
        ids = [j if isinstance(j, str) else str(_get(_as_dict(j), "id", "job_id")) for j in jobs]
        submit = getattr(self.service, "submit", None)
        if callable(submit):
            for job_id in ids:
                submit(job_id)
        return ids

    # -- datasets (read from the files the dataset builder writes) ---------------------------
    def _dataset_dir(self, job_id) -> Path:
        job = self.job(job_id)
        if job["kind"] != "dataset":
            raise NotFound(f"job {job_id} is not a dataset")
        return Path(job["dir"]), job

    def _read(self, db_path: Path, fn):
        """``fn(reader)`` on a freshly opened reader of ``db_path``, under the LMDB lock."""
        try:
            from engine.lmdb_io import LmdbReader
        except ImportError as exc:
            raise Unavailable(f"LMDB reading is not available ({exc})") from None
        with self._lmdb_lock:
            with LmdbReader(str(db_path)) as reader:
                return fn(reader)

    def _keys(self, db_path: Path) -> list[str]:
        key = (str(db_path), db_path.stat().st_mtime if db_path.exists() else 0)
        if key not in self._key_cache:
            self._key_cache[key] = self._read(db_path, lambda r: list(r.keys()))
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
            raw = self._read(path, lambda r: r.get(keys[index]))
            array, _ = bytes_to_array(raw, f"{path} key {keys[index]}")
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
                out.append({"name": path.stem, "title": titles.get(path.name, path.stem.replace("_", " ")),
                            "description": _network_description(text), "text": text})
        return out

    def pretrained_models(self):
        """The known public models (jobs.pretrained) with the network each starts and whether its
        weights are made, plus the models users uploaded (web.pretrained_store)."""
        from web import pretrained_store
        return pretrained_store.catalogue(self.settings["DATA_DIR"])

    def pretrained_network(self, pretrained_id, dataset_id):
        from web import pretrained_store
        shape = self._dataset_shape(dataset_id)
        return pretrained_store.resolve(self.settings["DATA_DIR"], pretrained_id, shape[0] if shape else None)

    def upload_pretrained(self, name, prototxt, weights, description=""):
        from web import pretrained_store
        return pretrained_store.save_upload(self.settings["DATA_DIR"], name, prototxt, weights, description)

    def delete_pretrained(self, pretrained_id):
        from web import pretrained_store
        pretrained_store.delete_upload(self.settings["DATA_DIR"], pretrained_id)

    def prepare_pretrained(self, name, gray):
        from web import pretrained_store
        mirror = (self.settings.get("PRETRAINED_MIRRORS") or {}).get(name)
        return pretrained_store.prepare_known(self.settings["DATA_DIR"], name, gray, mirror)

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
        try:
            with self._lmdb_lock:
                raw = self._infer_call(job_id, snapshot, record, image_path, visualize)
        except (Unavailable, NotFound, BadRequest):
            raise
        except LookupError as exc:
            raise NotFound(str(exc).strip("'\"")) from None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        result = _inference_view(_as_dict(raw))
        return self._with_dataset_facts(job_id, result)

    def _infer_call(self, job_id, snapshot, record, image_path, visualize):
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
        return raw

    def _with_dataset_facts(self, job_id, result):
        if not result["palette"] or not result["classes"]:
            try:
                info = self.job(self.job(job_id).get("dataset_id")).get("info") or {}
                result["palette"] = result["palette"] or list(info.get("palette") or [])
                result["classes"] = result["classes"] or list(info.get("classes") or [])
            except (NotFound, BadRequest, Unavailable, TypeError):
                pass
        snap = result.get("snapshot")
        if isinstance(snap, str) and "_iter_" in snap:
            try:
                result["snapshot"] = int(snap.rsplit("_iter_", 1)[1].split(".")[0])
            except ValueError:
                pass
        return result

    def evaluate(self, job_id):
        with self._lmdb_lock:
            return _evaluation_view(_as_dict(self._call(("evaluate",), check_job_id(job_id))))

    def download(self, job_id, snapshot=None):
        fn = self._fn("export", "export_model", "download")
        # through _call: "no snapshot yet" is the user's 400, not a server error
        result = self._call(("export", "export_model", "download"), check_job_id(job_id),
                            **_accepted_kwargs(fn, {"snapshot": snapshot}))
        return str(result if isinstance(result, (str, os.PathLike)) else _get(_as_dict(result), "path"))


# -- helpers that shape the service's answers for the templates ------------------------------

BOOKKEEPING_SERIES = ("epoch", "eta", "throughput")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _runner_progress(job_dir) -> float | None:
    status = _read_json(Path(job_dir) / "runner_status.json")
    if status.get("max_iter"):
        return float(status.get("iter") or 0) / float(status["max_iter"])
    return None


def _iters_per_epoch(job_dir: Path):
    facts = _read_json(job_dir / "job.json")
    if facts.get("max_iter") and facts.get("epochs"):
        return float(facts["max_iter"]) / float(facts["epochs"])
    return None


def _history_entry(h) -> dict:
    if isinstance(h, (list, tuple)):
        h = {"status": h[0], "time": h[1] if len(h) > 1 else None}
    h = _as_dict(h)
    return {"status": _get(h, "status", "state"), "time": _epoch(_get(h, "time", "timestamp", "at"))}


def _builder_extras(options: dict) -> dict:
    """Generic dataset options the plugin's builder accepts by name (e.g. enforce_same_shape)."""
    try:
        from jobs.dataset import build_dataset
        params = _inspect.signature(build_dataset).parameters
    except Exception:  # the builder is someone else's module; without it nothing extra is passed
        return {}
    out = {}
    for key in ("enforce_same_shape", "encoder_batch_size", "batch_size"):
        source = "encoder_batch_size" if key == "batch_size" else key
        if key in params and options.get(source) is not None:
            out[key] = options[source]
    return out


MEAN_CHOICES = ("none", "image", "pixel")


def service_model_options(form: dict, settings: dict) -> tuple[dict, Path | None]:
    """The model form's values → the option names of ``jobs.service.create_model``.

    Returns the options and a staging folder holding an uploaded Python layer file (the service
    copies it into the job folder; the caller removes the staging folder afterwards)."""
    opts = {
        "dataset_id": form.get("dataset"),
        "name": form.get("model_name"),
        "group_name": form.get("group_name") or None,
        "epochs": form.get("epochs"),
        "snapshot_interval": form.get("snapshot_interval"),
        "val_interval": form.get("val_interval"),
        "random_seed": form.get("random_seed"),
        "iter_size": form.get("batch_accumulation") or 1,
        "solver_type": form.get("solver_type") or "SGD",
        "weight_decay": form.get("weight_decay"),
        "base_lr": ",".join(str(v) for v in form.get("base_lr") or [0.01]),
        "batch_size": ",".join(str(v) for v in form.get("batch_size") or []) or None,
        "mean": form.get("mean_subtraction") if form.get("mean_subtraction") in MEAN_CHOICES else "none",
        "crop_size": form.get("crop_size"),
        "lr_policy": _lr_policy(form),
        "backend": form.get("backend") or None,  # recorded on the job: only a worker for it takes it
    }
    source = form.get("network_source") or "standard"
    if source == "custom":
        opts["network_text"] = form.get("custom_network")
    elif source == "previous":
        opts["previous_job_id"] = form.get("previous_network")
        job_id, _, iteration = str(form.get("previous_snapshot") or "").partition(":")
        if job_id and iteration.isdigit():  # start from that snapshot's weights (checked by the form)
            opts["pretrained_job_id"], opts["pretrained_snapshot"] = job_id, int(iteration)
    elif source == "pretrained":  # the views resolve it first (web.pretrained_store.with_network)
        raise BadRequest("choose a pretrained network", {"pretrained_network": "choose a pretrained network"})
    else:
        opts["standard_network"] = form.get("standard_network")
    if form.get("pretrained_model"):
        opts["pretrained"] = list(form["pretrained_model"])
    if form.get("pretrained_network_id"):
        # Remembered for Clone (the Pretrained tab comes back selected); the runner ignores them.
        opts["pretrained_network"] = form["pretrained_network_id"]
        opts["pretrained_network_weights"] = form.get("pretrained_network_weights")
    files = [form["python_layer_server_file"]] if form.get("python_layer_server_file") else []
    staged = None
    upload = form.get("python_layer_upload")
    if upload:
        from werkzeug.utils import secure_filename
        import secrets
        staged = Path(settings["JOBS_DIR"]) / ".uploads" / secrets.token_hex(8)
        staged.mkdir(parents=True, exist_ok=True)
        target = staged / (secure_filename(upload["filename"]) or "python_layer.py")
        target.write_bytes(upload["content"])
        files.append(str(target))
    if files:
        opts["python_layer_files"] = files
    return {k: v for k, v in opts.items() if v is not None}, staged


def _lr_policy(form: dict) -> dict:
    policy = form.get("lr_policy") or "fixed"
    out = {"policy": policy}
    if policy in ("step", "sigmoid") and form.get("lr_step_size") is not None:
        out["stepsize"] = form["lr_step_size"]
    if policy == "multistep" and form.get("lr_step_values"):
        out["stepvalue"] = ",".join(str(v) for v in form["lr_step_values"])
    if policy in ("step", "multistep", "exp", "inv", "sigmoid") and form.get("lr_gamma") is not None:
        out["gamma"] = form["lr_gamma"]
    if policy in ("inv", "poly") and form.get("lr_power") is not None:
        out["power"] = form["lr_power"]
    return out


def model_form_values(values: dict) -> dict:
    """``jobs.service.clone_values`` of a model → the new-model form's field names."""
    policy = values.get("lr_policy") if isinstance(values.get("lr_policy"), dict) else {"policy": values.get("lr_policy") or "fixed"}
    out = {
        "dataset": values.get("dataset_id"), "model_name": values.get("name"),
        "group_name": values.get("group_name"), "epochs": values.get("epochs"),
        "snapshot_interval": values.get("snapshot_interval"), "val_interval": values.get("val_interval"),
        "random_seed": values.get("random_seed"), "batch_accumulation": values.get("iter_size"),
        "solver_type": values.get("solver_type"), "weight_decay": values.get("weight_decay"),
        "base_lr": values.get("base_lr"), "batch_size": values.get("batch_size"),
        "mean_subtraction": values.get("mean"), "crop_size": values.get("crop_size"),
        "lr_policy": policy.get("policy"), "lr_step_size": policy.get("stepsize"),
        "lr_gamma": policy.get("gamma"), "lr_power": policy.get("power"),
        "lr_step_values": policy.get("stepvalue"), "pretrained_model": values.get("pretrained"),
        "backend": values.get("backend"),
    }
    if values.get("pretrained_network"):
        out["network_source"], out["pretrained_network"] = "pretrained", values["pretrained_network"]
        weights = values.get("pretrained") or []
        rest = [p for p in ([weights] if isinstance(weights, str) else weights)
                if p != values.get("pretrained_network_weights")]
        out["pretrained_model"] = rest or None
    elif values.get("network_text"):
        out["network_source"], out["custom_network"] = "custom", values["network_text"]
    elif values.get("standard_network"):
        out["network_source"], out["standard_network"] = "standard", values["standard_network"]
    files = values.get("python_layer_files") or []
    if files:
        out["python_layer_server_file"] = files[0] if isinstance(files, list) else files
    return {k: v for k, v in out.items() if v is not None}


# The web's option names → other names a service signature may use for them.
DATASET_OPTION_ALIASES = {"name": "dataset_name", "group": "group_name", "workers": "encoder_threads",
                          "threads": "encoder_threads", "batch_size": "encoder_batch_size",
                          "backend": "db_backend"}


def _network_description(text: str) -> str:
    """The first paragraph of a network's header comment (prototxt/README.md: the '#' lines up to
    an empty '#' line or the shared "DIGITS-style description" note), as one line."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            line = line.lstrip("#").strip()
            if line and not line.startswith("DIGITS-style description"):
                lines.append(line)
                continue
        elif not lines and (not line.strip() or line.lstrip().startswith("name:")):
            continue  # the net's name (or blank lines) before its header
        if lines or not line.startswith("#"):
            break
    return " ".join(lines)


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
    image = _get(rec, "image_no", "image", "image_number", "slice", "instance")
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
            hist = {"counts": list(hist), "edges": list(layer.get("edges") or [])}
        layers.append({"name": layer.get("name"), "kind": layer.get("kind") or layer.get("type"),
                       "shape": list(layer.get("shape") or []), "mean": layer.get("mean"),
                       "std": layer.get("std"), "hist": hist})
    out["layers"] = layers
    return out
