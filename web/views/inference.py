"""Inference: choose a snapshot and a record (or upload an image); result and compare pages.

Results are computed and stored by ``web.inference_store``, the record each compared model
shows is chosen by ``web.compare_records``; these views only route.
"""
from __future__ import annotations

import os
import re

from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, url_for

from caffeseg.web import inference_store as store
from caffeseg.web.backend import BadRequest, Unavailable
from caffeseg.web.compare_records import records_offered, same_record_everywhere
from caffeseg.web.forms import InferenceForm, choice_list
from caffeseg.web.safety import check_job_id, job_file
from caffeseg.web.views.common import backend, load_job

bp = Blueprint("inference", __name__)


def _snapshot_choices(job: dict) -> list[tuple[str, str]]:
    snaps = sorted(job.get("snapshots") or [], key=lambda s: s.get("iteration", 0), reverse=True)
    out = []
    for s in snaps:
        epoch = s.get("epoch")
        label = f"Iteration {s['iteration']}" + (f" (epoch {epoch:g})" if isinstance(epoch, (int, float)) else "")
        out.append((str(s["iteration"]), label))
    return out


def _form_for(job):
    form = InferenceForm()
    form.snapshot.choices = choice_list(_snapshot_choices(job))
    records = store.val_records(backend(), job)
    form.record.choices = choice_list([("", "— choose a record —")] + [(r["key"], r.get("name") or r["key"]) for r in records])
    return form, records


@bp.route("/models/<job_id>/infer", methods=["GET", "POST"])
def infer(job_id):
    job = load_job(job_id, "model")
    form, records = _form_for(job)
    error = None
    if form.validate_on_submit():
        snapshot = int(form.snapshot.data) if (form.snapshot.data or "").isdigit() else None
        upload = form.image.data
        which = request.form.get("which")
        try:
            if upload and getattr(upload, "filename", "") and which != "record":
                token = store.run_inference(backend(), job, snapshot, image_path=store.store_upload(job, upload),
                                      visualize=form.visualize.data, resize=not form.no_resize.data,
                                      upload_name=os.path.basename(upload.filename.replace("\\", "/")))
            elif (form.server_path.data or "").strip() and which != "record":
                path = form.server_path.data.strip()
                token = store.run_inference(backend(), job, snapshot,
                                            image_path=store.store_server_file(job, path, current_app.config["DATA_ROOTS"]),
                                            visualize=form.visualize.data, resize=not form.no_resize.data,
                                            upload_name=os.path.basename(path))
            elif form.record.data:
                token = store.record_inference(backend(), job, form.record.data, snapshot, visualize=form.visualize.data)
            else:
                raise BadRequest("choose a validation record or upload an image")
            return redirect(url_for("inference.result", job_id=job_id, token=token))
        except (BadRequest, Unavailable) as exc:
            error = str(exc)
    elif request.method == "POST":
        error = "; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items())
    status = 400 if request.method == "POST" else 200
    return render_template("infer_form.html", job=job, form=form, records=records, error=error), status


@bp.route("/models/<job_id>/infer/record/<path:key>")
def infer_record(job_id, key):
    """One validation record under the newest (or ``?snapshot=N``) snapshot — the evaluation
    table's links. Idempotent: the result is computed once per (snapshot, record) and reused."""
    job = load_job(job_id, "model")
    token = store.record_inference(backend(), job, key, request.args.get("snapshot", type=int))
    return redirect(url_for("inference.result", job_id=job_id, token=token))


@bp.route("/models/<job_id>/inference/<token>")
def result(job_id, token):
    job = load_job(job_id, "model")
    res = store.load_result(job, token)
    return render_template("infer_result.html", job=job, result=res)


@bp.route("/models/<job_id>/inference/<token>/<name>.png")
def result_png(job_id, token, name):
    check_job_id(job_id)
    if name not in ("image", "prediction", "label", "probability") and not re.fullmatch(r"layer-\d{1,5}", name):
        abort(404)  # layer-<n>: a layer's picture (web.inference_store)
    job = load_job(job_id, "model")
    store.load_result(job, token)
    path = job_file(job["dir"], f"inference/{token}/{name}.png")
    if not path.is_file():
        abort(404)
    return Response(path.read_bytes(), mimetype="image/png")


@bp.route("/models/<job_id>/inference/<token>/probabilities.npy")
def result_probabilities(job_id, token):
    """Every class's probability of a result, float16 C x H x W (numpy .npy), as DIGITS'
    infer_one.json gave the raw outputs; the class map is the prediction PNG."""
    check_job_id(job_id)
    job = load_job(job_id, "model")
    store.load_result(job, token)
    path = job_file(job["dir"], f"inference/{token}/probabilities.npy")
    if not path.is_file():
        abort(404, "this result keeps no probabilities (made before they were stored)")
    return Response(path.read_bytes(), mimetype="application/octet-stream",
                    headers={"Content-Disposition": f"attachment; filename={token}-probabilities.npy"})


@bp.route("/compare")
def compare():
    """The same validation record under two or more models, side by side."""
    model_ids = [check_job_id(m) for m in request.args.getlist("models") if m]
    record = request.args.get("record", "")
    models = [j for j in _safe_jobs("model")]
    panels, error = [], None
    if model_ids and record:
        jobs = [load_job(model_id, "model") for model_id in model_ids[:6]]
        for job, key, refusal in same_record_everywhere(backend(), jobs, record):
            if refusal:
                panels.append({"job": job, "error": refusal})
                continue
            try:
                token = store.record_inference(backend(), job, key)
                panels.append({"job": job, "result": store.load_result(job, token), "token": token})
            except (BadRequest, Unavailable, LookupError, ValueError) as exc:
                panels.append({"job": job, "error": str(exc)})
    elif request.args:  # the form was sent with something missing (a bare /compare is the empty form)
        missing = ([] if model_ids else ["tick at least one model"]) + ([] if record else ["choose a validation record"])
        error = "Nothing compared yet: " + " and ".join(missing) + "."
    listing = records_offered(backend(), model_ids)
    datasets = {j["id"]: j.get("name") or j["id"] for j in _safe_jobs("dataset")}
    return render_template("compare.html", models=models, chosen=model_ids, record=record, dataset_names=datasets,
                           records=listing["records"], records_note=listing["note"], panels=panels, error=error)


@bp.route("/compare/records")
def compare_records():
    """JSON: the records the compare form offers for the ticked models (``?models=A&models=B``)."""
    model_ids = [check_job_id(m) for m in request.args.getlist("models") if m]
    return records_offered(backend(), model_ids)


def _safe_jobs(kind):
    try:
        return [j for j in backend().jobs(kind) if j.get("kind") == kind]
    except Unavailable:
        return []
