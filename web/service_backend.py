"""``Backend`` on top of ``jobs.service`` (the facade the CLI also uses).

Anything the service does not offer raises ``Unavailable``; parts that only read files the
product writes (the ``prototxt/`` folder, a dataset's LMDBs, network inspection through the
engine) are done here directly so they work whatever the service's state.
"""
from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path

from web.backend import Backend, BadRequest, NotFound, Unavailable

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NETWORKS_DIR = PROJECT_ROOT / "prototxt"


class ServiceBackend(Backend):
    def __init__(self, settings: dict):
        self.settings = settings
        self._service = None
        self._service_error = None

    # -- the jobs service, opened lazily so the app starts even while it is missing ---------
    @property
    def service(self):
        if self._service is None:
            try:
                module = importlib.import_module("jobs.service")
            except Exception as exc:  # not written yet / broken install
                raise Unavailable(f"the jobs service cannot be loaded ({type(exc).__name__}: {exc})") from None
            self._service = _open_service(module, self.settings)
        return self._service

    def _call(self, names, *args, **kwargs):
        for name in names if isinstance(names, (list, tuple)) else [names]:
            fn = getattr(self.service, name, None)
            if callable(fn):
                return fn(*args, **kwargs)
        raise Unavailable(f"the jobs service has no {names if isinstance(names, str) else names[0]}()")

    # -- networks from the prototxt/ folder -------------------------------------------------
    def standard_networks(self) -> list[dict]:
        out = []
        if NETWORKS_DIR.is_dir():
            for path in sorted(NETWORKS_DIR.glob("*.prototxt")):
                if path.name.endswith(("deploy.prototxt", "solver.prototxt")):
                    continue
                text = path.read_text(errors="replace")
                first = next((l[1:].strip() for l in text.splitlines() if l.startswith("#")), "")
                out.append({"name": path.stem, "title": path.stem.replace("_", " "), "description": first,
                            "text": text})
        return out

    def inspect_network(self, text: str, dataset_id: str | None = None) -> dict:
        from web.netinspect import inspect
        return inspect(text, self._dataset_shape(dataset_id))

    def _dataset_shape(self, dataset_id):
        if not dataset_id:
            return None
        try:
            info = self.job(dataset_id).get("info") or {}
        except Exception:
            return None
        shape = info.get("feature_shape") or (info.get("stages", {}).get("train", {}) or {}).get("feature_shape")
        return list(shape) if shape else None


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
