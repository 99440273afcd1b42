"""New model form, model page (live charts), and the model's lifecycle buttons."""
from __future__ import annotations

from flask import (Blueprint, abort, current_app, flash, redirect, render_template, request, send_file,
                   url_for)

from web.backend import BadRequest, Unavailable
from web.forms import ConfirmForm, ModelForm, choice_list, parse_number_list
from web.views.common import add_post_actions, backend, load_job

bp = Blueprint("models", __name__, url_prefix="/models")

# Names the jobs service uses in its field errors → the form's fields.
SERVICE_FIELD_NAMES = {"dataset_id": "dataset", "name": "model_name", "network": "custom_network",
                       "standard_network": "standard_network", "python_layer_file": "python_layer_server_file",
                       "python_layer_files": "python_layer_server_file", "iter_size": "batch_accumulation",
                       "pretrained": "pretrained_model", "mean": "mean_subtraction"}

MODEL_OPTION_FIELDS = ("dataset", "python_layer_server_file", "epochs", "snapshot_interval", "val_interval",
                       "random_seed", "batch_accumulation", "solver_type", "weight_decay", "lr_policy",
                       "lr_step_size", "lr_gamma", "lr_power", "mean_subtraction", "crop_size",
                       "network_source", "standard_network", "previous_network", "pretrained_network",
                       "custom_network", "group_name", "model_name", "backend")


def _safe(call, default):
    try:
        return call()
    except Unavailable:
        return default


def _fill_choices(form: ModelForm) -> dict:
    """Choices that come from the jobs store; returns the lists the template also needs."""
    datasets = [j for j in _safe(lambda: backend().jobs("dataset"), []) if j.get("kind") == "dataset"]
    form.dataset.choices = choice_list([("", "— choose a dataset —")] + [
        (j["id"], f"{j.get('name', j['id'])} ({j.get('status', '?')})") for j in datasets])
    networks = _safe(lambda: backend().standard_networks(), [])
    form.standard_network.choices = choice_list((n["name"], n.get("title", n["name"])) for n in networks)
    previous = [j for j in _safe(lambda: backend().jobs("model"), []) if j.get("kind") == "model"]
    form.previous_network.choices = choice_list((j["id"], j.get("name", j["id"])) for j in previous)
    pretrained = _safe(lambda: backend().pretrained_models(), [])
    form.pretrained_network.choices = choice_list((p["id"], p.get("name", p["id"])) for p in pretrained)
    return {"datasets": datasets, "networks": networks, "previous": previous, "pretrained": pretrained}


def _options(form: ModelForm) -> dict:
    options = {name: form[name].data for name in MODEL_OPTION_FIELDS}
    options["base_lr"] = parse_number_list(form.base_lr.data)
    options["batch_size"] = parse_number_list(form.batch_size.data, integer=True)
    options["lr_step_values"] = parse_number_list(form.lr_step_values.data)
    options["pretrained_model"] = [p.strip() for p in (form.pretrained_model.data or "").split(":") if p.strip()]
    upload = form.python_layer_upload.data
    if upload and getattr(upload, "filename", ""):
        options["python_layer_upload"] = {"filename": upload.filename, "content": upload.read()}
    if (options.get("network_source") or "standard") == "pretrained":
        # The chosen pretrained model gives the network and its weights (BadRequest when not made yet).
        from web.pretrained_store import with_network
        options = with_network(options, backend().pretrained_network(options["pretrained_network"], options["dataset"]))
    return options


def _render(form, lists, clone_of=None, status=200):
    return render_template("model_new.html", form=form, clone_of=clone_of,
                           allow_upload=current_app.config.get("ALLOW_PYTHON_LAYER_UPLOAD", True),
                           **lists), status


@bp.route("/new", methods=["GET", "POST"])
def new():
    form = ModelForm()
    lists = _fill_choices(form)
    if request.method == "GET":
        if request.args.get("dataset"):
            form.dataset.data = request.args["dataset"]
        if request.args.get("network"):
            form.standard_network.data = request.args["network"]
        elif lists["networks"]:
            form.standard_network.data = lists["networks"][0]["name"]
    if form.validate_on_submit():
        try:
            ids = backend().create_model(_options(form))
        except BadRequest as exc:
            for name, message in exc.field_errors.items():
                name = SERVICE_FIELD_NAMES.get(name, name)
                if name in form:
                    form[name].errors = list(form[name].errors) + [message]
            flash(str(exc), "error")
            return _render(form, lists, status=400)
        except Unavailable as exc:
            flash(str(exc), "error")
            return _render(form, lists, status=501)
        if len(ids) == 1:
            return redirect(url_for("models.show", job_id=ids[0]))
        flash(f"{len(ids)} models created (one per combination of values).", "ok")
        return redirect(url_for("home.index", tab="model"))
    return _render(form, lists, status=400 if request.method == "POST" else 200)


@bp.route("/<job_id>/clone")
def clone(job_id):
    job = load_job(job_id, "model")
    values = dict(backend().clone(job_id))
    for key in ("base_lr", "batch_size", "lr_step_values"):
        if isinstance(values.get(key), (list, tuple)):
            values[key] = ", ".join(str(v) for v in values[key])
    if isinstance(values.get("pretrained_model"), (list, tuple)):
        values["pretrained_model"] = ":".join(values["pretrained_model"])
    values["model_name"] = f"{job.get('name', job_id)} (clone)"
    form = ModelForm(data=values, formdata=None)
    lists = _fill_choices(form)
    return _render(form, lists, clone_of=job)


@bp.route("/<job_id>")
def show(job_id):
    job = load_job(job_id, "model")
    note = None
    try:
        evaluation = backend().evaluation(job_id)
    except Unavailable as exc:
        evaluation, note = None, str(exc)
    except (ValueError, LookupError) as exc:
        evaluation, note = None, f"The evaluation could not be read: {exc}"
    return render_template("model_show.html", job=job, evaluation=evaluation, evaluation_note=note,
                           confirm=ConfirmForm(),
                           poll_interval=current_app.config.get("POLL_INTERVAL_S", 2.0))


add_post_actions(bp, "model", {
    "abort": ("abort_job", "abort", "Training aborted."),
    "resume": ("resume", "resume", "Training resumed from the latest snapshot state."),
})


@bp.route("/<job_id>/evaluate", methods=["POST"])
def evaluate(job_id):
    """Run the deploy net over the validation set now (DIGITS does it after training)."""
    load_job(job_id, "model")
    if not ConfirmForm().validate_on_submit():
        abort(400, "missing form token")
    try:
        backend().evaluate(job_id)
        flash("Evaluation finished.", "ok")
    except (ValueError, RuntimeError, LookupError) as exc:
        flash(str(exc), "error")
    return redirect(url_for("models.show", job_id=job_id) + "#evaluation")


@bp.route("/<job_id>/delete", methods=["POST"])
def delete(job_id):
    load_job(job_id, "model")
    if not ConfirmForm().validate_on_submit():
        abort(400, "missing form token")
    try:
        backend().delete(job_id)
    except (ValueError, RuntimeError) as exc:  # e.g. still training: abort it first
        flash(str(exc), "error")
        return redirect(url_for("models.show", job_id=job_id))
    flash("Model deleted.", "ok")
    return redirect(url_for("home.index", tab="model"))


@bp.route("/<job_id>/download")
def download(job_id):
    load_job(job_id, "model")
    snapshot = request.args.get("snapshot", type=int)
    path = backend().download(job_id, snapshot)
    return send_file(path, as_attachment=True)
