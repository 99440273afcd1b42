"""Model download: a ``.tar.gz`` that real Caffe loads as-is.

Contents: ``deploy.prototxt``, the chosen ``snapshot_iter_<N>.caffemodel``, ``mean.binaryproto``
(when the model was trained with a mean image), ``labels.txt`` (one class per line), the job's
Python layer files (``*.py``), ``original.prototxt``, ``solver.prototxt``, ``train_val.prototxt``
and ``info.json`` (snapshot, classes, preprocessing, framework) — what DIGITS' download held.
"""
import glob
import io
import json
import os
import tarfile
import time

from jobs.infer import latest_snapshot, preprocessing_from_train_val


def export_model(job_dir, out_path=None, snapshot=None, name=None):
    weights = latest_snapshot(job_dir, snapshot)
    pre = preprocessing_from_train_val(os.path.join(job_dir, "train_val.prototxt"))
    files = [(os.path.join(job_dir, "deploy.prototxt"), "deploy.prototxt"),
             (weights, os.path.basename(weights))]
    for extra in ("original.prototxt", "train_val.prototxt", "solver.prototxt"):
        if os.path.isfile(os.path.join(job_dir, extra)):
            files.append((os.path.join(job_dir, extra), extra))
    if pre.get("mean_file"):
        files.append((pre["mean_file"], "mean.binaryproto"))
        pre["mean_file"] = "mean.binaryproto"
    for path in sorted(glob.glob(os.path.join(job_dir, "*.py"))):
        files.append((path, os.path.basename(path)))
    try:
        with open(os.path.join(job_dir, "job.json")) as f:
            job_info = json.load(f)
    except (OSError, ValueError):
        job_info = {}
    classes = job_info.get("classes") or []
    info = {"name": name or os.path.basename(job_dir), "snapshot": os.path.basename(weights),
            "classes": classes, "preprocess": pre, "framework": "caffe", "exported_at": time.time(),
            "deploy": "deploy.prototxt"}
    out_path = out_path or os.path.join(job_dir, "model_%s.tar.gz" % os.path.splitext(os.path.basename(weights))[0])
    tmp = out_path + ".tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for src, arcname in files:
            tar.add(src, arcname=arcname)
        for arcname, text in (("labels.txt", "".join("%s\n" % c for c in classes)),
                              ("info.json", json.dumps(info, indent=2, sort_keys=True))):
            data = text.encode("utf-8")
            member = tarfile.TarInfo(arcname)
            member.size, member.mtime = len(data), int(time.time())
            tar.addfile(member, io.BytesIO(data))
    os.replace(tmp, out_path)
    return out_path


def extract(archive, dest):
    """Unpack an export safely (no absolute paths or '..')."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.startswith("/") or ".." in member.name.split("/") or not member.isfile():
                raise ValueError("unsafe member %r in %s" % (member.name, archive))
        tar.extractall(dest)
    return dest
