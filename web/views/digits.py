"""What DIGITS users miss (issue 18), in the web: job editing and the job page's panels, the Info
menu, Make Pretrained and archive upload, Test Many, and DIGITS' own REST URLs.

Three blueprints:

* ``bp`` — pages and page forms: ``/info``, ``POST /jobs/<id>/edit`` (inline rename/notes/group
  without JavaScript), ``POST /models/<id>/to_pretrained`` (DIGITS' URL), ``/pretrained/archive``
  (archive upload form), ``/models/<id>/test-many`` (form, then the request's page with
  progress), its CSV and class maps;
* ``api_bp`` — caffeseg's JSON API additions under ``/api`` (``PUT /api/jobs/<id>``, ``POST
  /api/jobs/bulk``, ``GET /api/jobs/<id>/details``, ``GET /api/info``, ``POST
  /api/jobs/<id>/make-pretrained``, ``POST /api/pretrained/archive``, ``GET
  /api/pretrained/<id>/layers``, ``POST /api/jobs/<id>/test-many``, ``GET
  /api/jobs/<id>/test-many/<test>``), guarded like ``web.views.api`` (a JSON body or
  ``X-Requested-With`` for changes);
* ``digits_bp`` — DIGITS' URLs and JSON shapes for scripts written for DIGITS (docs/WEB.md has
  the mapping). Their state-changing calls take DIGITS' form fields without a CSRF token, as
  DIGITS did; a browser request from another site (an ``Origin`` header naming another host) is
  refused, which is what stops a cross-site form.
"""
from __future__ import annotations

import os
import secrets
from urllib.parse import urlsplit

from flask import (Blueprint, Response, abort, current_app, flash, jsonify, redirect, render_template, request,
                   send_file, url_for)

from caffeseg.web.backend import BadRequest, NotFound
from caffeseg.web.safety import check_job_id
from caffeseg.web.views.common import SAFE_METHODS, backend, json_body, load_job, require_non_form_origin

bp = Blueprint("digits", __name__)
api_bp = Blueprint("digits_api", __name__, url_prefix="/api")
digits_bp = Blueprint("digits_compat", __name__)

FINISHED = ("Done", "Error", "Aborted", "Interrupted")


def _form_token_ok() -> bool:
    from caffeseg.web.forms import ConfirmForm
    return ConfirmForm().validate_on_submit()


# -- pages ------------------------------------------------------------------------------------------

@bp.route("/info")
def info():
    return render_template("info.html", info=backend().server_info())


@bp.route("/jobs/<job_id>/edit", methods=["POST"])
def edit(job_id):
    job = load_job(job_id)
    if not _form_token_ok():
        abort(400, "missing form token")
    fields = {k: request.form[k] for k in ("name", "notes", "group") if k in request.form}
    try:
        backend().edit_job(job_id, fields)
        flash("Saved.", "ok")
    except BadRequest as exc:
        flash(str(exc), "error")
    return redirect(url_for("%ss.show" % job["kind"], job_id=job_id))


@bp.route("/models/<job_id>/to_pretrained", methods=["POST"])
def to_pretrained(job_id):
    """DIGITS' "Make Pretrained Model" button (its URL too): back to the Pretrained tab."""
    load_job(job_id, "model")
    if not _form_token_ok():
        abort(400, "missing form token")
    snapshot = _int_or_none(request.form.get("snapshot"), "snapshot")
    try:
        entry = backend().make_pretrained(job_id, snapshot, (request.form.get("name") or "").strip() or None)
    except BadRequest as exc:
        flash(str(exc), "error")
        return redirect(url_for("models.show", job_id=job_id))
    flash("Pretrained model %s made from this model; it is on the Pretrained Models tab and in the New Model "
          "form's Pretrained Networks." % entry["name"], "ok")
    return redirect(url_for("home.index", tab="pretrained"))


@bp.route("/pretrained/archive", methods=["GET", "POST"])
def upload_archive():
    error = None
    if request.method == "POST":
        if not _form_token_ok():
            abort(400, "missing form token")
        archive = request.files.get("archive")
        if archive is None or not archive.filename:
            error = "choose an archive (.tar, .tar.gz or .zip)"
        else:
            try:
                entry = backend().upload_pretrained_archive(archive, request.form.get("name"))
                flash("Pretrained model %s uploaded." % entry["name"], "ok")
                return redirect(url_for("home.index", tab="pretrained"))
            except BadRequest as exc:
                error = str(exc)
    return render_template("pretrained_archive.html", error=error), (400 if error else 200)


