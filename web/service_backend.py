"""``Backend`` on ``jobs.service.JobService`` (the facade the CLI also uses).

Each method calls the one service method that answers it and shapes the answer for the
templates (``web.backend`` documents the shapes). The service's errors map onto the web's:
``KeyError`` → NotFound, ``ValueError`` (``ServiceError``, ``DatasetError``, a bad job id) →
BadRequest.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from caffeseg.jobs import networks
from caffeseg.jobs.dataset import DatasetError, record_name
from caffeseg.jobs.service import JobService, NotOwner
from caffeseg.web import job_options, pretrained_store
from caffeseg.web.backend import BadRequest, Forbidden, NotFound, running_seconds
from caffeseg.web.netinspect import inspect
from caffeseg.web.users import current_user
from caffeseg.web.safety import check_job_id

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


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed meanwhile (a running job's)
                total += (Path(root) / name).stat().st_size
    return total


@contextlib.contextmanager
def _service_errors():
    """The service's exceptions as the web's (the views turn those into 400/404 pages)."""
    try:
        yield
    except KeyError as exc:
        raise NotFound(str(exc).strip("'\"")) from None
    except NotOwner as exc:  # a ServiceError: before the ValueError branch
        raise Forbidden(str(exc)) from None
    except ValueError as exc:
        err = BadRequest(str(exc), getattr(exc, "field_errors", None))
        for place in ("line", "column"):  # a network's syntax error: where, for the JSON error
            if getattr(exc, place, None) is not None:
                setattr(err, place, getattr(exc, place))
        raise err from None


def dataset_view(info) -> dict:
    """A ``jobs.dataset.DatasetInfo`` as the dataset page and the model form read it."""
    if info is None:
        return {"counts": {}, "classes": [], "palette": [], "form_values": {}}
    return {"counts": info.counts, "feature_shape": info.feature_shape, "feature_dtype": info.feature_dtype,
            "label_shape": info.label_shape, "label_dtype": info.label_dtype, "classes": info.classes,
            "palette": info.palette, "form_values": info.form_values,
            "split": info.info.get("split") or {},  # by slice|patient, val_cases, cases_in_both
            "skipped": list(info.info.get("skipped") or [])}  # [{file, message}]: records left out, why


def _dataset_summary(view: dict) -> dict:
    return {"train_count": view["counts"].get("train"), "val_count": view["counts"].get("val"),
            "feature_shape": view.get("feature_shape"), "feature_dtype": view.get("feature_dtype"),
            "classes": view["classes"]}


def _series(rows, since=0) -> tuple[dict, dict]:
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


def _key_metrics(series: dict) -> dict:
    """last/min/max and a sparkline of every output the job records (train/<name>, val/<name>),
    as DIGITS' model table (the home page shows the validation outputs and the training loss
    first; its column chooser shows the others)."""
    out = {}
    for name, points in series.items():
        if name.startswith(("val/", "train/")):
            values = [p[1] for p in points if p[1] is not None]
            if not values:
                continue
            step = max(1, len(values) // SPARK_POINTS)
            out[name] = {"last": values[-1], "min": min(values), "max": max(values), "spark": values[::step]}
    return out


def _snapshot_entries(snapshots, job_dir: Path, per_epoch) -> list[dict]:
    return [{"iteration": it, "epoch": it / per_epoch if per_epoch else None, "file": name,
             "size": (job_dir / name).stat().st_size if (job_dir / name).is_file() else None}
            for it, name in snapshots]


class ServiceBackend:
    """``web.backend.Backend`` on a ``JobService`` over ``settings["JOBS_DIR"]`` (or ``service``).
    With ``START_WORKER`` (default) this process also runs the queued jobs (single-process serve)."""

    def __init__(self, settings: dict, service: JobService | None = None):
        self.settings = settings
        self.service = service if service is not None else JobService(settings["JOBS_DIR"])
        if service is None and settings.get("START_WORKER", True):
            self.service.start_worker()

    # -- listing and lifecycle ----------------------------------------------------------------
    def _summary(self, job: dict) -> dict:
        """A ``show`` answer as a listing entry."""
        history = [{"status": status, "time": at} for status, at in job["history"]]
        if job["kind"] == "model":
            elapsed = running_seconds(history, job["status"])
        else:
            end = job["updated_at"] if job["status"] not in ("Initialized", "Waiting", "Running") else time.time()
            elapsed = max(0.0, end - job["created_at"])
        out = dict(job, group=job["group_name"] or "", submitted=job["created_at"], elapsed=elapsed,
                   history=history, metrics={})
        if job["kind"] == "model":
            with _service_errors():
                out["metrics"] = _key_metrics(_series(self.service.metrics(job["id"])["series"])[0])
        else:
            out["info"] = dataset_view(self._dataset_info(job["id"]))
            out["summary"] = _dataset_summary(out["info"])
            out["plugin"] = job["options"].get("plugin")
        return out

    def _dataset_info(self, job_id):
        try:
            return self.service.dataset_info(job_id)
        except DatasetError:  # an unreadable dataset.json: the page shows the job without its facts
            return None

    def _show(self, job_id) -> dict:
        with _service_errors():
            return self.service.show(check_job_id(job_id))

    def jobs(self, kind=None):
        return [self._summary(self._show(j["id"])) for j in self.service.list_jobs(kind)]

    def job(self, job_id):
        job = self._summary(self._show(job_id))
        job_dir = Path(job["dir"])
        job["files"] = list_job_files(job_dir)
        job["size"] = _dir_size(job_dir)
        log = self.service.log(job_id)
        job["log"] = log[-LOG_LIMIT:] if log is not None else None
        if job["kind"] == "model":
            job["snapshots"] = _snapshot_entries(job["snapshots"], job_dir, job["iters_per_epoch"])
            try:
                job["dataset_name"] = self.service.show(job["dataset_id"])["name"]
            except KeyError:  # the dataset was deleted
                job["dataset_name"] = None
        return job

    def snapshots(self, job):
        """A model's snapshots from its listing entry, without the rest of ``job()`` (the New
        Model form lists those of every previous model)."""
        with _service_errors():
            return _snapshot_entries(self.service.snapshots(job["id"]), Path(job["dir"]), job.get("iters_per_epoch"))

    def metrics(self, job_id, since=0):
        with _service_errors():
            raw = self.service.metrics(check_job_id(job_id), since)
        series, bookkeeping = _series(raw["series"], since)
        throughput = bookkeeping.get("throughput")
        return {"status": raw["status"], "progress": raw["progress"], "eta": raw["eta"],
                "iters_per_epoch": raw["iters_per_epoch"], "series": series,
                "throughput": throughput[-1][1] if throughput else None}

    def abort(self, job_id):
        with _service_errors():
            self.service.abort(check_job_id(job_id), user=current_user())

    def delete(self, job_id):
        with _service_errors():
            self.service.delete(check_job_id(job_id), user=current_user())

    def resume(self, job_id):
        with _service_errors():
            self.service.resume(check_job_id(job_id))

    def clone(self, job_id):
        job = self._show(job_id)
        with _service_errors():
            values = self.service.clone_values(job_id)
        if job["kind"] == "dataset":
            return job_options.dataset_form_values(values, job)
        return job_options.model_form_values(values)

    def worker_takes(self, job):
        return self.service.scheduler.takes(job)

    def worker_backends(self):
        return self.service.scheduler.runnable()

    # -- creation ---------------------------------------------------------------------------
    def create_dataset(self, plugin_id, values, options):
        """Queue the build with the jobs service and return the new job's id at once (its worker
        builds it; the plugin's form checks run first, errors go beside the fields)."""
        with _service_errors():
            job = self.service.submit_dataset(plugin_id, dict(values), owner=current_user(),
                                              **job_options.dataset_build_options(options))
        return job["id"]

    def create_model(self, options):
        service_options, staged = job_options.service_model_options(options, self.settings["JOBS_DIR"])
        try:
            with _service_errors():
                jobs = self.service.create_model(service_options, owner=current_user())
        finally:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
        for job in jobs:
            self.service.submit(job["id"])
        return [job["id"] for job in jobs]

    # -- datasets (the records of the LMDBs the builder wrote) ------------------------------------
    def dataset_records(self, job_id, stage, offset, limit):
        with _service_errors():
            keys = self.service.dataset_keys(check_job_id(job_id), stage)
        info = self._dataset_info(job_id)
        names = info.record_names(stage) if info is not None else {}
        recs = [{"index": i, "key": k, "name": names.get(k)}
                for i, k in enumerate(keys[offset:offset + limit], start=offset)]
        return {"total": len(keys), "records": recs}

    def dataset_record(self, job_id, stage, index):
        with _service_errors():
            keys = self.service.dataset_keys(check_job_id(job_id), stage)
            if not 0 <= index < len(keys):
                raise NotFound(f"no record {index} in the {stage} set")
            feature, label = self.service.dataset_record(job_id, stage, keys[index])
        info = self._dataset_info(job_id)
        return feature, label, {"palette": info.palette if info is not None else None}

    def _dataset_shape(self, dataset_id):
        if not dataset_id:
            return None
        try:
            info = self._dataset_info(check_job_id(dataset_id))
        except (KeyError, ValueError):  # an unknown dataset only loses the shape hint
            return None
        return list(info.feature_shape) if info is not None else None

    # -- networks ---------------------------------------------------------------------------
    def standard_networks(self):
        return networks.standard_networks()

    def pretrained_models(self):
        return pretrained_store.catalogue(self.settings["DATA_DIR"])

    def epoch_costs(self):
        with _service_errors():
            return self.service.epoch_costs()

    def cost_estimate(self, network, dataset_id):
        with _service_errors():
            return self.service.cost_estimate(network, check_job_id(dataset_id))

    def gpu_summary(self):
        with _service_errors():
            return self.service.gpu_summary()

    def hardware(self, job_id):
        with _service_errors():
            return self.service.hardware(job_id)

    def pretrained_network(self, pretrained_id, dataset_id):
        shape = self._dataset_shape(dataset_id)
        return pretrained_store.resolve(self.settings["DATA_DIR"], pretrained_id, shape[0] if shape else None)

    def upload_pretrained(self, name, prototxt, weights, description="", fields=None):
        return pretrained_store.save_upload(self.settings["DATA_DIR"], name, prototxt, weights, description, fields)

    def delete_pretrained(self, pretrained_id):
        pretrained_store.delete_upload(self.settings["DATA_DIR"], pretrained_id)

    def prepare_pretrained(self, name, gray):
        mirror = (self.settings.get("PRETRAINED_MIRRORS") or {}).get(name)
        return pretrained_store.prepare_known(self.settings["DATA_DIR"], name, gray, mirror)

    def inspect_network(self, text, dataset_id=None):
        return inspect(text, self._dataset_shape(dataset_id))

    # -- evaluation / inference ---------------------------------------------------------------
    def evaluation(self, job_id):
        with _service_errors():
            return _evaluation_view(self.service.evaluation(check_job_id(job_id)))

    def evaluate(self, job_id):
        with _service_errors():
            return _evaluation_view(self.service.evaluate(check_job_id(job_id)))

    def clinical_export(self, job_id, fmt, *, case=None, record=None):
        with _service_errors():
            return self.service.clinical_export(check_job_id(job_id), fmt, case=case, record=record)

    def infer_series(self, job_id, path):
        with _service_errors():
            return self.service.infer_series(check_job_id(job_id), path)

    def infer(self, job_id, snapshot, *, record=None, image_path=None, visualize=False):
        job = self._show(job_id)
        with _service_errors():
            if record is not None:
                raw = self.service.infer_record(job_id, record, snapshot=snapshot, visualize=visualize)
            else:
                raw = self.service.infer_image(job_id, image_path, snapshot=snapshot, visualize=visualize)
        info = self._dataset_info(job["dataset_id"]) if job.get("dataset_id") else None
        return _inference_view(raw, info)

    def download(self, job_id, snapshot=None, fmt="tar.gz"):
        with _service_errors():  # "no snapshot yet" is the user's 400, not a server error
            return str(self.service.export(check_job_id(job_id), snapshot=snapshot, fmt=fmt))

    def download_stream(self, job_id, snapshot=None, fmt="tar.gz"):
        with _service_errors():
            return self.service.export_stream(check_job_id(job_id), snapshot=snapshot, fmt=fmt)

    # -- DIGITS parity (issue 18) -------------------------------------------------------------
    def edit_job(self, job_id, fields):
        changes = {("group_name" if k == "group" else k): v for k, v in fields.items()
                   if k in ("name", "notes", "group")}
        with _service_errors():
            self.service.edit(check_job_id(job_id), user=current_user(), **changes)
        return self._summary(self._show(job_id))

    def bulk_jobs(self, action, job_ids, group=None):
        with _service_errors():
            return self.service.bulk(action, list(job_ids), user=current_user(), group_name=group)

    def job_details(self, job_id):
        with _service_errors():
            return self.service.details(check_job_id(job_id),
                                        pretrained_dir=str(pretrained_store.folder(self.settings["DATA_DIR"])))

    def server_info(self):
        from caffeseg.jobs.server_info import server_info
        return server_info(self.service, check_caffe=False)

    def make_pretrained(self, job_id, snapshot=None, name=None):
        with _service_errors():
            return self.service.make_pretrained(check_job_id(job_id), str(pretrained_store.folder(self.settings["DATA_DIR"])),
                                                snapshot=snapshot, name=name, owner=current_user())

    def upload_pretrained_archive(self, archive, name=None):
        return pretrained_store.save_archive(self.settings["DATA_DIR"], archive, name)

    def pretrained_layers(self, pretrained_id):
        return pretrained_store.layers(self.settings["DATA_DIR"], pretrained_id)

    def pretrained_layer_image(self, pretrained_id, layer):
        return pretrained_store.layer_image(self.settings["DATA_DIR"], pretrained_id, layer)

    def test_many(self, job_id, source, options):
        allowed = {"folder", "list_file", "paths", "zip_path", "dataset_stage"}
        if len([k for k, v in source.items() if v]) != 1 or not set(source) <= allowed:
            raise BadRequest("give exactly one source: %s" % ", ".join(sorted(allowed)))
        resize = options.get("resize")
        # uploaded images are staged by the view in test_upload_dir(), the only place besides the
        # data roots a request may read
        roots = list(self.settings["DATA_ROOTS"]) + [self.test_upload_dir()]
        with _service_errors():
            return self.service.test_many(check_job_id(job_id), snapshot=options.get("snapshot"),
                                          probabilities=bool(options.get("probabilities")),
                                          resize=tuple(int(v) for v in resize) if resize else None,
                                          roots=roots, wait=False, **source)

    def test_upload_dir(self):
        """Where the Test Many page stages uploaded images (inside DATA_DIR)."""
        path = os.path.join(self.settings["DATA_DIR"], "test-uploads")
        os.makedirs(path, exist_ok=True)
        return path

    def test_many_status(self, job_id, test_id):
        with _service_errors():
            return self.service.test_many_status(check_job_id(job_id), str(test_id))


def _evaluation_view(table):
    """The service's evaluation table with each worst record's name and the columns to show."""
    if not table:
        return None
    worst = [dict(w, name=record_name(w)) for w in table["worst"]]
    columns = [k for k in EVALUATION_COLUMNS if worst and k in worst[0]]
    # every record named, and the clinical part (docs/CLINICAL.md) for the evaluation page
    records = [dict(r, name=record_name(r)) for r in table["records"]]
    return {"summary": table["summary"], "worst": worst, "worst_columns": columns, "records": records,
            "clinical": table.get("clinical"), "snapshot": table.get("snapshot"), "stage": table.get("stage")}


def _inference_view(raw: dict, info) -> dict:
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
