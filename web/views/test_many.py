"""Test Many (DIGITS' "Test Many"/"Test a DB"): a model over a server folder, a list file,
uploaded images, a zip or a stage of its dataset, as one request with progress, per-image
statistics, a CSV, class maps and optional float16 probabilities.

``bp``: ``/models/<id>/test-many`` (the form, then the request's page) and its files;
``api_bp``: ``POST /api/jobs/<id>/test-many`` (JSON or multipart) and ``GET
/api/jobs/<id>/test-many/<test>``, guarded like ``web.views.api``. The form, a multipart body and
a JSON body are read into the same (source, options) and refused for the same bad values.
"""
from __future__ import annotations

import os

from flask import Blueprint, Response, abort, current_app, jsonify, redirect, render_template, request, send_file, url_for

from caffeseg.web import api_spec, imaging
from caffeseg.web.backend import BadRequest
from caffeseg.web.safety import check_job_id
from caffeseg.web.test_many_uploads import stage_uploads
from caffeseg.web.views.common import (backend, int_or_none, json_body, load_job, require_form_token,
                                       require_non_form_origin)

bp = Blueprint("test_many", __name__, url_prefix="/models/<job_id>/test-many")
api_bp = Blueprint("test_many_api", __name__, url_prefix="/api/jobs/<job_id>/test-many")
api_bp.before_request(require_non_form_origin)

PATH_SOURCES = ("folder", "list_file", "dataset_stage")  # the sources a form field or JSON key names
SOURCES = PATH_SOURCES + ("paths", "zip_path")  # and the staged uploads
TRUE_WORDS = ("1", "true", "on", "yes")


@bp.route("", methods=["GET", "POST"])
def form(job_id):
    job = load_job(job_id, "model")
    error = None
    if request.method == "POST":
        require_form_token()
        try:
            started = backend().test_many(job_id, *_from_form(request.form, request.files))
            return redirect(url_for("test_many.result", job_id=job_id, test_id=started["id"]))
        except BadRequest as exc:
            error = str(exc)
    return render_template("test_many.html", job=job, error=error,
                           roots=current_app.config.get("DATA_ROOTS") or []), (400 if error else 200)


@bp.route("/<test_id>")
def result(job_id, test_id):
    job = load_job(job_id, "model")
    return render_template("test_many_result.html", job=job, result=backend().test_many_status(job_id, test_id))


@bp.route("/<test_id>/results.csv")
def results_csv(job_id, test_id):
    return _request_file(job_id, test_id, "results.csv", "text/csv")


@bp.route("/<test_id>/<kind>/<int:index>.<ext>")
def row_file(job_id, test_id, kind, index, ext):
    if (kind, ext) not in (("class_maps", "png"), ("probabilities", "npy")):
        abort(404)
    return _request_file(job_id, test_id, "%s/%05d.%s" % (kind, index, ext),
                         "image/png" if ext == "png" else "application/octet-stream")


@bp.route("/<test_id>/preview/<int:index>.png")
def preview(job_id, test_id, index):
    """A row's class map in colour (the results grid's thumbnail; the class_maps PNG holds the
    class indices themselves)."""
    import cv2
    import numpy as np
    response = _request_file(job_id, test_id, "class_maps/%05d.png" % index, "image/png")
    response.direct_passthrough = False
    class_map = cv2.imdecode(np.frombuffer(response.get_data(), np.uint8), cv2.IMREAD_UNCHANGED)
    if class_map is None:
        abort(404, "the class map of row %d cannot be read" % index)
    return Response(imaging.label_png(class_map), mimetype="image/png")


@api_bp.route("", methods=["POST"])
def start(job_id):
    load_job(job_id, "model")
    source, options = _from_json(json_body()) if request.is_json else _from_form(request.form, request.files)
    return jsonify(_as_json(job_id, backend().test_many(job_id, source, options))), 202


