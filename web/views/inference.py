"""Inference: choose a snapshot and a record (or upload an image); result and compare pages.

Results are rendered once to PNGs (windowed image, class maps) plus ``result.json`` in
``<job dir>/inference/<token>/``; the result page composes them client-side (opacity, mask,
outline width) so moving a slider never goes back to the server.

A validation record's result has a deterministic token, ``rec-<snapshot iteration>-<hash of the
key>`` (``-viz`` with layer statistics): asking for the same record under the same snapshot again
(the evaluation table's links, the compare view, the form) reuses the stored result. The stored
result also keeps the snapshot file's size and mtime, so a snapshot rewritten under the same
iteration (a resumed training) is inferred again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path

import numpy as np
from flask import Blueprint, Response, abort, render_template, request, url_for, redirect
from werkzeug.utils import secure_filename

from web import imaging
from web.backend import BadRequest, Unavailable
from web.forms import InferenceForm, choice_list
from web.safety import FILE_NAME_RE, check_job_id, check_record_key, job_file
from web.views.common import backend, load_job

bp = Blueprint("inference", __name__)

UPLOAD_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".dicom", "")
TOKEN_BYTES = 8


def _val_records(job: dict) -> list[dict]:
    dataset_id = job.get("dataset_id")
    if not dataset_id:
        return []
    try:
        return backend().dataset_records(dataset_id, "val", 0, 100000).get("records", [])
    except (Unavailable, LookupError, ValueError):
        return []


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
    records = _val_records(job)
    form.record.choices = choice_list([("", "— choose a record —")] + [(r["key"], r.get("name") or r["key"]) for r in records])
    return form, records


def save_result(job: dict, result: dict, source: str, token: str | None = None, extra: dict | None = None) -> str:
    """Write the PNGs and result.json of one inference; returns its token.

    The files are written into a temporary folder that is then renamed, so a result folder is
    either complete or absent (two requests for the same record token cannot mix their files)."""
    token = token or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(TOKEN_BYTES // 2)
    root = Path(job["dir"]) / "inference"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{token}.{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        image = np.asarray(result["image"])
        (tmp / "image.png").write_bytes(imaging.feature_png(image))
        (tmp / "prediction.png").write_bytes(imaging.class_map_png(result["prediction"]))
        has_label = result.get("label") is not None
        if has_label:
            (tmp / "label.png").write_bytes(imaging.class_map_png(result["label"]))
        summary = {
            "token": token, "source": source, "snapshot": result.get("snapshot"),
            "classes": list(result.get("classes") or []),
            "palette": [list(map(int, p)) for p in (result.get("palette") or [])],
            "metrics": result.get("metrics") or {}, "has_label": has_label,
            "layers": result.get("layers") or [], "shape": list(np.asarray(result["prediction"]).shape[-2:]),
        }
        summary.update(extra or {})
        (tmp / "result.json").write_text(json.dumps(summary, default=float))
        _install(root, token, tmp, summary)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return token


def _stored_stamp(folder: Path):
    try:
        return json.loads((folder / "result.json").read_text()).get("snapshot_stamp")
    except (OSError, ValueError):
        return None


def _install(root: Path, token: str, tmp: Path, summary: dict) -> None:
    """Move the finished folder ``tmp`` to ``root/token``. A result already there is kept when it
    is the same (a concurrent request for the same record and snapshot won); a stale one (its
    snapshot was rewritten) is first renamed aside under a unique name, never deleted in place,
    and removed after the new one is in: a request never deletes another's fresh result, and
    readers never see a half-deleted folder."""
    target = root / token
    try:
        os.rename(tmp, target)  # the usual case: nothing stored under this token
        return
    except OSError:
        if not target.is_dir():
            raise
    stamp = summary.get("snapshot_stamp")
    if stamp is not None and _stored_stamp(target) == stamp:
        return  # another request stored this very result first: keep that one
    trash = root / f".trash-{token}.{secrets.token_hex(4)}"
    try:
        os.rename(target, trash)
    except FileNotFoundError:
        pass  # another request moved the stale one aside already
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target / "result.json").is_file():
            raise
        # another request put its result in place between the two renames: keep that one
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def record_token(iteration: int, key: str, visualize: bool = False) -> str:
    """The token of validation record ``key`` under snapshot ``iteration`` (same inputs, same token)."""
    digest = hashlib.sha256(check_record_key(key).encode()).hexdigest()[:16]
    return f"rec-{int(iteration)}-{digest}" + ("-viz" if visualize else "")


def _snapshot(job: dict, iteration: int | None) -> dict | None:
    snaps = job.get("snapshots") or []
    if iteration is None:
        return max(snaps, key=lambda s: s.get("iteration", 0)) if snaps else None
    return next((s for s in snaps if s.get("iteration") == iteration), None)


def _snapshot_stamp(job: dict, snap: dict) -> list | None:
    try:
        st = job_file(job["dir"], str(snap.get("file") or "")).stat()
    except (OSError, ValueError):
        return None
    return [st.st_size, st.st_mtime_ns]


def record_inference(job: dict, key: str, snapshot: int | None = None, visualize: bool = False) -> str:
    """Token of record ``key`` inferred with ``snapshot`` (None: the newest), computed only once."""
    check_record_key(key)
    snap = _snapshot(job, snapshot)
    if snap is None:  # no such snapshot: the backend explains (no snapshot yet, unknown iteration)
        return run_inference(job, snapshot, record=key, visualize=visualize)
    token = record_token(snap["iteration"], key, visualize)
    stamp = _snapshot_stamp(job, snap)
    stored = Path(job["dir"]) / "inference" / token / "result.json"
    if stored.is_file():
        try:
            if json.loads(stored.read_text()).get("snapshot_stamp") == stamp:
                return token
        except ValueError:
            pass  # unreadable: compute it again
    return run_inference(job, snap["iteration"], record=key, visualize=visualize, token=token,
                         extra={"snapshot_stamp": stamp})


def load_result(job: dict, token: str) -> dict:
    if not FILE_NAME_RE.match(token):
        abort(404)
    path = job_file(job["dir"], f"inference/{token}/result.json")
    if not path.is_file():
        abort(404, f"no inference result {token} for this model")
    return json.loads(path.read_text())


def store_upload(job: dict, upload) -> str:
    name = secure_filename(upload.filename or "") or "upload"
    if Path(name).suffix.lower() not in UPLOAD_SUFFIXES:
        raise BadRequest(f"{upload.filename}: upload a PNG, TIFF or DICOM file", {"image": "unsupported file type"})
    folder = Path(job["dir"]) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}-{name}"
    upload.save(str(target))
    return str(target)


STORED_UPLOAD_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}-(.+)$")


def upload_display_name(path: str) -> str:
    """The name the user gave a stored upload (``store_upload`` prefixes a time stamp and a nonce)."""
    name = Path(path).name
    m = STORED_UPLOAD_RE.match(name)
    return m.group(1) if m else name


def _dataset_size(job: dict) -> tuple[int, int] | None:
    """(height, width) of the images of the model's dataset (its ``feature_shape``, C×H×W)."""
    dataset_id = job.get("dataset_id")
    if not dataset_id:
        return None
    try:
        shape = (backend().job(dataset_id).get("info") or {}).get("feature_shape")
        h, w = int(shape[-2]), int(shape[-1])
    except (Unavailable, LookupError, ValueError, TypeError, IndexError):
        return None
    return (h, w) if h > 0 and w > 0 else None


