"""Downloads of the files inside a job directory (logs, prototxts, snapshots, mean file)."""
from __future__ import annotations

from flask import Blueprint, abort, send_file

from caffeseg.web.views.common import load_job
from caffeseg.web.safety import job_file

bp = Blueprint("files", __name__)

TEXT_SUFFIXES = (".prototxt", ".log", ".txt", ".json", ".py", ".jsonl", ".yaml")


@bp.route("/jobs/<job_id>/files/<path:relative>")
def job_file_download(job_id, relative):
    job = load_job(job_id)
    path = job_file(job["dir"], relative)
    if not path.is_file():
        abort(404, f"{relative} does not exist in job {job_id}")
    as_text = path.suffix in TEXT_SUFFIXES
    return send_file(path, mimetype="text/plain" if as_text else None, as_attachment=not as_text,
                     download_name=path.name)
