"""The JSON API: everything the pages do, for scripts and for the pages' own JavaScript.

Documented in ``web/openapi.yaml`` (served at ``/api/openapi.yaml``). Errors are
``{"error": message, "status": code}``. Requests that change state must either carry a JSON
body or the header ``X-Requested-With`` — neither can be produced by a cross-site HTML form,
which is what CSRF protection has to stop.
"""
from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request, send_file, url_for

from caffeseg.web.backend import BadRequest
from caffeseg.web.forms import GENERIC_DATASET_FIELDS, ModelForm, dataset_form_class
from caffeseg.web.safety import check_job_id, complete_path
from caffeseg.web.views.common import (backend, create_model_from_fields, job_json, json_body, load_job, plugin_by_id,
                                       plugins, require_non_form_origin)
from caffeseg.web import api_spec, inference_store

bp = Blueprint("api", __name__, url_prefix="/api")

bp.before_request(require_non_form_origin)


@bp.route("/health")
def health():
    return jsonify({"status": "ok"})


@bp.route("/openapi.yaml")
def openapi():
    """The spec, shown as text in a browser (``?download=1``: as a file to save)."""
    if request.args.get("download"):
        return Response(api_spec.OPENAPI_PATH.read_text(), mimetype="application/yaml",
                        headers={"Content-Disposition": "attachment; filename=openapi.yaml"})
    return Response(api_spec.OPENAPI_PATH.read_text(), mimetype="text/plain")


@bp.route("/")
def reference():
    """The API reference as a page (the nav's API link): every operation of openapi.yaml."""
    info, operations = api_spec.operations()
    return render_template("api_reference.html", info=info, operations=operations)


@bp.route("/plugins")
def list_plugins():
    return jsonify([{"id": p.id, "title": p.title, "category": p.category,
                     "fields": [{"name": f.name, "label": f.label, "kind": f.kind, "default": f.default,
                                 "help": f.help, "choices": [list(c) for c in f.choices], "required": f.required}
                                for f in p.form_fields()]} for p in plugins()])


@bp.route("/jobs")
def list_jobs():
    kind = request.args.get("kind")
    jobs = backend().jobs(kind)
    if kind:
        jobs = [j for j in jobs if j.get("kind") == kind]
    return jsonify(jobs)


@bp.route("/jobs/<job_id>", methods=["GET"])
def show_job(job_id):
    return jsonify(job_json(load_job(job_id)))


@bp.route("/jobs/<job_id>", methods=["DELETE"])
def delete_job(job_id):
    load_job(job_id)
    backend().delete(job_id)
    return jsonify({"deleted": job_id})


@bp.route("/jobs/<job_id>/metrics")
def metrics(job_id):
    check_job_id(job_id)
    since = max(0, request.args.get("since", 0, type=int))
    return jsonify(backend().metrics(job_id, since))


@bp.route("/jobs/<job_id>/log")
def log(job_id):
    job = load_job(job_id)
    return Response(job.get("log") or "", mimetype="text/plain")


@bp.route("/jobs/<job_id>/<action>", methods=["POST"])
def job_action(job_id, action):
    load_job(job_id)
    if action == "abort":
        backend().abort(job_id)
    elif action == "resume":
        backend().resume(job_id)
    elif action == "clone":
        return jsonify(backend().clone(job_id))
    elif action == "evaluate":
        return jsonify(backend().evaluate(job_id))
    else:
        abort(404, f"unknown action {action!r}; use abort, resume, clone or evaluate")
    return jsonify(load_job(job_id) | {"log": None})


@bp.route("/datasets", methods=["POST"])
def create_dataset():
    body = json_body()
    api_spec.refuse_unknown_keys(body, {"plugin", "values", "options"})
    plugin = plugin_by_id(str(body.get("plugin") or ""))
    flat = {**(body.get("values") or {}), **(body.get("options") or {})}
    form_cls = dataset_form_class(plugin)
    api_spec.refuse_unknown_keys(flat, api_spec.form_field_names(form_cls), "values/options")
    form = form_cls(formdata=api_spec.with_defaults(form_cls, flat), meta={"csrf": False})
    if not form.validate():
        raise BadRequest("invalid dataset options", api_spec.form_errors(form))
    values = {name: form[name].data for name in form.plugin_field_names}
    options = {name: form[name].data for name in GENERIC_DATASET_FIELDS}
    job_id = backend().create_dataset(plugin.id, values, options)
    return jsonify({"id": job_id, "url": url_for("datasets.show", job_id=job_id)}), 201


