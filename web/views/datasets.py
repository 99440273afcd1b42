"""New dataset form (built from the plugin), dataset page and the record explorer."""
from __future__ import annotations

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for

from caffeseg.web import imaging
from caffeseg.web.backend import BadRequest, Unavailable
from caffeseg.web.forms import GENERIC_DATASET_FIELDS, ConfirmForm, dataset_form_class
from caffeseg.web.safety import check_job_id
from caffeseg.web.views.common import add_post_actions, backend, load_job, plugin_by_id, require_form_token

bp = Blueprint("datasets", __name__, url_prefix="/datasets")

STAGES = ("train", "val")
PAGE_SIZE = 12


def _render_form(plugin, form, clone_of=None, sample=None):
    plugin_fields = [form[name] for name in form.plugin_field_names]
    generic_fields = [form[name] for name in GENERIC_DATASET_FIELDS]
    return render_template("dataset_new.html", plugin=plugin, form=form, plugin_fields=plugin_fields,
                           generic_fields=generic_fields, clone_of=clone_of, sample=sample)


@bp.route("/new/<plugin_id>", methods=["GET", "POST"])
def new(plugin_id):
    plugin = plugin_by_id(plugin_id)
    form = dataset_form_class(plugin)()
    if form.validate_on_submit():
        values = {name: form[name].data for name in form.plugin_field_names}
        options = {name: form[name].data for name in GENERIC_DATASET_FIELDS}
        try:
            job_id = backend().create_dataset(plugin.id, values, options)
        except BadRequest as exc:
            shown = [name for name in exc.field_errors if name in form]
            for name in shown:
                form[name].errors = list(form[name].errors) + [exc.field_errors[name]]
            # errors shown beside their fields are not repeated (with internal names) in the banner
            flash("Please correct the marked fields." if shown and len(shown) == len(exc.field_errors)
                  else str(exc), "error")
            return _render_form(plugin, form), 400
        except Unavailable as exc:
            flash(str(exc), "error")
            return _render_form(plugin, form), 501
        return redirect(url_for("datasets.show", job_id=job_id))
    status = 400 if request.method == "POST" else 200
    sample = None
    if request.method == "GET":
        sample = _prefill_sample(plugin.id, form)
    return _render_form(plugin, form, sample=sample), status


# The sample phantom `caffeseg serve` writes into DATA_DIR/sample (as caffeseg lab uses it).
SAMPLE_FOLDERS = {"sunnybrook": {"image_folder": "challenge_training", "contour_folder": "TrainingDataContours"}}


def _prefill_sample(plugin_id: str, form) -> str | None:
    """Fill the empty folder fields with the sample's when DATA_DIR/sample has them; returns the folder."""
    from pathlib import Path
    from flask import current_app
    folders = SAMPLE_FOLDERS.get(plugin_id)
    root = Path(current_app.config.get("DATA_DIR") or ".") / "sample"
    if not folders or not all((root / sub).is_dir() for sub in folders.values()):
        return None
    for name, sub in folders.items():
        if name in form and not form[name].data:
            form[name].data = str(root / sub)
    return str(root)


@bp.route("/<job_id>/clone")
def clone(job_id):
    job = load_job(job_id, "dataset")
    values = backend().clone(job_id)
    plugin = plugin_by_id(values.get("plugin") or job.get("plugin") or "sunnybrook")
    form_cls = dataset_form_class(plugin)
    form = form_cls(data={**(values.get("values") or {}), **(values.get("options") or {})}, formdata=None)
    form.dataset_name.data = f"{job.get('name', job_id)} (clone)"
    return _render_form(plugin, form, clone_of=job)


def _labelled_options(values: dict, plugin_id: str | None) -> list[tuple[str, str]]:
    """The plugin's form values as its form shows them: field labels, choice labels, yes/no."""
    try:
        fields = {f.name: f for f in plugin_by_id(plugin_id or "sunnybrook").form_fields()}
    except LookupError:  # the plugin is gone or broken: the raw keys are all there is
        fields = {}
    out = []
    for key, value in values.items():
        spec = fields.get(key)
        if spec is not None and spec.choices:
            value = dict((str(v), label) for v, label in spec.choices).get(str(value), value)
        if isinstance(value, bool):
            value = "yes" if value else "no"
        out.append((spec.label if spec is not None else key.replace("_", " "), "–" if value in (None, "") else str(value)))
    return out


@bp.route("/<job_id>")
def show(job_id):
    job = load_job(job_id, "dataset")
    info = job.get("info") or {}
    options = _labelled_options(info.get("form_values") or {}, job.get("plugin"))
    try:  # a dataset that models use cannot be deleted: the page says so up front
        used_by = [j for j in backend().jobs() if j.get("kind") == "model" and j.get("dataset_id") == job_id]
    except Unavailable:
        used_by = []
    return render_template("dataset_show.html", job=job, info=info, options=options, confirm=ConfirmForm(),
                           stages=STAGES, used_by=used_by)


@bp.route("/<job_id>/explore")
def explore(job_id):
    job = load_job(job_id, "dataset")
    stage = request.args.get("stage", "train")
    if stage not in STAGES:
        abort(400, f"unknown stage {stage!r}; use train or val")
    page = max(1, request.args.get("page", 1, type=int))  # as shown: the first page is 1
    try:
        listing = backend().dataset_records(job_id, stage, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        error = None
    except Unavailable as exc:
        listing, error = {"total": 0, "records": []}, str(exc)
    pages = max(1, -(-int(listing.get("total", 0)) // PAGE_SIZE))
    if page > pages:
        return redirect(url_for("datasets.explore", job_id=job_id, stage=stage, page=pages))
    return render_template("dataset_explore.html", job=job, stage=stage, page=page, pages=pages,
                           listing=listing, error=error, stages=STAGES)


@bp.route("/<job_id>/records/<stage>/<int:index>/<kind>.png")
def record_png(job_id, stage, index, kind):
    check_job_id(job_id)
    if stage not in STAGES or kind not in ("feature", "label"):
        abort(404)
    feature, label, meta = backend().dataset_record(job_id, stage, index)
    if kind == "feature":
        low = request.args.get("low", 1.0, type=float)
        high = request.args.get("high", 99.0, type=float)
        data = imaging.feature_png(feature, low, high)
    else:
        if label is None:
            abort(404, "this record has no label")
        data = imaging.label_png(label, (meta or {}).get("palette"))
    return Response(data, mimetype="image/png", headers={"Cache-Control": "max-age=3600"})


# Abort a queued or running build; "Build again" is the service's resume of a dataset (it is
# queued again after an error, an abort or an interruption).
add_post_actions(bp, "dataset", {"abort": ("abort_build", "abort", "Dataset build aborted."),
                                 "rebuild": ("rebuild", "resume", "Dataset queued to be built again.")})


@bp.route("/<job_id>/delete", methods=["POST"])
def delete(job_id):
    load_job(job_id, "dataset")
    require_form_token()
    try:
        backend().delete(job_id)
    except (ValueError, RuntimeError) as exc:
        flash(str(exc), "error")
        return redirect(url_for("datasets.show", job_id=job_id))
    flash("Dataset deleted.", "ok")
    return redirect(url_for("home.index", tab="dataset"))
