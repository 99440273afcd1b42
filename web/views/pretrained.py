"""The home page's Pretrained Models tab: upload and delete pretrained models (DIGITS' "Upload
Pretrained Model"), upload a model archive (a caffeseg or DIGITS download), an uploaded model's
layers with pictures of their weights, and prepare a known public model on the server.

Uploads are stored under ``DATA_DIR/pretrained/uploaded/<id>/`` with names the server chooses;
the request size is limited by ``MAX_PRETRAINED_UPLOAD``. Preparing downloads a known model
(from ``PRETRAINED_MIRRORS`` when set), checks it and runs its surgery in the background.
``api_bp``: every ``/api/pretrained`` route: list, upload, delete, prepare, the network a model
would get, archive upload, layers."""
from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, flash, jsonify, redirect, render_template, request, url_for

from caffeseg.web import api_spec, pretrained_store
from caffeseg.web.backend import BadRequest, NotFound, Unavailable
from caffeseg.web.forms import PretrainedUploadForm
from caffeseg.web.safety import check_job_id
from caffeseg.web.views.common import backend, load_job, require_form_token, require_non_form_origin

bp = Blueprint("pretrained", __name__, url_prefix="/pretrained")
api_bp = Blueprint("pretrained_api", __name__, url_prefix="/api/pretrained")
api_bp.before_request(require_non_form_origin)

# the routes that receive weights (a caffemodel, or an archive holding one): MAX_PRETRAINED_UPLOAD
UPLOAD_ENDPOINTS = ("pretrained.upload", "pretrained_api.api_upload",
                    "pretrained.upload_archive", "pretrained_api.api_upload_archive")


@bp.route("/upload", methods=["POST"])
def upload():
    from caffeseg.web.views.home import render_home
    form = PretrainedUploadForm()
    if not form.validate_on_submit():
        for name, messages in form.errors.items():
            for message in messages:
                label = form[name].label.text if name in form else name
                flash(f"{label}: {message}", "error")
        return render_home("pretrained", upload=form, status=400)  # what the user typed stays
    try:
        entry = pretrained_store.upload_from_form(backend(), form)
    except (BadRequest, Unavailable) as exc:
        flash(f"The pretrained model was not stored: {exc}", "error")
        return render_home("pretrained", upload=form, status=400)
    flash(f"Pretrained model {entry['name']} stored; choose it under New Model › Pretrained Networks.", "ok")
    return redirect(url_for("home.index", tab="pretrained"))


@bp.route("/<pretrained_id>/delete", methods=["POST"])
def delete(pretrained_id):
    check_job_id(pretrained_id)
    require_form_token()
    try:
        backend().delete_pretrained(pretrained_id)
        flash("Pretrained model deleted.", "ok")
    except (BadRequest, NotFound, Unavailable) as exc:
        flash(str(exc), "error")
    return redirect(url_for("home.index", tab="pretrained"))


@bp.route("/known/<name>/prepare", methods=["POST"])
def prepare(name):
    require_form_token()
    back = redirect(url_for("home.index", tab="pretrained"))
    try:
        variant = request.form.get("variant", "")
        backend().prepare_pretrained(name, pretrained_store.variant_is_gray(variant))
    except NotFound:
        abort(404)
    except (BadRequest, Unavailable) as exc:
        flash(f"{name} was not prepared: {exc}", "error")
        return back
    flash(f"Preparing {name} ({variant} weights) on the server: download, check, conversion. "
          "Its row shows the progress.", "ok")
    return back


@bp.route("/archive", methods=["GET", "POST"])
def upload_archive():
    error = None
    if request.method == "POST":
        require_form_token()
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


@bp.route("/<pretrained_id>/layers")
def layers_page(pretrained_id):
    """An uploaded pretrained model's layers with parameter shapes and counts, and per layer a
    picture of its weights (DIGITS' pretrained model page and layer visualisations)."""
    entry = next((p for p in backend().pretrained_models() if p["id"] == pretrained_id), None)
    if entry is None:
        raise NotFound("no pretrained model %r" % (pretrained_id,))
    return render_template("pretrained_layers.html", entry=entry, table=backend().pretrained_layers(pretrained_id))


@bp.route("/<pretrained_id>/layers/<path:layer>.png")
def layer_png(pretrained_id, layer):
    image = backend().pretrained_layer_image(pretrained_id, layer)
    if image is None:
        abort(404, "the weights of %s are not 4-D: no picture" % layer)
    return Response(image, mimetype="image/png")


@api_bp.route("")
def api_list():
    return jsonify(backend().pretrained_models())


@api_bp.route("", methods=["POST"])
def api_upload():
    form = PretrainedUploadForm(meta={"csrf": False})
    if not form.validate():
        raise BadRequest("invalid pretrained model upload", api_spec.form_errors(form))
    return jsonify(pretrained_store.upload_from_form(backend(), form)), 201


@api_bp.route("/<pretrained_id>", methods=["DELETE"])
def api_delete(pretrained_id):
    check_job_id(pretrained_id)
    backend().delete_pretrained(pretrained_id)
    return jsonify({"deleted": pretrained_id})


@api_bp.route("/<name>/prepare", methods=["POST"])
def api_prepare(name):
    """Start downloading and converting a known model on the server; 202 with its state."""
    body = request.get_json(silent=True) or {}
    state = backend().prepare_pretrained(name, pretrained_store.variant_is_gray(body.get("variant", "")))
    return jsonify(state), 202


@api_bp.route("/<pretrained_id>/network")
def api_network(pretrained_id):
    """The network and weights a model job gets from this pretrained model on ``?dataset=ID``."""
    check_job_id(pretrained_id)
    dataset = request.args.get("dataset") or None
    if dataset:
        load_job(dataset, "dataset")
    chosen = dict(backend().pretrained_network(pretrained_id, dataset))
    if chosen.get("standard_network"):
        texts = {n["name"]: n.get("text") for n in backend().standard_networks()}
        chosen["network_text"] = texts.get(chosen["standard_network"])
    return jsonify(chosen)


@api_bp.route("/archive", methods=["POST"])
def api_upload_archive():
    archive = request.files.get("archive")
    if archive is None or not archive.filename:
        raise BadRequest("send the archive as the multipart field 'archive'", {"archive": "missing"})
    return jsonify(backend().upload_pretrained_archive(archive, request.form.get("name"))), 201


@api_bp.route("/<pretrained_id>/layers")
def api_layers(pretrained_id):
    return jsonify(backend().pretrained_layers(pretrained_id))


def upload_limit(config) -> int | None:
    """The byte limit of the pretrained upload endpoints: MAX_PRETRAINED_UPLOAD; 0 (or None) means
    no limit at all on them (the page says "any size"), never MAX_CONTENT_LENGTH."""
    limit = config.get("MAX_PRETRAINED_UPLOAD")
    return int(limit) if limit else None


def install_upload_limit(app) -> None:
    """Pretrained uploads (models and archives) may exceed MAX_CONTENT_LENGTH: raise the limit for
    their endpoints only. Registered before CSRFProtect, whose check reads the body first."""
    import sys

    from flask import request

    @app.before_request
    def _pretrained_upload_limit():
        if request.endpoint in UPLOAD_ENDPOINTS:
            # None on the request would fall back to MAX_CONTENT_LENGTH (Flask): no limit is maxsize.
            request.max_content_length = upload_limit(current_app.config) or sys.maxsize