@bp.route("/pretrained/<pretrained_id>/layers")
def pretrained_layers_page(pretrained_id):
    """An uploaded pretrained model's layers with parameter shapes and counts, and per layer a
    picture of its weights (DIGITS' pretrained model page and layer visualisations)."""
    entry = next((p for p in backend().pretrained_models() if p["id"] == pretrained_id), None)
    if entry is None:
        raise NotFound("no pretrained model %r" % (pretrained_id,))
    return render_template("pretrained_layers.html", entry=entry, table=backend().pretrained_layers(pretrained_id))


@bp.route("/pretrained/<pretrained_id>/layers/<path:layer>.png")
def pretrained_layer_png(pretrained_id, layer):
    image = backend().pretrained_layer_image(pretrained_id, layer)
    if image is None:
        abort(404, "the weights of %s are not 4-D: no picture" % layer)
    from flask import Response
    return Response(image, mimetype="image/png")


@bp.route("/models/<job_id>/test-many", methods=["GET", "POST"])
def test_many(job_id):
    job = load_job(job_id, "model")
    error = None
    if request.method == "POST":
        if not _form_token_ok():
            abort(400, "missing form token")
        try:
            source, options = _test_many_request(request.form, request.files)
            started = backend().test_many(job_id, source, options)
            return redirect(url_for("digits.test_many_result", job_id=job_id, test_id=started["id"]))
        except BadRequest as exc:
            error = str(exc)
    return render_template("test_many.html", job=job, error=error,
                           roots=current_app.config.get("DATA_ROOTS") or []), (400 if error else 200)


@bp.route("/models/<job_id>/test-many/<test_id>")
def test_many_result(job_id, test_id):
    job = load_job(job_id, "model")
    result = backend().test_many_status(job_id, test_id)
    return render_template("test_many_result.html", job=job, result=result)


@bp.route("/models/<job_id>/test-many/<test_id>/results.csv")
def test_many_csv(job_id, test_id):
    return _test_file(job_id, test_id, "results.csv", "text/csv")


@bp.route("/models/<job_id>/test-many/<test_id>/<kind>/<int:index>.<ext>")
def test_many_file(job_id, test_id, kind, index, ext):
    if (kind, ext) not in (("class_maps", "png"), ("probabilities", "npy")):
        abort(404)
    return _test_file(job_id, test_id, "%s/%05d.%s" % (kind, index, ext),
                      "image/png" if ext == "png" else "application/octet-stream")


@bp.route("/models/<job_id>/test-many/<test_id>/preview/<int:index>.png")
def test_many_preview(job_id, test_id, index):
    """A row's class map in colour (the results grid's thumbnail; the class_maps PNG holds the
    class indices themselves)."""
    import cv2
    import numpy as np
    from caffeseg.web import imaging
    response = _test_file(job_id, test_id, "class_maps/%05d.png" % index, "image/png")
    response.direct_passthrough = False
    class_map = cv2.imdecode(np.frombuffer(response.get_data(), np.uint8), cv2.IMREAD_UNCHANGED)
    if class_map is None:
        abort(404, "the class map of row %d cannot be read" % index)
    return Response(imaging.label_png(class_map), mimetype="image/png")


def _test_file(job_id, test_id, relative, mimetype):
    result = backend().test_many_status(check_job_id(job_id), test_id)
    folder = result.get("folder")
    if not folder:
        abort(404, "this request keeps no files")
    path = os.path.realpath(os.path.join(folder, relative))
    if os.path.commonpath([path, os.path.realpath(folder)]) != os.path.realpath(folder) or not os.path.isfile(path):
        abort(404, "no %s in this request" % relative)
    return send_file(path, mimetype=mimetype, as_attachment=relative.endswith((".csv", ".npy")),
                     download_name="%s-%s" % (test_id, relative.replace("/", "-")))


def _int_or_none(value, field):
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest("%s must be a whole number" % field, {field: "a whole number"}) from None


