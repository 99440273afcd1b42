"""New model form, model page (live charts), and the model's lifecycle buttons."""
from __future__ import annotations

import re

from flask import (Blueprint, Response, current_app, flash, jsonify, redirect, render_template, request,
                   url_for)

from caffeseg.web import model_page
from caffeseg.web.backend import BadRequest, Unavailable, running_seconds
from caffeseg.web.forms import ConfirmForm, ModelForm
from caffeseg.web.job_options import (SERVICE_FIELD_NAMES, clone_form_data, fill_model_choices, model_options,
                              restore_network_tab)
from caffeseg.web.views.common import add_post_actions, backend, load_job, require_form_token

bp = Blueprint("models", __name__, url_prefix="/models")
DEFAULT_NETWORK = "fcn_alexnet"  # the network the lab starts from (the list is sorted by file name)

def _render(form, lists, clone_of=None, status=200):
    return render_template("model_new.html", form=form, clone_of=clone_of,
                           allow_upload=current_app.config.get("ALLOW_PYTHON_LAYER_UPLOAD", True),
                           **lists), status


@bp.route("/new", methods=["GET", "POST"])
def new():
    form = ModelForm()
    # ?plugin= (the menu's entry) narrows the datasets offered; a POST accepts any dataset
    lists = fill_model_choices(form, backend(), request.args.get("plugin") if request.method == "GET" else None)
    if request.method == "GET":
        if request.args.get("dataset"):
            form.dataset.data = request.args["dataset"]
        if request.args.get("network"):
            form.standard_network.data = request.args["network"]
        elif lists["networks"]:
            names = [n["name"] for n in lists["networks"]]
            form.standard_network.data = DEFAULT_NETWORK if DEFAULT_NETWORK in names else names[0]
    if form.validate_on_submit():
        try:
            ids = backend().create_model(model_options(form, backend()))
        except BadRequest as exc:
            shown = 0
            for name, message in exc.field_errors.items():
                name = SERVICE_FIELD_NAMES.get(name, name)
                if name in form:
                    form[name].errors = list(form[name].errors) + [message]
                    shown += 1
            # a message shown beside its field is not repeated in the banner
            flash("Please correct the marked fields." if shown and shown == len(exc.field_errors) else str(exc), "error")
            return _render(form, lists, status=400)
        except Unavailable as exc:
            flash(str(exc), "error")
            return _render(form, lists, status=501)
        if len(ids) == 1:  # its page shows the option check's warnings
            return redirect(url_for("models.show", job_id=ids[0]))
        flash(f"{len(ids)} models created (one per combination of values).", "ok")
        for warning in sorted({w for i in ids for w in backend().job(i).get("warnings") or []}):
            flash(f"Warning: {warning}", "info")  # the home page lists the sweep, not each job's page
        return redirect(url_for("home.index", tab="model"))
    return _render(form, lists, status=400 if request.method == "POST" else 200)


@bp.route("/new/cost")
def cost_estimate():
    """The New Model form's cost hint when no training of the network ran here yet: one training
    step measured once in the background (the form asks again while it is measuring)."""
    network, dataset = request.args.get("network", ""), request.args.get("dataset", "")
    try:
        return jsonify(backend().cost_estimate(network, dataset))
    except (BadRequest, LookupError, ValueError) as exc:
        return jsonify({"state": "error", "message": str(exc)}), 400


@bp.route("/<job_id>/clone")
def clone(job_id):
    job = load_job(job_id, "model")
    form = ModelForm(data=clone_form_data(backend().clone(job_id), f"{job.get('name', job_id)} (clone)"),
                     formdata=None)
    lists = fill_model_choices(form, backend())
    restore_network_tab(form, job, lists)
    return _render(form, lists, clone_of=job)


def _live(job: dict) -> dict:
    """What the model page refreshes while the job runs (besides the charts)."""
    status = str(job.get("status") or "")
    running = status.lower() == "running"
    snapshots = []
    for s in sorted(job.get("snapshots") or [], key=lambda s: s["iteration"], reverse=True):
        snapshots.append({"iteration": s["iteration"], "epoch": s.get("epoch"), "size": s.get("size"),
                          "file_url": url_for("files.job_file_download", job_id=job["id"], relative=s["file"]),
                          "archive_url": url_for("models.download", job_id=job["id"], snapshot=s["iteration"])})
    return {"status": status, "progress": job.get("progress"), "elapsed": running_seconds(job.get("history"), job.get("status"), job.get("elapsed")),
            "eta": job.get("eta") if running else None, "snapshots": snapshots,
            "log": (job.get("log") or "")[-LOG_TAIL:],
            "waiting_note": model_page.waiting_note(backend(), job, current_app.config.get("DATA_DIR")),
            "hardware": _hardware(job["id"])}