@api_bp.route("/<test_id>")
def status(job_id, test_id):
    load_job(job_id, "model")
    return jsonify(_as_json(job_id, backend().test_many_status(job_id, test_id)))


def _request_file(job_id, test_id, relative, mimetype):
    """A file of the request's folder (never outside it), sent as a download for CSV and .npy."""
    folder = backend().test_many_status(check_job_id(job_id), test_id).get("folder")
    if not folder:
        abort(404, "this request keeps no files")
    path = os.path.realpath(os.path.join(folder, relative))
    if os.path.commonpath([path, os.path.realpath(folder)]) != os.path.realpath(folder) or not os.path.isfile(path):
        abort(404, "no %s in this request" % relative)
    return send_file(path, mimetype=mimetype, as_attachment=relative.endswith((".csv", ".npy")),
                     download_name="%s-%s" % (test_id, relative.replace("/", "-")))


def _as_json(job_id, result):
    """A request for JSON: no server folder; links to the CSV and each row's files."""
    out = {k: v for k, v in result.items() if k != "folder"}
    out["csv"] = url_for("test_many.results_csv", job_id=job_id, test_id=result["id"])
    if "rows" in result:
        out["rows"] = [dict(row, files={kind: _row_file_url(job_id, result["id"], relative)
                                        for kind, relative in (row.get("files") or {}).items()})
                       for row in result["rows"] or []]
    return out


def _row_file_url(job_id, test_id, relative):
    stem, ext = os.path.splitext(os.path.basename(relative))
    return url_for("test_many.row_file", job_id=job_id, test_id=test_id, kind=os.path.dirname(relative),
                   index=int(stem), ext=ext[1:])


def _check_source(source: dict) -> dict:
    if len([k for k, v in source.items() if v]) != 1 or not set(source) <= set(SOURCES):
        raise BadRequest("give exactly one of: a folder on the server, a list file, images to upload, a zip, "
                         "or a dataset stage")
    return source


def _from_form(form, files) -> tuple[dict, dict]:
    """(source, options) of the Test Many form or an API multipart body; uploads are staged."""
    uploads = [f for f in files.getlist("images") if f and f.filename] if files else []
    zipped = files.get("zip") if files else None
    source = {key: form[key].strip() for key in PATH_SOURCES if (form.get(key) or "").strip()}
    if uploads:
        source["paths"] = stage_uploads(current_app.config["DATA_DIR"], uploads)
    if zipped is not None and zipped.filename:
        source["zip_path"] = stage_uploads(current_app.config["DATA_DIR"], [zipped])[0]
    _check_source(source)
    options = {"snapshot": int_or_none(form.get("snapshot"), "snapshot"),
               "probabilities": str(form.get("probabilities") or "").lower() in TRUE_WORDS}
    if str(form.get("resize") or "").lower() in TRUE_WORDS:
        options["resize"] = [int_or_none(form.get("height"), "height"), int_or_none(form.get("width"), "width")]
        if None in options["resize"]:
            raise BadRequest("resizing needs a height and a width", {"height": "needed to resize"})
    return source, options


def _from_json(body: dict) -> tuple[dict, dict]:
    """(source, options) of ``{folder|list_file|dataset_stage, snapshot, probabilities, resize}``."""
    api_spec.refuse_unknown_keys(body, set(PATH_SOURCES) | {"snapshot", "probabilities", "resize"})
    source = _check_source({k: body[k] for k in PATH_SOURCES if body.get(k)})
    resize = body.get("resize")
    # [height, width] as whole numbers, like the form's fields (JSON true is not a number here)
    if resize is not None and not (isinstance(resize, list) and len(resize) == 2 and
                                   all(isinstance(v, int) and not isinstance(v, bool) for v in resize)):
        raise BadRequest("resize: [height, width], two whole numbers", {"resize": "two whole numbers"})
    return source, {"snapshot": int_or_none(body.get("snapshot"), "snapshot"),
                    "probabilities": bool(body.get("probabilities")), "resize": resize}
