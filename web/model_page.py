"""What the model page says beside the job record: why a Waiting model is not started here, and
the file name of a model download. ``backend`` is the views' ``web.backend.Backend``."""
from __future__ import annotations

import os
import re

WORKER_KINDS = {"pycaffe": "a real-Caffe (pycaffe) worker", "engine": "a PyTorch-engine worker"}
BACKEND_TITLES = {"pycaffe": "real Caffe", "engine": "the PyTorch engine"}


def waiting_note(backend, job: dict, data_dir: str | None) -> dict | None:
    """Why a Waiting model is not started here: it asked for a backend (``options.backend``) this
    server's own worker does not run (``Scheduler.takes``), so it waits for another worker; the
    note names the command that starts one on ``data_dir``."""
    if str(job.get("status") or "").lower() != "waiting":
        return None
    wanted = (job.get("options") or {}).get("backend")
    if wanted not in WORKER_KINDS:
        return None
    if backend.worker_takes(job):
        return None
    data = data_dir or "DATA"  # the folder a worker's --data names
    runs = backend.worker_backends()
    note = {"backend": wanted, "worker": WORKER_KINDS[wanted],
            "server": " and ".join(BACKEND_TITLES.get(b, b) for b in sorted(runs)) or None,
            "command": f"caffeseg worker --backend {wanted} --data {data}"}
    if wanted == "pycaffe":
        note["docker"] = "docker compose -f docker/compose.yaml up"
        note["docker_command"] = "python3 -m caffeseg.jobs.worker --backend pycaffe --data /data"
    return note


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text or "")).strip("-").lower()[:60] or "model"


def download_name(job: dict, path: str, snapshot: int | None, iterations) -> str:
    """``<model name>_<job id>_iter_<N>.tar.gz``: downloads of different models never collide."""
    found = re.search(r"_iter_(\d+)", os.path.basename(path))
    iteration = snapshot if snapshot is not None else (int(found.group(1)) if found else max(iterations))
    stem = f"{_slug(job.get('name'))}_{job['id']}"
    return f"{stem}_iter_{iteration}.tar.gz" if iteration is not None else f"{stem}.tar.gz"
