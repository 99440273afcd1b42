"""Model download: a ``.tar.gz`` that real Caffe loads as-is.

Contents: ``deploy.prototxt``, the chosen ``snapshot_iter_<N>.caffemodel``, ``mean.binaryproto``
(when the model was trained with a mean image), ``labels.txt`` (one class per line), the job's
Python layer files (``*.py``), ``original.prototxt``, ``solver.prototxt``, ``train_val.prototxt``
and ``info.json`` (snapshot, classes, preprocessing, framework) — what DIGITS' download held.
"""
import fcntl
import glob
import io
import json
import os
import tarfile
import time

from jobs.infer import latest_snapshot, preprocessing_from_train_val
from jobs.paths import atomic_output, atomic_write_json


#: gzip level of the download: trained float32 weights hardly compress (7 % at any level), and
#: level 1 is the fastest (bench/export_speed.py: level 9 saves 0.3 % more and takes 1.2x as long)
COMPRESS_LEVEL = 1
#: where the download archives are kept, inside the job folder (one per snapshot, rebuilt when an
#: input file changes)
EXPORT_DIR = "downloads"
#: archives kept per job: the newest requested ones; older ones are removed on the next build
KEEP_ARCHIVES = 2


def _archive_files(job_dir, weights):
    """[(source path, name in the archive)] and the info.json fields for one snapshot."""
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
    return files, pre


def _job_classes(job_dir):
    try:
        with open(os.path.join(job_dir, "job.json")) as f:
            return json.load(f).get("classes") or []
    except (OSError, ValueError):
        return []


def _readable(member):
    """Archive members as anyone unpacking them expects: 0644 files, no owner of this machine."""
    member.mode = 0o644
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def _write_archive(out_path, files, info, classes):
    """Write the tar.gz atomically (``jobs.paths.atomic_output``): concurrent writers never share a
    temporary name, and readers see whole archives only."""
    with atomic_output(out_path, mode=0o644) as raw, \
            tarfile.open(fileobj=raw, mode="w:gz", compresslevel=COMPRESS_LEVEL) as tar:
        for src, arcname in files:
            tar.add(src, arcname=arcname, filter=lambda m: _readable(m))
        for arcname, text in (("labels.txt", "".join("%s\n" % c for c in classes)),
                              ("info.json", json.dumps(info, indent=2, sort_keys=True))):
            data = text.encode("utf-8")
            member = _readable(tarfile.TarInfo(arcname))
            member.size, member.mtime = len(data), int(time.time())
            tar.addfile(member, io.BytesIO(data))
    return out_path


def export_model(job_dir, out_path=None, snapshot=None, name=None):
    """The model download for ``snapshot`` (default: the newest): a .tar.gz real Caffe loads as-is.

    With ``out_path`` the archive is written there. Without it, the job's cached archive of that
    snapshot is returned, built once: it is rebuilt only when one of its input files changed (size
    or modification time), concurrent requests wait for one build instead of each writing 200 MB,
    and archives of snapshots no longer requested are removed (see ``KEEP_ARCHIVES``).
    """
    weights = latest_snapshot(job_dir, snapshot)
    files, pre = _archive_files(job_dir, weights)
    classes = _job_classes(job_dir)
    info = {"name": name or os.path.basename(job_dir), "snapshot": os.path.basename(weights),
            "classes": classes, "preprocess": pre, "framework": "caffe", "deploy": "deploy.prototxt"}
    if out_path:
        return _write_archive(out_path, files, dict(info, exported_at=time.time()), classes)
    folder = os.path.join(job_dir, EXPORT_DIR)
    os.makedirs(folder, exist_ok=True)
    stem = "model_%s" % os.path.splitext(os.path.basename(weights))[0]
    archive, manifest_path = os.path.join(folder, stem + ".tar.gz"), os.path.join(folder, stem + ".json")
    manifest = {"inputs": [[arcname, os.stat(src).st_size, os.stat(src).st_mtime_ns] for src, arcname in files],
                "info": info}
    with open(os.path.join(folder, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others then find it done
        try:
            if os.path.isfile(archive) and _read_json(manifest_path) == manifest:
                os.utime(manifest_path)  # most recently requested: kept by the clean-up
                return archive
            _write_archive(archive, files, dict(info, exported_at=time.time()), classes)
            atomic_write_json(manifest_path, manifest)
            _clean_exports(folder, keep=stem)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return archive


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _clean_exports(folder, keep):
    """Remove left-over temporary files (a killed build) and all but the KEEP_ARCHIVES most
    recently requested archives; ``keep`` (the one just built) always stays."""
    for tmp in glob.glob(os.path.join(folder, ".tmp-*")):
        os.unlink(tmp)
    manifests = sorted(glob.glob(os.path.join(folder, "model_*.json")), key=os.path.getmtime, reverse=True)
    others = [path for path in manifests if os.path.basename(path) != keep + ".json"]
    for path in others[KEEP_ARCHIVES - 1:]:
        for old in (path, path[:-len(".json")] + ".tar.gz"):
            if os.path.exists(old):
                os.unlink(old)


def extract(archive, dest):
    """Unpack an export safely (no absolute paths or '..')."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.startswith("/") or ".." in member.name.split("/") or not member.isfile():
                raise ValueError("unsafe member %r in %s" % (member.name, archive))
        tar.extractall(dest)
    return dest