def _staged_uploads(files):
    """Uploaded test images (or one zip) saved under DATA_DIR/test-uploads/<random>/."""
    folder = os.path.join(current_app.config["DATA_DIR"], "test-uploads", secrets.token_hex(6))
    os.makedirs(folder)
    paths = []
    for index, storage in enumerate(files):
        name = os.path.basename(storage.filename or "upload").replace("\x00", "") or "upload"
        path = os.path.join(folder, "%03d_%s" % (index, name))
        storage.save(path)
        paths.append(path)
    return paths


def _test_many_request(form, files):
    """(source, options) of the Test Many form (or an API multipart body)."""
    uploads = [f for f in files.getlist("images") if f and f.filename] if files else []
    zipped = files.get("zip") if files else None
    source = {}
    for key in ("folder", "list_file", "dataset_stage"):
        if (form.get(key) or "").strip():
            source[key] = form[key].strip()
    if uploads:
        source["paths"] = _staged_uploads(uploads)
    if zipped is not None and zipped.filename:
        source["zip_path"] = _staged_uploads([zipped])[0]
    if len(source) != 1:
        raise BadRequest("give exactly one of: a folder on the server, a list file, images to upload, a zip, "
                         "or a dataset stage")
    options = {"snapshot": _int_or_none(form.get("snapshot"), "snapshot"),
               "probabilities": str(form.get("probabilities") or "").lower() in ("1", "true", "on", "yes")}
    if str(form.get("resize") or "").lower() in ("1", "true", "on", "yes"):
        options["resize"] = [_int_or_none(form.get("height"), "height"), _int_or_none(form.get("width"), "width")]
        if None in options["resize"]:
            raise BadRequest("resizing needs a height and a width", {"height": "needed to resize"})
    return source, options


# -- caffeseg's JSON API additions ------------------------------------------------------------------

api_bp.before_request(require_non_form_origin)


@api_bp.route("/jobs/<job_id>", methods=["PUT"])
def api_edit(job_id):
    body = json_body()
    unknown = sorted(set(body) - {"name", "notes", "group"})
    if unknown:
        raise BadRequest("unknown field(s) %s (name, notes, group)" % ", ".join(unknown))
    load_job(job_id)
    return jsonify(_json_ready(backend().edit_job(job_id, body)))


