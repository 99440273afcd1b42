"""``Backend`` on ``jobs.service.JobService`` (the facade the CLI also uses).

Each method calls the one service method that answers it; ``web.backend_shapes`` turns the
answer into the shape ``web.backend`` documents. The service's errors map onto the web's:
``KeyError`` → NotFound, ``ValueError`` (``ServiceError``, ``DatasetError``, a bad job id) →
BadRequest.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from caffeseg.jobs import networks
from caffeseg.jobs.dataset import DatasetError
from caffeseg.jobs.job_details import folder_size
from caffeseg.jobs.service import JobService, NotOwner
from caffeseg.web import backend_shapes as shapes, job_options, pretrained_store
from caffeseg.web.backend import BadRequest, Forbidden, NotFound
from caffeseg.web.netinspect import inspect
from caffeseg.web.safety import check_job_id
from caffeseg.web.test_many_uploads import upload_root
from caffeseg.web.users import current_user

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
        if job["kind"] == "model":
            with _service_errors():
                return shapes.job_summary(job, metric_rows=self.service.metrics(job["id"])["series"])
        return shapes.job_summary(job, dataset_info=self._dataset_info(job["id"]))

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
        job["files"] = shapes.list_job_files(job_dir)
        job["size"] = folder_size(job_dir)
        log = self.service.log(job_id)
        job["log"] = log[-shapes.LOG_LIMIT:] if log is not None else None
        if job["kind"] == "model":
            job["snapshots"] = shapes.snapshot_entries(job["snapshots"], job_dir, job["iters_per_epoch"])
            try:
                job["dataset_name"] = self.service.show(job["dataset_id"])["name"]
            except KeyError:  # the dataset was deleted
                job["dataset_name"] = None
        return job

    def snapshots(self, job):
        """A model's snapshots from its listing entry, without the rest of ``job()`` (the New
        Model form lists those of every previous model)."""
        with _service_errors():
            return shapes.snapshot_entries(self.service.snapshots(job["id"]), Path(job["dir"]),
                                           job.get("iters_per_epoch"))

    def metrics(self, job_id, since=0):
        with _service_errors():
            return shapes.metrics_view(self.service.metrics(check_job_id(job_id), since), since)

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
            return shapes.evaluation_view(self.service.evaluation(check_job_id(job_id)))

    def evaluate(self, job_id):
        with _service_errors():
            return shapes.evaluation_view(self.service.evaluate(check_job_id(job_id)))

    def clinical_export(self, job_id, fmt, *, case=None, record=None):
        with _service_errors():
            return self.service.clinical_export(check_job_id(job_id), fmt, case=case, record=record)

    def infer_series(self, job_id, path):
        with _service_errors():
            return self.service.infer_series(check_job_id(job_id), path)

    def infer(self, job_id, snapshot, *, record=None, image_path=None, visualize=False):
        job_id = check_job_id(job_id)
        with _service_errors():  # an unknown job is the service's KeyError: a 404
            if record is not None:
                raw = self.service.infer_record(job_id, record, snapshot=snapshot, visualize=visualize)
            else:
                raw = self.service.infer_image(job_id, image_path, snapshot=snapshot, visualize=visualize)
        # the dataset's facts (class names, ...) from the answer's dataset_id: no second look-up
        # of the job, whose full view parses its prototxts (a few % of a warm answer)
        info = self._dataset_info(raw["dataset_id"]) if raw.get("dataset_id") else None
        return shapes.inference_view(raw, info)

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
        resize = options.get("resize")
        # uploaded images are staged in upload_root (web.test_many_uploads), the only place
        # besides the data roots a request may read
        roots = list(self.settings["DATA_ROOTS"]) + [upload_root(self.settings["DATA_DIR"])]
        with _service_errors():
            return self.service.test_many(check_job_id(job_id), snapshot=options.get("snapshot"),
                                          probabilities=bool(options.get("probabilities")),
                                          resize=tuple(int(v) for v in resize) if resize else None,
                                          roots=roots, wait=False, **source)

    def test_many_status(self, job_id, test_id):
        with _service_errors():
            return self.service.test_many_status(check_job_id(job_id), str(test_id))

