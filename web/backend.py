"""What the web asks of the rest of the product, in one place.

Views talk only to a ``Backend`` (a ``typing.Protocol``). ``web.service_backend.ServiceBackend``
implements it on top of ``jobs.service.JobService``; tests pass another implementation through
``create_app({"BACKEND": ...})``. Errors a user can fix are ``BadRequest`` (shown beside the
form), unknown jobs ``NotFound``; ``Unavailable`` is a feature this installation cannot run.

Shapes returned (plain dicts, JSON-ready):

* job summary: ``id, kind ('dataset'|'model'|'pretrained'), name, group, status, submitted
  (epoch seconds), elapsed (s spent running, ``running_seconds``), progress (0..1 or None), metrics {name: {last, min, max,
  spark: [values]}}``
* job detail: the summary plus ``dir, files [{name, size}], history [{status, time}], log,
  error`` and, for datasets, ``info`` (dataset.json); for models ``snapshots [{iteration,
  epoch, file, size}], dataset_id, eta, options``
* metrics: ``{status, progress, eta, iteration, iters_per_epoch, series: {name: [[iter, value], ...]}}``
  where ``name`` is ``train/<output>``, ``val/<output>`` or ``lr``
"""
from __future__ import annotations

import time
from typing import Iterable, Protocol


class Unavailable(RuntimeError):
    """A feature this installation cannot provide (e.g. no worker runs the asked backend)."""


class NotFound(LookupError):
    pass


class Forbidden(PermissionError):
    """The user may not do this to the job (DIGITS' owner rule: only the owner edits, aborts,
    deletes; see web.users)."""


class BadRequest(ValueError):
    """Input the backend refuses; the message is shown to the user beside the form."""

    def __init__(self, message: str, field_errors: dict | None = None):
        super().__init__(message)
        self.field_errors = field_errors or {}


def running_seconds(history, status, fallback=None, now=None):
    """A job's ``elapsed``: seconds spent Running, summed over resumes, from its status history
    (as DIGITS: waiting in the queue does not count). A queued job that never ran has 0; without
    a Running entry in the history, ``fallback``."""
    now = time.time() if now is None else now
    total, since, seen = 0.0, None, False
    for entry in history or []:
        t, state = entry.get("time"), str(entry.get("status") or "").lower()
        if t is None:
            continue
        if since is not None:
            total += max(0.0, t - since)
            since = None
        if state == "running":
            since, seen = t, True
    if since is not None and str(status or "").lower() == "running":
        total += max(0.0, now - since)
    if not seen and str(status or "").lower() in ("waiting", "initialized"):
        return 0.0
    return total if seen else fallback