@api_bp.route("/jobs/bulk", methods=["POST"])
def api_bulk():
    body = json_body()
    ids = body.get("job_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BadRequest("job_ids: a list of job ids", {"job_ids": "a list of job ids"})
    return jsonify(backend().bulk_jobs(str(body.get("action") or ""), ids, body.get("group")))


@api_bp.route("/jobs/<job_id>/details")
def api_details(job_id):
    load_job(job_id)
    return jsonify(backend().job_details(job_id))


@api_bp.route("/info")
def api_info():
    return jsonify(backend().server_info())


@api_bp.route("/jobs/<job_id>/make-pretrained", methods=["POST"])
def api_make_pretrained(job_id):
    body = json_body()
    load_job(job_id, "model")
    entry = backend().make_pretrained(job_id, _int_or_none(body.get("snapshot"), "snapshot"), body.get("name"))
    return jsonify(entry), 201


@api_bp.route("/pretrained/archive", methods=["POST"])
def api_upload_archive():
    archive = request.files.get("archive")
    if archive is None or not archive.filename:
        raise BadRequest("send the archive as the multipart field 'archive'", {"archive": "missing"})
    return jsonify(backend().upload_pretrained_archive(archive, request.form.get("name"))), 201


@api_bp.route("/pretrained/<pretrained_id>/layers")
def api_pretrained_layers(pretrained_id):
    return jsonify(backend().pretrained_layers(pretrained_id))


@api_bp.route("/jobs/<job_id>/test-many", methods=["POST"])
def api_test_many(job_id):
    load_job(job_id, "model")
    if request.is_json:
        body = json_body()
        source = {k: body[k] for k in ("folder", "list_file", "dataset_stage") if body.get(k)}
        options = {"snapshot": _int_or_none(body.get("snapshot"), "snapshot"),
                   "probabilities": bool(body.get("probabilities")), "resize": body.get("resize")}
    else:
        source, options = _test_many_request(request.form, request.files)
    started = backend().test_many(job_id, source, options)
    return jsonify(_test_view(job_id, started)), 202


@api_bp.route("/jobs/<job_id>/test-many/<test_id>")
def api_test_many_status(job_id, test_id):
    load_job(job_id, "model")
    return jsonify(_test_view(job_id, backend().test_many_status(job_id, test_id)))


def _test_view(job_id, result):
    """A request for JSON: no server folder; links to the CSV and each row's files."""
    out = {k: v for k, v in result.items() if k != "folder"}
    out["csv"] = url_for("digits.test_many_csv", job_id=job_id, test_id=result["id"])
    rows = []
    for row in result.get("rows") or []:
        links = {}
        for kind, relative in (row.get("files") or {}).items():
            stem, ext = os.path.splitext(os.path.basename(relative))
            links[kind] = url_for("digits.test_many_file", job_id=job_id, test_id=result["id"],
                                  kind=os.path.dirname(relative), index=int(stem), ext=ext[1:])
        rows.append(dict(row, files=links))
    if "rows" in result:
        out["rows"] = rows
    return out


def _json_ready(job: dict) -> dict:
    return {k: v for k, v in job.items() if k not in ("log",)}


# -- DIGITS' URLs ------------------------------------------------------------------------------------

@digits_bp.before_request
def refuse_cross_site():
    if request.method in SAFE_METHODS:
        return None
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        abort(403, "a request from another site (Origin %s) may not change jobs here" % origin)
    return None


def _digits_type(job):
    return {"dataset": "dataset", "model": "model"}.get(job["kind"], job["kind"])


def _digits_entry(job, fields):
    """DIGITS' home-table json_dict: id, name, group, status, status_css, submitted, elapsed,
    progress (percent), dataset_id, type, framework, and per model output "<name> (<phase>) last/min/max"."""
    from caffeseg.web.templating import STATUS_CLASS
    d = {"id": job["id"], "name": job["name"], "group": job.get("group") or "", "status": job["status"],
         "status_css": STATUS_CLASS.get(str(job["status"]).lower(), ""), "submitted": job.get("submitted"),
         "elapsed": job.get("elapsed"), "type": _digits_type(job), "username": job.get("owner") or ""}
    if job.get("progress") is not None:
        d["progress"] = int(round(100 * float(job["progress"])))
    if job.get("dataset_id"):
        d["dataset_id"] = job["dataset_id"]
    if job["kind"] == "model":
        d["framework"] = "caffe"
        for key, m in (job.get("metrics") or {}).items():
            phase, _, name = key.partition("/") if "/" in key else ("", "", key)
            label = "%s (%s) " % (name, phase) if phase else "%s " % name
            for stat in ("last", "min", "max"):
                if m.get(stat) is not None:
                    fields.add(label + stat)
                    d[label + stat] = m[stat]
    return d


@digits_bp.route("/index.json")
def index_json():
    jobs = backend().jobs()
    return jsonify({"version": _version(), "jobs_dir": current_app.config.get("JOBS_DIR"),
                    "server_name": backend().server_info().get("server"),
                    "datasets": [{"id": j["id"], "name": j["name"], "status": j["status"]} for j in jobs
                                 if j["kind"] == "dataset"],
                    "models": [{"id": j["id"], "name": j["name"], "status": j["status"]} for j in jobs
                               if j["kind"] == "model"]})


def _version():
    import importlib.metadata
    try:
        return importlib.metadata.version("caffeseg")
    except importlib.metadata.PackageNotFoundError:
        return None


@digits_bp.route("/completed_jobs.json")
def completed_jobs_json():
    fields = set()
    jobs = backend().jobs()
    running = [_digits_entry(j, fields) for j in jobs if j["status"] not in FINISHED]
    done = [j for j in jobs if j["status"] in FINISHED]
    pretrained = [{"id": p["id"], "name": p["name"], "type": "pretrained_model", "framework": "caffe",
                   "status": "Done", "has_labels": bool(p.get("labels")), "username": ""}
                  for p in backend().pretrained_models() if p.get("kind") == "uploaded"]
    return jsonify({"running": running,
                    "datasets": [_digits_entry(j, fields) for j in done if j["kind"] == "dataset"],
                    "models": [_digits_entry(j, fields) for j in done if j["kind"] == "model"],
                    "pretrained_models": pretrained, "model_output_fields": sorted(fields)})


@digits_bp.route("/jobs/<job_id>/table_data.json")
def table_data_json(job_id):
    return jsonify({"job": _digits_entry(load_job(job_id), set())})


@digits_bp.route("/jobs/<job_id>/status")
@digits_bp.route("/models/<job_id>/status")
@digits_bp.route("/datasets/<job_id>/status")
def status_json(job_id):
    try:
        job = load_job(job_id)
    except (NotFound, ValueError):
        return jsonify({"error": "Job not found."})
    return jsonify({"error": None, "status": job["status"], "name": job["name"],
                    "type": "Generic Image Model" if job["kind"] == "model" else "Generic Image Dataset"})


@digits_bp.route("/models/<job_id>.json")
def model_json(job_id):
    job = load_job(job_id, "model")
    per_epoch = [s.get("epoch") if s.get("epoch") is not None else s["iteration"] for s in job.get("snapshots") or []]
    return jsonify({"id": job["id"], "name": job["name"], "status": job["status"], "directory": job["dir"],
                    "snapshots": per_epoch, "dataset_id": job.get("dataset_id"), "job id": job["id"],
                    "creation time": _creation_time(job), "username": job.get("owner") or "",
                    "framework": "caffe"})


@digits_bp.route("/datasets/<job_id>.json")
def dataset_json(job_id):
    job = load_job(job_id, "dataset")
    info = job.get("info") or {}
    shape = info.get("feature_shape") or []
    return jsonify({"id": job["id"], "name": job["name"], "status": job["status"], "directory": job["dir"],
                    "job id": job["id"], "creation time": _creation_time(job), "username": job.get("owner") or "",
                    "image dimensions": [shape[1], shape[2], shape[0]] if len(shape) == 3 else None,
                    "classes": info.get("classes"), "counts": info.get("counts")})


def _creation_time(job):
    import datetime
    return str(datetime.datetime.fromtimestamp(job["submitted"])) if job.get("submitted") else None


@digits_bp.route("/jobs/<job_id>", methods=["PUT"])
def digits_edit(job_id):
    job = load_job(job_id)
    fields = {}
    if "job_name" in request.form:
        fields["name"] = request.form["job_name"]
    if "job_notes" in request.form:
        fields["notes"] = request.form["job_notes"].strip()
    backend().edit_job(job_id, fields)
    return "%s updated." % ("Model" if job["kind"] == "model" else "Dataset")


@digits_bp.route("/jobs/<job_id>", methods=["DELETE"])
@digits_bp.route("/models/<job_id>", methods=["DELETE"])
@digits_bp.route("/datasets/<job_id>", methods=["DELETE"])
def digits_delete(job_id):
    load_job(job_id)
    backend().delete(job_id)
    return "Job deleted."


@digits_bp.route("/jobs/<job_id>/abort", methods=["POST"])
def digits_abort(job_id):
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


@digits_bp.route("/jobs", methods=["DELETE"])
def digits_delete_many():
    return _many("delete", "deleted")


@digits_bp.route("/abort_jobs", methods=["POST"])
def digits_abort_many():
    return _many("abort", "aborted")


@digits_bp.route("/group", methods=["POST"])
def digits_group():
    return _many("group", "regrouped", (request.values.get("group_name") or "").strip())


@digits_bp.route("/clone/<job_id>", methods=["GET", "POST"])
def digits_clone(job_id):
    job = load_job(job_id)
    return redirect(url_for("%ss.clone" % job["kind"], job_id=job_id))


# DIGITS' model form field → caffeseg's ModelForm field (digits/model/forms.py names)
DIGITS_MODEL_FIELDS = {
    "dataset": "dataset", "model_name": "model_name", "group_name": "group_name", "train_epochs": "epochs",
    "snapshot_interval": "snapshot_interval", "val_interval": "val_interval", "random_seed": "random_seed",
    "batch_size": "batch_size", "batch_accumulation": "batch_accumulation", "learning_rate": "base_lr",
    "weight_decay": "weight_decay", "rms_decay": "rms_decay", "lr_policy": "lr_policy",
    "lr_step_size": "lr_step_size", "lr_multistep_values": "lr_step_values", "use_mean": "mean_subtraction",
    "crop_size": "crop_size", "method": "network_source", "standard_networks": "standard_network",
    "previous_networks": "previous_network", "custom_network": "custom_network",
    "custom_network_snapshot": "pretrained_model", "select_gpu_count": "gpu_count", "select_gpus": "gpus"}
# the policy's own gamma / power fields of DIGITS' form
DIGITS_LR_GAMMA = {"step": "lr_step_gamma", "multistep": "lr_multistep_gamma", "exp": "lr_exp_gamma",
                   "inv": "lr_inv_gamma", "sigmoid": "lr_sigmoid_gamma"}
DIGITS_LR_POWER = {"inv": "lr_inv_power", "poly": "lr_poly_power"}
DIGITS_SOLVERS = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                  "ADADELTA": "AdaDelta", "ADAM": "Adam"}
# fields DIGITS scripts send that have no meaning here (one framework, one GPU policy)
DIGITS_IGNORED = {"framework", "select_gpu", "shuffle", "python_layer_from_client", "python_layer_server_file"}


