"""Inference results of a model: run through the backend once, stored as files, read back.

Results are rendered once to PNGs (windowed image, class maps) plus ``result.json`` in
``<job dir>/inference/<token>/``; the result page composes them client-side (opacity, mask,
outline width) so moving a slider never goes back to the server.

A validation record's result has a deterministic token, ``rec-<snapshot iteration>-<hash of the
key>`` (``-viz`` with layer statistics): asking for the same record under the same snapshot again
(the evaluation table's links, the compare view, the form) reuses the stored result. The stored
result also keeps the snapshot file's size and mtime, so a snapshot rewritten under the same
iteration (a resumed training) is inferred again.

Functions take the ``web.backend.Backend`` to infer with; the blueprint (``web.views.inference``)
and the JSON API share them.
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
from werkzeug.utils import secure_filename

from caffeseg.web import imaging
from caffeseg.web.backend import BadRequest, NotFound, Unavailable
from caffeseg.web.safety import FILE_NAME_RE, check_record_key, job_file

UPLOAD_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".dicom", "")
TOKEN_BYTES = 8


def val_records(backend, job: dict) -> list[dict]:
    """The validation records of the model's dataset ([{index, key, name}]), [] when unknown."""
    dataset_id = job.get("dataset_id")
    if not dataset_id:
        return []
    try:
        return backend.dataset_records(dataset_id, "val", 0, 100000).get("records", [])
    except (Unavailable, LookupError, ValueError):
        return []


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
        if result.get("probabilities") is not None:  # the API's "probabilities": compact float16 .npy
            import io
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(result["probabilities"], dtype=np.float16))
            (tmp / "probabilities.npy").write_bytes(buffer.getvalue())
        foreground = result.get("foreground_probability")
        if foreground is not None:  # p(class 1) as 8 bits (0-255 = 0-1): the view's threshold
            prob8 = np.clip(np.rint(np.asarray(foreground, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
            (tmp / "probability.png").write_bytes(imaging.class_map_png(prob8))
        has_label = result.get("label") is not None
        if has_label:
            (tmp / "label.png").write_bytes(imaging.class_map_png(result["label"]))
        layers = []  # each layer picture (DIGITS' activation grid / weight image) as layer-<n>.png
        for n, layer in enumerate(result.get("layers") or []):
            layer = dict(layer)
            picture = layer.pop("png", None)
            if picture:
                (tmp / f"layer-{n}.png").write_bytes(picture)
                layer["picture"] = f"layer-{n}"
            layers.append(layer)
        summary = {
            "token": token, "source": source, "snapshot": result.get("snapshot"),
            "classes": list(result.get("classes") or []),
            "palette": [list(map(int, p)) for p in (result.get("palette") or [])],
            "metrics": result.get("metrics") or {}, "has_label": has_label,
            "has_probability": foreground is not None, "has_probabilities": result.get("probabilities") is not None,
            "layers": layers, "param_total": result.get("param_total"),
            "shape": list(np.asarray(result["prediction"]).shape[-2:]),
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


def record_inference(backend, job: dict, key: str, snapshot: int | None = None, visualize: bool = False) -> str:
    """Token of record ``key`` inferred with ``snapshot`` (None: the newest), computed only once."""
    check_record_key(key)
    snap = _snapshot(job, snapshot)
    if snap is None:  # no such snapshot: the backend explains (no snapshot yet, unknown iteration)
        return run_inference(backend, job, snapshot, record=key, visualize=visualize)
    token = record_token(snap["iteration"], key, visualize)
    stamp = _snapshot_stamp(job, snap)
    stored = Path(job["dir"]) / "inference" / token / "result.json"
    if stored.is_file():
        try:
            if json.loads(stored.read_text()).get("snapshot_stamp") == stamp:
                return token
        except ValueError:
            pass  # unreadable: compute it again
    return run_inference(backend, job, snap["iteration"], record=key, visualize=visualize, token=token,
                         extra={"snapshot_stamp": stamp})


def load_result(job: dict, token: str) -> dict:
    if not FILE_NAME_RE.match(token):
        raise NotFound(f"no inference result {token!r}")
    path = job_file(job["dir"], f"inference/{token}/result.json")
    if not path.is_file():
        raise NotFound(f"no inference result {token} for this model")
    return json.loads(path.read_text())


def store_upload(job: dict, upload) -> str:
    name = secure_filename(upload.filename or "") or "upload"
    if Path(name).suffix.lower() not in UPLOAD_SUFFIXES:
        raise BadRequest(f"{upload.filename}: upload a PNG, TIFF or DICOM file", {"image": "unsupported file type"})
    folder = Path(job["dir"]) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    prune_uploads(folder)
    target = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}-{name}"
    upload.save(str(target))
    return str(target)


# An upload lives only while it is inferred (``run_inference`` removes it); one older than this
# was left by a process that stopped meanwhile and is removed when the next one is stored.
STALE_UPLOAD_SECONDS = 3600


def prune_uploads(folder: Path, now: float | None = None) -> list[str]:
    """Remove uploads older than STALE_UPLOAD_SECONDS from ``folder``; returns their names."""
    now = time.time() if now is None else now
    removed = []
    for p in folder.iterdir():
        try:
            if p.is_file() and now - p.stat().st_mtime > STALE_UPLOAD_SECONDS:
                p.unlink()
                removed.append(p.name)
        except OSError:
            continue
    return removed


STORED_UPLOAD_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}-(.+)$")


def upload_display_name(path: str) -> str:
    """The name the user gave a stored upload (``store_upload`` prefixes a time stamp and a nonce)."""
    name = Path(path).name
    m = STORED_UPLOAD_RE.match(name)
    return m.group(1) if m else name


def _dataset_size(backend, job: dict) -> tuple[int, int] | None:
    """(height, width) of the images of the model's dataset (its ``feature_shape``, C×H×W)."""
    dataset_id = job.get("dataset_id")
    if not dataset_id:
        return None
    try:
        shape = (backend.job(dataset_id).get("info") or {}).get("feature_shape")
        h, w = int(shape[-2]), int(shape[-1])
    except (Unavailable, LookupError, ValueError, TypeError, IndexError):
        return None
    return (h, w) if h > 0 and w > 0 else None


def prepare_upload(backend, job: dict, path: str, name: str) -> tuple[str, dict]:
    """Read a stored upload and, when its size differs from the dataset's, resize it to that size
    (as DIGITS does: 'squash', bilinear) into a TIFF beside it, keeping its dtype (16-bit stays
    16-bit). Returns (the path to infer, facts for result.json). An image of the dataset's size is
    used as it is, and so is a file this process cannot read: the backend has the last word on
    it (``run_inference`` shows its error with the user's file name, never the server path)."""
    from caffeseg.jobs import infer as inf
    size = _dataset_size(backend, job)
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


def store_server_file(job: dict, path, roots) -> str:
    """Copy an image on the server (inside ``roots``, the data folders) into the model's uploads,
    as an upload of that file: it is inferred and then removed like one, the original is left alone."""
    from caffeseg.web.safety import within
    source = within(path, roots)
    if not source.is_file():
        raise BadRequest(f"{path} is not a file on the server", {"server_path": "not a file"})
    if source.suffix.lower() not in UPLOAD_SUFFIXES:
        raise BadRequest(f"{path}: a PNG, TIFF or DICOM file", {"server_path": "unsupported file type"})
    folder = Path(job["dir"]) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    prune_uploads(folder)
    target = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}-{secure_filename(source.name) or 'image'}"
    shutil.copyfile(source, target)
    return str(target)


def run_inference(backend, job: dict, snapshot, record=None, image_path=None, visualize=False, token=None,
                  extra=None, upload_name=None, resize=True) -> str:
    """Infer one validation record or one stored upload (resized to the dataset's size first) and
    store the result; returns its token. Errors name the upload as the user named it. A stored
    upload (and its resized copy) is removed afterwards, whether the inference succeeded or not:
    the result keeps its own images and the file's name."""
    if image_path and not record:
        try:
            return _run_inference(backend, job, snapshot, record, image_path, visualize, token, extra, upload_name, resize)
        finally:
            discard_upload(image_path)
    return _run_inference(backend, job, snapshot, record, image_path, visualize, token, extra, upload_name, resize)


def discard_upload(path: str) -> None:
    """Remove a stored upload and the resized copies made of it (``prepare_upload``)."""
    stored = Path(path)
    import glob
    for p in [stored] + list(stored.parent.glob(f"{glob.escape(stored.stem)}.resized-*.tif")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _run_inference(backend, job: dict, snapshot, record, image_path, visualize, token, extra, upload_name,
                   resize=True) -> str:
    extra = dict(extra or {})
    infer_path = image_path
    if image_path and not record:
        name = upload_name or upload_display_name(image_path)
        # resize=False: DIGITS' "Do not resize input image(s)", the image is inferred at its own size
        infer_path, facts = prepare_upload(backend, job, image_path, name) if resize else (image_path, {"not_resized": True})
        extra.update(facts, upload_name=name)
        try:
            result = backend.infer(job["id"], snapshot, record=record, image_path=infer_path, visualize=visualize)
        except (BadRequest, Unavailable) as exc:
            hidden = (infer_path, image_path, Path(image_path).parent)
            message = _hide_paths(str(exc), hidden, name)
            if message == str(exc):
                raise
            if isinstance(exc, BadRequest):
                raise BadRequest(message, exc.field_errors) from None
            raise Unavailable(message) from None
    else:
        result = backend.infer(job["id"], snapshot, record=record, image_path=image_path, visualize=visualize)
    if record:
        names = {r["key"]: r.get("name") for r in val_records(backend, job)}
        source = f"record {names.get(record) or record}"
        extra["record"] = record
    else:
        source = f"upload {extra.get('upload_name')}" if image_path else "?"
    return save_result(job, result, source, token=token, extra=extra)