@bp.route("/datasets/<job_id>/records")
def dataset_records(job_id):
    load_job(job_id, "dataset")
    stage = request.args.get("stage", "train")
    if stage not in ("train", "val"):
        raise BadRequest(f"unknown stage {stage!r}; use train or val")
    offset = max(0, request.args.get("offset", 0, type=int))
    limit = min(1000, max(1, request.args.get("limit", 50, type=int)))
    listing = backend().dataset_records(job_id, stage, offset, limit)
    for rec in listing.get("records", []):
        rec["feature_url"] = url_for("datasets.record_png", job_id=job_id, stage=stage, index=rec["index"],
                                     kind="feature")
        rec["label_url"] = url_for("datasets.record_png", job_id=job_id, stage=stage, index=rec["index"],
                                   kind="label")
    return jsonify(listing)


@bp.route("/models", methods=["POST"])
def create_model():
    body = json_body()
    api_spec.refuse_unknown_keys(body, api_spec.form_field_names(ModelForm))
    flat = {}
    for key, value in body.items():
        if isinstance(value, list):
            value = (":" if key == "pretrained_model" else ",").join(str(v) for v in value)
        flat[key] = value
    ids = create_model_from_fields(flat)
    return jsonify({"ids": ids, "urls": [url_for("models.show", job_id=i) for i in ids]}), 201


@bp.route("/networks")
def networks():
    return jsonify({"standard": backend().standard_networks(), "pretrained": backend().pretrained_models()})


@bp.route("/network/inspect", methods=["POST"])
def inspect_network():
    body = json_body()
    api_spec.refuse_unknown_keys(body, {"text", "dataset"})
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("send the network as {\"text\": \"...prototxt...\"}")
    dataset = body.get("dataset") or None
    if dataset:
        check_job_id(dataset)
    return jsonify(backend().inspect_network(text, dataset))


@bp.route("/paths/complete")
def complete():
    prefix = request.args.get("prefix", "")
    return jsonify({"prefix": prefix, "roots": current_app.config["DATA_ROOTS"],
                    "completions": complete_path(prefix, current_app.config["DATA_ROOTS"])})


@bp.route("/jobs/<job_id>/evaluation")
def evaluation(job_id):
    load_job(job_id, "model")
    return jsonify(backend().evaluation(job_id))


@bp.route("/jobs/<job_id>/download")
def download(job_id):
    load_job(job_id, "model")
    path = backend().download(job_id, request.args.get("snapshot", type=int))
    return send_file(path, as_attachment=True)


@bp.route("/jobs/<job_id>/infer", methods=["POST"])
def infer(job_id):
    job = load_job(job_id, "model")
    body = json_body() if not request.files else request.form.to_dict()
    snapshot = body.get("snapshot")
    snapshot = int(snapshot) if str(snapshot or "").isdigit() else None
    visualize = str(body.get("visualize", "")).lower() in ("1", "true", "yes", "y", "on")
    upload = request.files.get("image")
    if upload and upload.filename:
        path = inference_store.store_upload(job, upload)
        token = inference_store.run_inference(backend(), job, snapshot, image_path=path, visualize=visualize)
    elif body.get("record"):
        token = inference_store.record_inference(backend(), job, str(body["record"]), snapshot, visualize=visualize)
    else:
        raise BadRequest("give a validation record key ('record') or upload an image ('image')")
    result = inference_store.load_result(job, token)
    urls = {name: url_for("inference.result_png", job_id=job_id, token=token, name=name)
            for name in ("image", "prediction") + (("label",) if result.get("has_label") else ())}
    # "probabilities": the compact answer DIGITS' infer_one.json gave raw: the class map (8-bit
    # PNG of the argmax, the prediction URL) and every class's probability as a float16 .npy
    if str(body.get("probabilities", "")).lower() in ("1", "true", "yes", "y", "on") and result.get("has_probabilities"):
        urls["probabilities"] = url_for("inference.result_probabilities", job_id=job_id, token=token)
    return jsonify(result | {"urls": urls, "page": url_for("inference.result", job_id=job_id, token=token)}), 201