def digits_model_form(form):
    """DIGITS' model form fields → (caffeseg ModelForm values, the fields left unused)."""
    out, unused = {}, []
    policy = form.get("lr_policy") or "step"
    for key in form:
        values = form.getlist(key)
        value = ",".join(values) if key == "select_gpus" else values[-1]
        if key in DIGITS_MODEL_FIELDS:
            out[DIGITS_MODEL_FIELDS[key]] = value
        elif key == DIGITS_LR_GAMMA.get(policy):
            out["lr_gamma"] = value
        elif key == DIGITS_LR_POWER.get(policy):
            out["lr_power"] = value
        elif key == "lr_sigmoid_step" and policy == "sigmoid":
            out["lr_step_size"] = value
        elif key == "solver_type":
            out["solver_type"] = DIGITS_SOLVERS.get(value.upper(), value)
        elif not (key.startswith("lr_") or key in DIGITS_IGNORED):
            unused.append(key)
    if out.get("mean_subtraction") in ("", None):
        out.pop("mean_subtraction", None)
    return out, unused


@digits_bp.route("/models/images/generic.json", methods=["POST"])
@digits_bp.route("/models/images/generic", methods=["POST"])
def digits_create_model():
    """DIGITS' New Model POST with its form field names; answers its job JSON ({id, name, status},
    {jobs: [...]} for a sweep) or, without .json, redirects to the model page."""
    from caffeseg.web import api_spec
    from caffeseg.web.forms import ModelForm
    from caffeseg.web.job_options import fill_model_choices, model_options
    values, unused = digits_model_form(request.form)
    if unused:
        raise BadRequest("fields caffeseg does not know: %s" % ", ".join(sorted(unused)),
                         {k: "unknown field" for k in unused})
    form = ModelForm(formdata=api_spec.with_defaults(ModelForm, values), meta={"csrf": False})
    fill_model_choices(form, backend())
    if not form.validate():
        raise BadRequest("invalid model options", api_spec.form_errors(form))
    ids = backend().create_model(model_options(form, backend()))
    jobs = [load_job(i) for i in ids]
    if not request.path.endswith(".json"):
        return redirect(url_for("models.show", job_id=ids[0]) if len(ids) == 1 else url_for("home.index", tab="model"))
    entries = [{"id": j["id"], "name": j["name"], "status": j["status"]} for j in jobs]
    return jsonify(entries[0] if len(entries) == 1 else {"jobs": entries})


@digits_bp.route("/models/<job_id>/download.<extension>")
def digits_download(job_id, extension):
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


def install(app) -> None:
    from caffeseg.web import csrf
    # the job pages include _job_panels.html, which asks for its panels itself
    app.jinja_env.globals["job_details"] = lambda job_id: backend().job_details(job_id)
    app.register_blueprint(bp)
    csrf.exempt(api_bp)
    app.register_blueprint(api_bp)
    csrf.exempt(digits_bp)
    app.register_blueprint(digits_bp)
