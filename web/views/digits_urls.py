"""DIGITS' own REST URLs and JSON shapes, for scripts written for DIGITS (docs/WEB.md has the
mapping; the shapes and form names are ``web.digits_compat``'s).

Reads: ``/index.json``, ``/completed_jobs.json``, ``/jobs/<id>/table_data.json``, ``/<kind>/<id>/status``,
``/models/<id>.json``, ``/datasets/<id>.json``, ``/models/<id>/download.<ext>``. Actions: ``PUT`` and
``DELETE /jobs/<id>``, ``/jobs/<id>/abort``, ``DELETE /jobs``, ``/abort_jobs``, ``/group``,
``/clone/<id>``, ``POST /models/images/generic[.json]``. The actions take DIGITS' form fields
without a CSRF token, as DIGITS did; a browser request from another site (an ``Origin`` header
naming another host) is refused, which is what stops a cross-site form.
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, jsonify, redirect, request, send_file, url_for

from caffeseg.web import digits_compat as digits
from caffeseg.web.backend import BadRequest, NotFound
from caffeseg.web.views.common import SAFE_METHODS, backend, create_model_from_fields, load_job

bp = Blueprint("digits_urls", __name__)


@bp.before_request
def refuse_cross_site():
    if request.method in SAFE_METHODS:
        return None
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        abort(403, "a request from another site (Origin %s) may not change jobs here" % origin)
    return None


# -- reads ------------------------------------------------------------------------------------------

@bp.route("/index.json")
def index_json():
    jobs = backend().jobs()
    return jsonify({"version": digits.version(), "jobs_dir": current_app.config.get("JOBS_DIR"),
                    "server_name": backend().server_info().get("server"),
                    "datasets": [digits.brief_entry(j) for j in jobs if j["kind"] == "dataset"],
                    "models": [digits.brief_entry(j) for j in jobs if j["kind"] == "model"]})


@bp.route("/completed_jobs.json")
def completed_jobs_json():
    fields = set()
    jobs = backend().jobs()
    running = [digits.job_entry(j, fields) for j in jobs if j["status"] not in digits.FINISHED]
    done = [j for j in jobs if j["status"] in digits.FINISHED]
    pretrained = [{"id": p["id"], "name": p["name"], "type": "pretrained_model", "framework": "caffe",
                   "status": "Done", "has_labels": bool(p.get("labels")), "username": ""}
                  for p in backend().pretrained_models() if p.get("kind") == "uploaded"]
    return jsonify({"running": running,
                    "datasets": [digits.job_entry(j, fields) for j in done if j["kind"] == "dataset"],
                    "models": [digits.job_entry(j, fields) for j in done if j["kind"] == "model"],
                    "pretrained_models": pretrained, "model_output_fields": sorted(fields)})


@bp.route("/jobs/<job_id>/table_data.json")
def table_data_json(job_id):
    return jsonify({"job": digits.job_entry(load_job(job_id), set())})


@bp.route("/jobs/<job_id>/status")
@bp.route("/models/<job_id>/status")
@bp.route("/datasets/<job_id>/status")
def status_json(job_id):
    try:
        job = load_job(job_id)
    except (NotFound, ValueError):
        return jsonify({"error": "Job not found."})
    return jsonify({"error": None, "status": job["status"], "name": job["name"],
                    "type": "Generic Image Model" if job["kind"] == "model" else "Generic Image Dataset"})


@bp.route("/models/<job_id>.json")
def model_json(job_id):
    job = load_job(job_id, "model")
    per_epoch = [s.get("epoch") if s.get("epoch") is not None else s["iteration"] for s in job.get("snapshots") or []]
    return jsonify({"id": job["id"], "name": job["name"], "status": job["status"], "directory": job["dir"],
                    "snapshots": per_epoch, "dataset_id": job.get("dataset_id"), "job id": job["id"],
                    "creation time": digits.creation_time(job), "username": job.get("owner") or "",
                    "framework": "caffe"})


@bp.route("/datasets/<job_id>.json")
def dataset_json(job_id):
    job = load_job(job_id, "dataset")
    info = job.get("info") or {}
    shape = info.get("feature_shape") or []
    return jsonify({"id": job["id"], "name": job["name"], "status": job["status"], "directory": job["dir"],
                    "job id": job["id"], "creation time": digits.creation_time(job), "username": job.get("owner") or "",
                    "image dimensions": [shape[1], shape[2], shape[0]] if len(shape) == 3 else None,
                    "classes": info.get("classes"), "counts": info.get("counts")})


@bp.route("/models/<job_id>/download.<extension>")
def download(job_id, extension):
    """DIGITS' download.<extension> (tar.gz, tgz, zip); ?epoch= is the snapshot's epoch."""
    job = load_job(job_id, "model")
    fmt = {"tar.gz": "tar.gz", "tgz": "tar.gz", "zip": "zip"}.get(extension)
    if fmt is None:
        raise BadRequest("download.%s: use tar.gz, tgz or zip" % extension)
    snapshot = None
    if request.args.get("epoch") not in (None, "", "-1"):
        wanted = float(request.args["epoch"])
        matches = [s["iteration"] for s in job.get("snapshots") or [] if s.get("epoch") is not None
                   and abs(float(s["epoch"]) - wanted) < 1e-6]
        if not matches:
            raise BadRequest("no snapshot at epoch %s" % request.args["epoch"])
        snapshot = matches[0]
    path = backend().download(job_id, snapshot, fmt)
    return send_file(path, as_attachment=True, download_name="%s_%s.%s" % (job_id, os.path.basename(path).split(".")[0],
                                                                          "zip" if fmt == "zip" else "tar.gz"))


# -- actions ----------------------------------------------------------------------------------------

@bp.route("/jobs/<job_id>", methods=["PUT"])
def edit(job_id):
    job = load_job(job_id)
    fields = {}
    if "job_name" in request.form:
        fields["name"] = request.form["job_name"]
    if "job_notes" in request.form:
        fields["notes"] = request.form["job_notes"].strip()
    backend().edit_job(job_id, fields)
    return "%s updated." % ("Model" if job["kind"] == "model" else "Dataset")


@bp.route("/jobs/<job_id>", methods=["DELETE"])
@bp.route("/models/<job_id>", methods=["DELETE"])
@bp.route("/datasets/<job_id>", methods=["DELETE"])
def delete(job_id):
    load_job(job_id)
    backend().delete(job_id)
    return "Job deleted."


@bp.route("/jobs/<job_id>/abort", methods=["POST"])
def abort_job(job_id):
    """DIGITS' abort (its /models/<id>/abort and /datasets/<id>/abort are the pages' own buttons
    here, which need the form token: scripts use /jobs/<id>/abort)."""
    load_job(job_id)
    backend().abort(job_id)
    return "Job aborted."


def _many(action, verb, group=None):
    ids = request.form.getlist("job_ids[]") or request.form.getlist("job_ids")
    result = backend().bulk_jobs(action, ids, group)
    if result["errors"]:
        raise BadRequest(" ".join("%s: %s." % (k, v) for k, v in sorted(result["errors"].items())))
    return "Jobs %s." % verb


@bp.route("/jobs", methods=["DELETE"])
def delete_many():
    return _many("delete", "deleted")


@bp.route("/abort_jobs", methods=["POST"])
def abort_many():
    return _many("abort", "aborted")


@bp.route("/group", methods=["POST"])
def group():
    return _many("group", "regrouped", (request.values.get("group_name") or "").strip())


@bp.route("/clone/<job_id>", methods=["GET", "POST"])
def clone(job_id):
    job = load_job(job_id)
    return redirect(url_for("%ss.clone" % job["kind"], job_id=job_id))


@bp.route("/models/images/generic.json", methods=["POST"])
@bp.route("/models/images/generic", methods=["POST"])
def create_model():
    """DIGITS' New Model POST with its form field names; answers its job JSON ({id, name, status},
    {jobs: [...]} for a sweep) or, without .json, redirects to the model page."""
    values, unused = digits.model_form_values(request.form)
    if unused:
        raise BadRequest("fields caffeseg does not know: %s" % ", ".join(sorted(unused)),
                         {k: "unknown field" for k in unused})
    ids = create_model_from_fields(values)
    if not request.path.endswith(".json"):
        return redirect(url_for("models.show", job_id=ids[0]) if len(ids) == 1 else url_for("home.index", tab="model"))
    entries = [digits.brief_entry(load_job(i)) for i in ids]
    return jsonify(entries[0] if len(entries) == 1 else {"jobs": entries})
