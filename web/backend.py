"""What the web asks of the rest of the product, in one place.

Views talk only to a ``Backend``. ``web.service_backend.ServiceBackend`` implements it on top
of ``jobs.service``; tests may pass any object with the same methods through
``create_app({"BACKEND": ...})``. A method the underlying service does not offer raises
``Unavailable`` and the page shows "not available" instead of failing.

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


class Unavailable(RuntimeError):
    """The feature is not provided by the installed jobs service (yet)."""


class NotFound(LookupError):
    pass


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


class Backend:
    """Every method raises Unavailable; implementations override what they can do."""

    def _missing(self, what: str):
        raise Unavailable(f"{what} is not available in this installation")

    # -- listing and lifecycle ---------------------------------------------------------
    def jobs(self, kind: str | None = None) -> list[dict]:
        self._missing("job listing")

    def job(self, job_id: str) -> dict:
        self._missing("job details")

    def metrics(self, job_id: str, since: int = 0) -> dict:
        self._missing("metric series")

    def abort(self, job_id: str) -> None:
        self._missing("abort")

    def delete(self, job_id: str) -> None:
        self._missing("delete")

    def resume(self, job_id: str) -> None:
        self._missing("resume")

    def clone(self, job_id: str) -> dict:
        """Form values that recreate the job (the new-job form is shown prefilled)."""
        self._missing("clone")

    # -- creation ----------------------------------------------------------------------
    def create_dataset(self, plugin_id: str, values: dict, options: dict) -> str:
        self._missing("dataset creation")

    def create_model(self, options: dict) -> list[str]:
        self._missing("model creation")

    # -- datasets ------------------------------------------------------------------------
    def dataset_records(self, job_id: str, stage: str, offset: int, limit: int) -> dict:
        """``{total, records: [{index, key, name}]}`` for one stage (train/val)."""
        self._missing("dataset explorer")

    def dataset_record(self, job_id: str, stage: str, index: int):
        """``(feature C×H×W ndarray, label H×W ndarray or None, meta dict)``."""
        self._missing("dataset explorer")

    # -- networks ------------------------------------------------------------------------
    def standard_networks(self) -> list[dict]:
        """``[{name, title, text}]`` from the project's ``prototxt/`` folder."""
        return []

    def snapshots(self, job: dict) -> list[dict]:
        """``[{iteration, epoch, file, size}]`` of a model from its summary (``jobs()`` entry)."""
        return self.job(job["id"]).get("snapshots") or []

    def pretrained_models(self) -> list[dict]:
        """Known public models and uploaded ones (``web.pretrained_store.catalogue``)."""
        return []

    def pretrained_network(self, pretrained_id: str, dataset_id: str | None) -> dict:
        """What a chosen pretrained model gives a model job on that dataset:
        ``{id, standard_network | network_text, weights}`` (``web.pretrained_store.resolve``)."""
        self._missing("pretrained networks")

    def upload_pretrained(self, name: str, prototxt: bytes, weights, description: str = "") -> dict:
        """Store a user's network + caffemodel (``weights``: a werkzeug FileStorage)."""
        self._missing("pretrained model upload")

    def delete_pretrained(self, pretrained_id: str) -> None:
        self._missing("pretrained model deletion")

    def prepare_pretrained(self, name: str, gray: bool) -> dict:
        """Start downloading and converting a known model on the server (its gray or RGB
        weights); returns the preparation state (``jobs.pretrained_prepare``)."""
        self._missing("pretrained model preparation")

    def inspect_network(self, text: str, dataset_id: str | None = None) -> dict:
        self._missing("network visualization")

    # -- evaluation / inference -------------------------------------------------------
    def evaluation(self, job_id: str) -> dict | None:
        """``{summary: {metric: {mean, std, min, max}}, worst: [records], worst_columns}``;
        None when the model has not been evaluated yet."""
        self._missing("evaluation")

    def evaluate(self, job_id: str) -> dict:
        """Evaluate the latest snapshot on the validation set now; returns the table."""
        self._missing("evaluation")

    def infer(self, job_id: str, snapshot: int | None, *, record: str | None = None,
              image_path: str | None = None, visualize: bool = False) -> dict:
        """``{image: ndarray H×W or C×H×W, prediction: H×W int, label: H×W or None,
        classes: [names], palette: [[r,g,b]], metrics: {...}, layers: [{name, kind, shape,
        mean, std, hist}]}``."""
        self._missing("inference")

    def download(self, job_id: str, snapshot: int | None = None) -> str:
        """Path of a model archive ready to send."""
        self._missing("model download")