def _hardware(job_id: str) -> dict | None:
    """The hardware panel (device, GPU memory/utilisation, the runner's CPU and memory), or None."""
    try:
        return backend().hardware(job_id)
    except (Unavailable, LookupError, OSError):
        return None


LOG_TAIL = 20000  # characters of the log the model page shows


@bp.route("/<job_id>")
def show(job_id):
    job = load_job(job_id, "model")
    live = _live(job)
    job = dict(job, elapsed=live["elapsed"], eta=live["eta"])
    note = None
    try:
        evaluation = backend().evaluation(job_id)
    except Unavailable as exc:
        evaluation, note = None, str(exc)
    except (ValueError, LookupError) as exc:
        evaluation, note = None, f"The evaluation could not be read: {exc}"
    # Resume continues from a .solverstate; a job stopped before its first one has none
    resumable = any(str(f.get("name", "")).endswith(".solverstate") for f in job.get("files") or [])
    return render_template("model_show.html", job=job, evaluation=evaluation, evaluation_note=note,
                           confirm=ConfirmForm(), waiting_note=live["waiting_note"], resumable=resumable,
                           hardware=live["hardware"],
                           poll_interval=current_app.config.get("POLL_INTERVAL_S", 2.0))


@bp.route("/<job_id>/live")
def live(job_id):
    """The model page's poll beside the metrics: status, progress, elapsed, ETA (running only),
    snapshots and the log's tail, so the page follows the training without reloads."""
    return jsonify(_live(load_job(job_id, "model")))


add_post_actions(bp, "model", {
    "abort": ("abort_job", "abort", "Training aborted."),
    "resume": ("resume", "resume", "Training resumed from the latest snapshot state."),
})


@bp.route("/<job_id>/evaluate", methods=["POST"])
def evaluate(job_id):
    """Run the deploy net over the validation set now (DIGITS does it after training)."""
    load_job(job_id, "model")
    require_form_token()
    try:
        backend().evaluate(job_id)
        flash("Evaluation finished.", "ok")
    except (ValueError, RuntimeError, LookupError) as exc:
        flash(str(exc), "error")
    return redirect(url_for("models.show", job_id=job_id) + "#evaluation")


@bp.route("/<job_id>/delete", methods=["POST"])
def delete(job_id):
    load_job(job_id, "model")
    require_form_token()
    try:
        backend().delete(job_id)
    except (ValueError, RuntimeError) as exc:  # e.g. still training: abort it first
        flash(str(exc), "error")
        return redirect(url_for("models.show", job_id=job_id))
    flash("Model deleted.", "ok")
    return redirect(url_for("home.index", tab="model"))


@bp.route("/<job_id>/download")
def download(job_id):
    job = load_job(job_id, "model")
    snapshot = request.args.get("snapshot", type=int)
    iterations = [s.get("iteration") for s in job.get("snapshots") or []]
    problem = None
    if not iterations:
        problem = "This model has no snapshot yet: it can be downloaded after its first snapshot is written."
    elif snapshot is not None and snapshot not in iterations:
        problem = f"This model has no snapshot at iteration {snapshot}."
    if problem is None:
        try:  # the bytes flow while the archive is built the first time (then it is cached)
            path, chunks = backend().download_stream(job_id, snapshot)
        except (ValueError, LookupError, OSError) as exc:  # e.g. the snapshot vanished meanwhile
            problem = f"The model could not be packed for download: {exc}"
    if problem is not None:
        flash(problem, "error")
        return redirect(url_for("models.show", job_id=job_id))
    name = model_page.download_name(job, path, snapshot, iterations)
    response = Response(chunks, mimetype="application/gzip")
    response.headers.set("Content-Disposition", "attachment", filename=name)
    token = request.args.get("download_token", "")
    if re.fullmatch(r"[a-z0-9]{1,16}", token):  # the model page's "preparing…" note ends when this arrives
        response.set_cookie("caffeseg_download", token, max_age=120, samesite="Strict",
                            path=url_for("models.show", job_id=job_id))
    return response
