"""Clinical evaluation pages and API: the whole evaluation table, per-patient LV function, EF
plots, CSV/JSON downloads, the contour / DICOM SEG take-aways, and the DICOM series read-out.

The numbers come from the jobs service (``jobs/clinical.py``, documented in docs/CLINICAL.md);
these views only route, shape and send them. ``bp``: pages (CSRF-protected forms); ``api_bp``:
the same under ``/api`` (state changes need a JSON body or X-Requested-With, as ``web.views.api``).
"""
from __future__ import annotations

import csv
import io
import re
import secrets
import shutil
import time
from pathlib import Path

from flask import Blueprint, Response, jsonify, render_template, request, send_file, url_for
from werkzeug.utils import secure_filename

from caffeseg.web.backend import BadRequest, NotFound
from caffeseg.web.views.common import require_non_form_origin
from caffeseg.web.views.common import backend, load_job

bp = Blueprint("clinical", __name__)
api_bp = Blueprint("clinical_api", __name__, url_prefix="/api")
api_bp.before_request(require_non_form_origin)

# The per-record columns, in the order of the page, the CSV and docs/CLINICAL.md.
RECORD_COLUMNS = ("key", "name", "case", "phase", "slice_index", "slice_location", "image_no",
                  "dice", "iou", "apd_mm", "apd_expert_to_pred_mm", "apd_symmetric_mm", "hausdorff_mm",
                  "good_contour", "pred_lv_area_mm2", "expert_lv_area_mm2", "pred_epi_area_mm2",
                  "expert_epi_area_mm2", "boundary_f", "pixel_accuracy", "pred_area_mm2", "label_area_mm2",
                  "expert_contour_source")
# What the page's table shows (label, column, number format digits; None: text).
PAGE_COLUMNS = (("Record", "name", None), ("Patient", "case", None), ("Phase", "phase", None),
                ("Slice", "slice_index", 0), ("Position mm", "slice_location", 1), ("Dice", "dice", 3),
                ("IoU", "iou", 3), ("APD mm", "apd_mm", 2), ("Hausdorff mm", "hausdorff_mm", 2),
                ("Good", "good_contour", None), ("Area mm² pred", "pred_lv_area_mm2", 0),
                ("Area mm² expert", "expert_lv_area_mm2", 0), ("Boundary F", "boundary_f", 3))
PATIENT_VALUES = (("EDV ml", "edv_ml"), ("ESV ml", "esv_ml"), ("SV ml", "sv_ml"), ("EF %", "ef_percent"),
                  ("Mass g", "myocardial_mass_g"))
EXPORT_FORMATS = ("contours", "dicom-seg")
SERIES_SUFFIXES = (".dcm", ".dicom", ".ima", ".zip", "")
STORED_PREFIX = re.compile(r"^\d{4}_")  # the numbering of _store_series (or of a zip's extraction)


def _evaluation(job_id: str) -> dict:
    load_job(job_id, "model")
    table = backend().evaluation(job_id)
    if not table:
        raise NotFound(f"model {job_id} has not been evaluated yet: evaluate it on its page first")
    return table