def prepare_upload(job: dict, path: str, name: str) -> tuple[str, dict]:
    """Read a stored upload and, when its size differs from the dataset's, resize it to that size
    (as DIGITS does: 'squash', bilinear) into a TIFF beside it, keeping its dtype (16-bit stays
    16-bit). Returns (the path to infer, facts for result.json). An image of the dataset's size is
    used as it is, and so is a file this process cannot read: the backend has the last word on
    it (``run_inference`` shows its error with the user's file name, never the server path)."""
    from jobs import infer as inf
    size = _dataset_size(job)
    if size is None:
        return path, {}
    try:
        image = inf.load_image(path)
    except Exception:  # noqa: BLE001 - unreadable here: let the backend say why
        return path, {}
    if tuple(image.shape[-2:]) == size:
        return path, {}
    (h0, w0), (h, w) = image.shape[-2:], size
    resized = inf.resize_image(image, h, w)
    target = Path(path).with_name(f"{Path(path).stem}.resized-{w}x{h}.tif")
    import tifffile
    if resized.shape[0] == 3:
        tifffile.imwrite(str(target), np.moveaxis(resized, 0, -1), photometric="rgb")
    elif resized.shape[0] == 1:
        tifffile.imwrite(str(target), resized[0], photometric="minisblack")
    else:
        tifffile.imwrite(str(target), np.moveaxis(resized, 0, -1), photometric="minisblack", planarconfig="contig")
    return str(target), {"resized_from": [int(w0), int(h0)], "resized_to": [int(w), int(h)]}


def _hide_paths(message: str, paths, name: str) -> str:
    """``message`` with every server path of an upload replaced by the user's file name."""
    for p in sorted({str(p) for p in paths if p}, key=len, reverse=True):
        message = message.replace(p, name)
    return message


