"""The job page's DIGITS panels (``_job_panels.html``): name, notes and group edited in place, the
status timeline, folder, related jobs and pretrained weights (``job_details``), and a model's
Make Pretrained Model; with their JSON API and DIGITS-style bulk actions.

``bp``: the pages' forms (CSRF token); ``api_bp``: ``PUT /api/jobs/<id>``, ``POST
/api/jobs/bulk``, ``GET /api/jobs/<id>/details``, ``POST /api/jobs/<id>/make-pretrained``,
guarded like ``web.views.api`` (a JSON body or ``X-Requested-With`` for changes).
"""
from __future__ import annotations

from flask import Blueprint, flash, jsonify, redirect, request, url_for

from caffeseg.web import api_spec
from caffeseg.web.backend import BadRequest
from caffeseg.web.views.common import (backend, int_or_none, job_json, json_body, load_job, require_form_token,
                                       require_non_form_origin)

bp = Blueprint("job_panels", __name__)
api_bp = Blueprint("job_panels_api", __name__, url_prefix="/api/jobs")
api_bp.before_request(require_non_form_origin)

EDITABLE = ("name", "notes", "group")


@bp.route("/jobs/<job_id>/edit", methods=["POST"])
def edit(job_id):
    job = load_job(job_id)
    require_form_token()
    try:
        backend().edit_job(job_id, {k: request.form[k] for k in EDITABLE if k in request.form})
        flash("Saved.", "ok")
    except BadRequest as exc:
        flash(str(exc), "error")
    return redirect(url_for("%ss.show" % job["kind"], job_id=job_id))


@bp.route("/models/<job_id>/to_pretrained", methods=["POST"])
def to_pretrained(job_id):
    """DIGITS' "Make Pretrained Model" button (its URL too): back to the Pretrained tab."""
    load_job(job_id, "model")
    require_form_token()
    snapshot = int_or_none(request.form.get("snapshot"), "snapshot")
    try:
        entry = backend().make_pretrained(job_id, snapshot, (request.form.get("name") or "").strip() or None)
    except BadRequest as exc:
        flash(str(exc), "error")
        return redirect(url_for("models.show", job_id=job_id))
    flash("Pretrained model %s made from this model; it is on the Pretrained Models tab and in the New Model "
          "form's Pretrained Networks." % entry["name"], "ok")
    return redirect(url_for("home.index", tab="pretrained"))


@api_bp.route("/<job_id>", methods=["PUT"])
def api_edit(job_id):
    body = json_body()
    api_spec.refuse_unknown_keys(body, set(EDITABLE))
    load_job(job_id)
    return jsonify(job_json(backend().edit_job(job_id, body)))


@api_bp.route("/bulk", methods=["POST"])
def api_bulk():
    body = json_body()
    ids = body.get("job_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequest("job_ids: a list of job ids", {"job_ids": "a list of job ids"})
    return jsonify(backend().bulk_jobs(str(body.get("action") or ""), ids, body.get("group")))


@api_bp.route("/<job_id>/details")
def api_details(job_id):
    load_job(job_id)
    return jsonify(backend().job_details(job_id))


@api_bp.route("/<job_id>/make-pretrained", methods=["POST"])
def api_make_pretrained(job_id):
    body = json_body()
    load_job(job_id, "model")
    entry = backend().make_pretrained(job_id, int_or_none(body.get("snapshot"), "snapshot"), body.get("name"))
    return jsonify(entry), 201


def install_details(app) -> None:
    """The job pages include ``_job_panels.html``, which asks for its panels itself."""
    app.jinja_env.globals["job_details"] = lambda job_id: backend().job_details(job_id)
