"""Home page: the Datasets / Models / Pretrained Models tabs, and bulk delete/abort."""
from __future__ import annotations

from collections import OrderedDict

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from caffeseg.web.backend import Unavailable
from caffeseg.web.forms import BulkForm, ConfirmForm, PretrainedUploadForm
from caffeseg.web.safety import UnsafePath, check_job_id
from caffeseg.web.views.common import backend

bp = Blueprint("home", __name__)

TABS = (("dataset", "Datasets"), ("model", "Models"), ("pretrained", "Pretrained Models"))


def _grouped(jobs: list[dict]) -> "OrderedDict[str, list[dict]]":
    """Jobs by group name, ungrouped ("") first, newest first inside each group."""
    groups: "OrderedDict[str, list[dict]]" = OrderedDict([("", [])])
    for job in sorted(jobs, key=lambda j: j.get("submitted") or 0, reverse=True):
        groups.setdefault(job.get("group") or "", []).append(job)
    return groups


@bp.route("/")
def index():
    return render_home(request.args.get("tab", "dataset"))


def render_home(active: str, upload: PretrainedUploadForm | None = None, status: int = 200):
    """The home page on tab ``active``; ``upload`` is a pretrained-upload form to show again
    (a refused upload keeps what the user typed, beside its errors)."""
    try:
        jobs = backend().jobs()
        error = None
    except Unavailable as exc:
        jobs, error = [], str(exc)
    try:
        pretrained = backend().pretrained_models()
    except Unavailable:
        pretrained = []
    tabs = []
    for kind, title in TABS:
        mine = [j for j in jobs if j.get("kind") == kind]
        # every output the jobs record (DIGITS' model table); the validation outputs and the
        # training loss show by default, the column chooser (js/home_tables.js) shows the rest
        metric_names = sorted({m for j in mine for m in (j.get("metrics") or {})},
                              key=lambda m: (not m.startswith("val/"), m != "train/loss", m))
        # The pretrained tab lists weight files, not jobs: its count is theirs.
        count = len(pretrained) if kind == "pretrained" else len(mine)
        tabs.append({"kind": kind, "title": title, "groups": _grouped(mine), "count": count,
                     "metric_names": metric_names,
                     "shown_metrics": [m for m in metric_names if m.startswith("val/") or m == "train/loss"][:4]})
    dataset_names = {j["id"]: j.get("name") or j["id"] for j in jobs if j.get("kind") == "dataset"}
    try:
        gpus = backend().gpu_summary()  # "n of m GPUs free" above the tabs
    except Unavailable:
        gpus = None
    return render_template("home.html", tabs=tabs, active=active, error=error, bulk=BulkForm(), dataset_names=dataset_names,
                           pretrained=pretrained, upload=upload or PretrainedUploadForm(), confirm=ConfirmForm(),
                           max_pretrained_upload=current_app.config.get("MAX_PRETRAINED_UPLOAD"), gpus=gpus), status


@bp.route("/jobs/bulk", methods=["POST"])
def bulk():
    form = BulkForm()
    ids = request.form.getlist("job_ids")
    tab = request.form.get("tab", "dataset")
    if not form.validate_on_submit():
        flash("Choose an action.", "error")
        return redirect(url_for("home.index", tab=tab))
    done, failed = 0, []
    if form.action.data == "group" and ids:  # DIGITS' "move to group": each job on its own
        result = backend().bulk_jobs("group", [check_job_id(j) for j in ids], (form.group_name.data or "").strip())
        done, failed = len(result["done"]), [f"{j}: {why}" for j, why in sorted(result["errors"].items())]
        ids = []
    for job_id in ids:
        try:
            check_job_id(job_id)
            if form.action.data == "delete":
                backend().delete(job_id)
            else:
                backend().abort(job_id)
            done += 1
        except (UnsafePath, Unavailable, LookupError, ValueError, PermissionError) as exc:
            failed.append(f"{job_id}: {exc}")
    verb = {"delete": "deleted", "abort": "aborted", "group": "moved"}[form.action.data]
    ids = ids or request.form.getlist("job_ids")
    if done:
        flash(f"{done} job(s) {verb}.", "ok")
    for message in failed:
        flash(message, "error")
    if not ids:
        flash("Select at least one job.", "error")
    return redirect(url_for("home.index", tab=tab))