def run_inference(job: dict, snapshot, record=None, image_path=None, visualize=False, token=None,
                  extra=None, upload_name=None) -> str:
    extra = dict(extra or {})
    infer_path = image_path
    if image_path and not record:
        name = upload_name or upload_display_name(image_path)
        infer_path, facts = prepare_upload(job, image_path, name)
        extra.update(facts, upload_name=name)
        try:
            result = backend().infer(job["id"], snapshot, record=record, image_path=infer_path, visualize=visualize)
        except (BadRequest, Unavailable) as exc:
            hidden = (infer_path, image_path, Path(image_path).parent)
            message = _hide_paths(str(exc), hidden, name)
            if message == str(exc):
                raise
            if isinstance(exc, BadRequest):
                raise BadRequest(message, exc.field_errors) from None
            raise Unavailable(message) from None
    else:
        result = backend().infer(job["id"], snapshot, record=record, image_path=image_path, visualize=visualize)
    if record:
        names = {r["key"]: r.get("name") for r in _val_records(job)}
        source = f"record {names.get(record) or record}"
        extra["record"] = record
    else:
        source = f"upload {extra.get('upload_name')}" if image_path else "?"
    return save_result(job, result, source, token=token, extra=extra)


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
                token = run_inference(job, snapshot, image_path=store_upload(job, upload),
                                      visualize=form.visualize.data,
                                      upload_name=os.path.basename(upload.filename.replace("\\", "/")))
            elif form.record.data:
                token = record_inference(job, form.record.data, snapshot, visualize=form.visualize.data)
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
    token = record_inference(job, key, request.args.get("snapshot", type=int))
    return redirect(url_for("inference.result", job_id=job_id, token=token))


@bp.route("/models/<job_id>/inference/<token>")
def result(job_id, token):
    job = load_job(job_id, "model")
    res = load_result(job, token)
    return render_template("infer_result.html", job=job, result=res)


@bp.route("/models/<job_id>/inference/<token>/<name>.png")
def result_png(job_id, token, name):
    check_job_id(job_id)
    if name not in ("image", "prediction", "label"):
        abort(404)
    job = load_job(job_id, "model")
    load_result(job, token)
    path = job_file(job["dir"], f"inference/{token}/{name}.png")
    if not path.is_file():
        abort(404)
    return Response(path.read_bytes(), mimetype="image/png")


@bp.route("/compare")
def compare():
    """The same validation record under two or more models, side by side."""
    model_ids = [check_job_id(m) for m in request.args.getlist("models") if m]
    record = request.args.get("record", "")
    models = [j for j in _safe_jobs("model")]
    panels, error = [], None
    if model_ids and record:
        for model_id in model_ids[:6]:
            job = load_job(model_id, "model")
            try:
                token = record_inference(job, record)
                panels.append({"job": job, "result": load_result(job, token), "token": token})
            except (BadRequest, Unavailable, LookupError, ValueError) as exc:
                panels.append({"job": job, "error": str(exc)})
    elif request.args:  # the form was sent with something missing (a bare /compare is the empty form)
        missing = ([] if model_ids else ["tick at least one model"]) + ([] if record else ["choose a validation record"])
        error = "Nothing compared yet: " + " and ".join(missing) + "."
    listing = _compare_records(model_ids)
    return render_template("compare.html", models=models, chosen=model_ids, record=record,
                           records=listing["records"], records_note=listing["note"], panels=panels, error=error)


def _compare_records(model_ids: list[str]) -> dict:
    """The validation records offered for ``model_ids``: those of the first chosen model's dataset
    (with a note when the others were trained on another dataset)."""
    if not model_ids:
        return {"records": [], "note": "Tick a model to list the records of its validation set."}
    jobs = []
    for model_id in model_ids:
        try:
            jobs.append(backend().job(model_id))
        except (Unavailable, LookupError, ValueError):
            continue
    first = next((j for j in jobs if j.get("dataset_id")), None)
    if first is None:
        return {"records": [], "note": "The chosen models have no dataset, so no validation records."}
    records = [{"key": r["key"], "name": r.get("name") or r["key"]} for r in _val_records(first)]
    others = [j.get("name") or j["id"] for j in jobs if j.get("dataset_id") and j["dataset_id"] != first["dataset_id"]]
    if not records:
        note = f"The dataset of {first.get('name') or first['id']} has no validation records."
    elif others:
        note = (f"Records of {first.get('name') or first['id']}'s dataset; {', '.join(others)} "
                "were trained on another dataset and may not have them.")
    else:
        note = f"{len(records)} records of the validation set of {first.get('name') or first['id']}'s dataset."
    return {"records": records, "note": note}


@bp.route("/compare/records")
def compare_records():
    """JSON: the records the compare form offers for the ticked models (``?models=A&models=B``)."""
    model_ids = [check_job_id(m) for m in request.args.getlist("models") if m]
    return _compare_records(model_ids)


def _safe_jobs(kind):
    try:
        return [j for j in backend().jobs(kind) if j.get("kind") == kind]
    except Unavailable:
        return []