class Backend(Protocol):
    """The methods views call; ``web.service_backend.ServiceBackend`` implements them on
    ``jobs.service.JobService`` (tests/test_web_fakes.py checks its fake has the same signatures)."""

    # -- listing and lifecycle ---------------------------------------------------------
    def jobs(self, kind: str | None = None) -> list[dict]:
        """Job summaries, newest first (``kind``: dataset | model | None for all)."""

    def job(self, job_id: str) -> dict:
        """The job detail; NotFound for an unknown id."""

    def metrics(self, job_id: str, since: int = 0) -> dict:
        """The metric series from iteration ``since`` on (shape above)."""

    def abort(self, job_id: str) -> None: ...

    def delete(self, job_id: str) -> None:
        """BadRequest when the job may not go (a dataset models use, a running training)."""

    def resume(self, job_id: str) -> None: ...

    def clone(self, job_id: str) -> dict:
        """Form values that recreate the job (the new-job form is shown prefilled)."""

    def worker_takes(self, job: dict) -> bool:
        """Whether this server's own worker runs ``job`` (a job may ask for another backend)."""

    def worker_backends(self) -> set[str]:
        """The backends this server's own worker runs (engine, pycaffe)."""

    # -- creation ----------------------------------------------------------------------
    def create_dataset(self, plugin_id: str, values: dict, options: dict) -> str:
        """Queue a build; returns the job id. BadRequest with ``field_errors`` for bad values."""

    def create_model(self, options: dict) -> list[str]:
        """Create one model job per swept value (``web.job_options``); returns their ids."""

    # -- datasets ------------------------------------------------------------------------
    def dataset_records(self, job_id: str, stage: str, offset: int, limit: int) -> dict:
        """``{total, records: [{index, key, name}]}`` for one stage (train/val)."""

    def dataset_record(self, job_id: str, stage: str, index: int):
        """``(feature C×H×W ndarray, label H×W ndarray or None, meta dict)``."""

    # -- networks ------------------------------------------------------------------------
    def standard_networks(self) -> list[dict]:
        """``[{name, title, description, text}]`` (``jobs.networks``)."""

    def snapshots(self, job: dict) -> list[dict]:
        """``[{iteration, epoch, file, size}]`` of a model from its summary (``jobs()`` entry)."""

    def gpu_summary(self) -> dict:
        """The GPUs trainings are given: {"total", "free": [indices], "jobs": {gpu: [job ids]}}
        (jobs.service.JobService.gpu_summary)."""

    def hardware(self, job_id: str) -> dict:
        """A model's hardware panel: {"device" ("CPU" / "GPU 0,1"), "gpus" [{index, name,
        memory_used, memory_total, utilization_percent}], "process" ({rss_bytes, cpu_percent,
        threads, processes} or None when not running), "system" ({cores, load_average,
        memory_total, memory_available})}."""

    def epoch_costs(self) -> dict:
        """``{network name: {seconds_per_image, images, seconds, job_id, job_name, status}}``: the
        latest ended training of each standard network here (``jobs.cost``)."""

    def cost_estimate(self, network: str, dataset_id: str) -> dict:
        """No training of ``network`` here yet: ``{state: measuring|done|error, seconds_per_image,
        batch, message}`` of one training step measured once in the background (``jobs.cost``)."""

    def pretrained_models(self) -> list[dict]:
        """Known public models and uploaded ones (``web.pretrained_store.catalogue``)."""

    def pretrained_network(self, pretrained_id: str, dataset_id: str | None) -> dict:
        """What a chosen pretrained model gives a model job on that dataset:
        ``{id, standard_network | network_text, weights}`` (``web.pretrained_store.resolve``)."""

    def upload_pretrained(self, name: str, prototxt: bytes, weights, description: str = "",
                          fields: dict | None = None) -> dict:
        """Store a user's network + caffemodel (``weights``: a werkzeug FileStorage)."""

    def delete_pretrained(self, pretrained_id: str) -> None: ...

    def prepare_pretrained(self, name: str, gray: bool) -> dict:
        """Start downloading and converting a known model on the server (its gray or RGB
        weights); returns the preparation state (``jobs.pretrained_prepare``)."""

    def inspect_network(self, text: str, dataset_id: str | None = None) -> dict:
        """Layers and blob shapes of a network (``web.netinspect``); BadRequest with ``line``."""

    # -- evaluation / inference -------------------------------------------------------
    def evaluation(self, job_id: str) -> dict | None:
        """``{summary: {metric: {mean, std, min, max}}, worst: [records], worst_columns}``;
        None when the model has not been evaluated yet."""

    def evaluate(self, job_id: str) -> dict:
        """Evaluate the latest snapshot on the validation set now; returns the table."""

    def clinical_export(self, job_id: str, fmt: str, *, case: str | None = None,
                        record: str | None = None) -> tuple[str, str, bytes]:
        """(file name, content type, bytes) of the evaluation's predicted contours (fmt
        "contours": Sunnybrook text files in a zip) or DICOM SEG ("dicom-seg"), for one record,
        one patient (case) or all; BadRequest when there is nothing to export."""

    def infer_series(self, job_id: str, path: str) -> dict:
        """DICOM images of one patient (folder, zip or file) through the latest snapshot:
        ``{snapshot, images: [{source, lv_area_mm2, slice_location, phase_key}], function:
        {edv_ml, esv_ml, sv_ml, ef_percent, ed_phase, es_phase, spacing_mm} or {why_not}}``."""

    def infer(self, job_id: str, snapshot: int | None, *, record: str | None = None,
              image_path: str | None = None, visualize: bool = False) -> dict:
        """``{image: ndarray H×W or C×H×W, prediction: H×W int, label: H×W or None,
        classes: [names], palette: [[r,g,b]], metrics: {...}, snapshot: iteration, layers:
        [{name, kind, shape, mean, std, hist: {counts, edges}}]}``."""

    def download(self, job_id: str, snapshot: int | None = None, fmt: str = "tar.gz") -> str:
        """Path of a model archive ready to send (``fmt`` tar.gz or zip, as DIGITS' download.<ext>)."""

    def download_stream(self, job_id: str, snapshot: int | None = None,
                        fmt: str = "tar.gz") -> "tuple[str, Iterable[bytes]]":
        """(archive path, its bytes): the same archive as ``download``, whose bytes flow while it
        is built the first time (the first byte comes at once, not after the whole build)."""

    # -- DIGITS parity: editing, details, info, pretrained round trip, Test Many --------
    # The user of the request (web.users.current_user) is the owner of what is created and is
    # checked (Forbidden) by abort, delete, edit_job and bulk_jobs.
    def edit_job(self, job_id: str, fields: dict) -> dict:
        """Change a job's ``name``, ``notes`` and/or ``group`` (DIGITS' PUT /jobs/<id>); returns
        the job summary. BadRequest (a blank name…), Forbidden (not the owner)."""

    def bulk_jobs(self, action: str, job_ids: list, group: str | None = None) -> dict:
        """abort | delete | group several jobs, each on its own: ``{done: [ids], errors: {id: why}}``."""

    def job_details(self, job_id: str) -> dict:
        """The job page's panels: ``{timeline: [{status, time, message, duration}], folder,
        disk_bytes, related: [{id, name, kind, status, relation}], pretrained: [{path, exists,
        size, source, job_id?, pretrained_id?}], owner}``."""

    def server_info(self) -> dict:
        """The Info menu (``jobs.server_info``): server, versions, the real Caffe, CPU/GPUs."""

    def make_pretrained(self, job_id: str, snapshot: int | None = None, name: str | None = None) -> dict:
        """A model's snapshot as an uploaded pretrained model (DIGITS' to_pretrained); the entry."""

    def upload_pretrained_archive(self, archive, name: str | None = None) -> dict:
        """A caffeseg or DIGITS download (tar/tar.gz/zip; ``archive``: a werkzeug FileStorage)
        stored as a pretrained model; BadRequest (field ``archive``) names what is wrong."""

    def pretrained_layers(self, pretrained_id: str) -> dict:
        """An uploaded pretrained model's ``{layers: [{name, type, shapes, param_count}], total}``."""

    def pretrained_layer_image(self, pretrained_id: str, layer: str) -> bytes | None:
        """PNG of a layer's weights (one tile per filter), None for weights that are not 4-D."""

    def test_many(self, job_id: str, source: dict, options: dict) -> dict:
        """Start Test Many: ``source`` one of {folder}, {list_file}, {paths}, {zip_path},
        {dataset_stage}; ``options`` {snapshot, probabilities, resize: [h, w] | None}. Returns
        ``test_many_status`` (it runs in the background)."""

    def test_many_status(self, job_id: str, test_id: str) -> dict:
        """``{id, request, status: {state, done, total, started, finished, error}, rows?,
        classes?}``; NotFound for an unknown request."""