def _safe_cell(value):
    """A CSV cell a spreadsheet will not run as a formula (text starting with = + - @)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return "" if value is None else value


def records_csv(table: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RECORD_COLUMNS)
    for r in table.get("records") or []:
        writer.writerow([_safe_cell(r.get(c)) for c in RECORD_COLUMNS])
    return out.getvalue()


def _ef_points(clinical: dict) -> list[dict]:
    """The EF pairs of complete patients, for the Bland–Altman and correlation plots."""
    return [{"case": p["case"], "pred": p["pred"]["ef_percent"], "expert": p["expert"]["ef_percent"]}
            for p in clinical.get("patients") or []
            if not p.get("partial") and p["pred"].get("ef_percent") is not None
            and p["expert"].get("ef_percent") is not None]


@bp.route("/models/<job_id>/evaluation")
def page(job_id):
    job = load_job(job_id, "model")
    table = _evaluation(job_id)
    clinical = table.get("clinical") or {}
    records = table.get("records") or []
    return render_template("evaluation.html", job=job, table=table, clinical=clinical, records=records,
                           columns=PAGE_COLUMNS, patient_values=PATIENT_VALUES,
                           cases=sorted({str(r["case"]) for r in records if r.get("case") is not None}),
                           ef_points=_ef_points(clinical),
                           ef_agreement=(clinical.get("agreement") or {}).get("ef_percent"))


@bp.route("/models/<job_id>/evaluation.csv")
@api_bp.route("/jobs/<job_id>/evaluation.csv")
def download_csv(job_id):
    return Response(records_csv(_evaluation(job_id)), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="evaluation-{job_id}.csv"'})


@bp.route("/models/<job_id>/evaluation.json")
def download_json(job_id):
    response = jsonify(_evaluation(job_id))
    response.headers["Content-Disposition"] = f'attachment; filename="evaluation-{job_id}.json"'
    return response


@bp.route("/models/<job_id>/evaluation/export")
@api_bp.route("/jobs/<job_id>/clinical-export")
def export(job_id):
    """?format=contours|dicom-seg [&case=C | &record=KEY]: a zip or a .dcm to save."""
    load_job(job_id, "model")
    fmt = request.args.get("format", "contours")
    if fmt not in EXPORT_FORMATS:
        raise BadRequest(f"format must be one of {', '.join(EXPORT_FORMATS)}", {"format": "unknown"})
    case = request.args.get("case") or None
    record = request.args.get("record") or None
    name, content_type, data = backend().clinical_export(job_id, fmt, case=case, record=record)
    return send_file(io.BytesIO(data), mimetype=content_type, as_attachment=True, download_name=name)


def _store_series(job: dict, files) -> Path:
    """The uploaded files of one series in a fresh folder of the job (names made safe)."""
    chosen = [f for f in files if getattr(f, "filename", "")]
    if not chosen:
        raise BadRequest("choose the DICOM files of one series (or one zip of them)", {"files": "required"})
    folder = Path(job["dir"]) / "uploads" / f"series-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True)
    for i, f in enumerate(chosen):
        name = secure_filename(f.filename.replace("\\", "/").rsplit("/", 1)[-1]) or "upload"
        if Path(name).suffix.lower() not in SERIES_SUFFIXES:
            shutil.rmtree(folder, ignore_errors=True)
            raise BadRequest(f"{f.filename}: upload DICOM files or a zip of them", {"files": "unsupported file type"})
        f.save(str(folder / f"{i:04d}_{name}"))
    return folder


def _read_series(job: dict, files) -> dict:
    folder = _store_series(job, files)
    try:
        only = list(folder.iterdir())
        target = only[0] if len(only) == 1 else folder  # one zip or one image: itself
        result = backend().infer_series(job["id"], str(target))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for image in result.get("images") or []:  # the user's file names, without the storage prefixes
        image["source"] = STORED_PREFIX.sub("", str(image.get("source", "")))
    return result


@bp.route("/models/<job_id>/series", methods=["GET", "POST"])
def series(job_id):
    """Upload one patient's DICOM series (files or a zip): each image's LV area in mm², and the
    volumes and EF when the series has several slices at ED and ES."""
    job = load_job(job_id, "model")
    result = None
    if request.method == "POST":
        result = _read_series(job, request.files.getlist("files"))
    return render_template("series.html", job=job, result=result)


@api_bp.route("/jobs/<job_id>/infer-series", methods=["POST"])
def api_series(job_id):
    job = load_job(job_id, "model")
    return jsonify(_read_series(job, request.files.getlist("files")))


def export_url(job_id: str, fmt: str, **which) -> str:
    return url_for("clinical.export", job_id=job_id, format=fmt, **{k: v for k, v in which.items() if v})
