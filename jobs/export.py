"""Model download: a ``.tar.gz`` (or ``.zip``, as DIGITS' ``download.zip``) that real Caffe loads as-is.

Contents: ``deploy.prototxt``, the chosen ``snapshot_iter_<N>.caffemodel``, ``mean.binaryproto``
(when the model was trained with a mean image), ``labels.txt`` (one class per line), the job's
Python layer files (``*.py``), ``original.prototxt``, ``solver.prototxt``, ``train_val.prototxt``
and ``info.json`` — what DIGITS' download held.

``info.json`` carries caffeseg's keys (``name``, ``snapshot``, ``classes``, ``preprocess``,
``framework``, ``deploy``) and DIGITS' own (``digits_info``, the names its Caffe train task's
``get_task_stats`` and job ``json_dict`` write and its ``upload_archive`` reads): "snapshot file",
"model file" (original.prototxt, the all-stages network; also as "network file", the name
DIGITS' other frameworks use), "deploy file", "train_val file",
"solver file", "mean file" ("" without a mean image), "labels file", "framework" ("caffe"),
"image dimensions" ([height, width, channels], DIGITS' ``get_feature_dims`` order), "image
type" ("grayscale" or "color", the values of DIGITS' upload form), "image resize mode" ("squash": how caffeseg resizes an image of another size), "job id", "creation
time", "username" and "python layer file" (when the job has one).
"""
import datetime
import fcntl
import glob
import io
import json
import os
import tarfile
import time
import zipfile

from caffeseg.jobs.infer import latest_snapshot, preprocessing_from_train_val
from caffeseg.jobs.paths import atomic_output, atomic_write_json, read_json


#: gzip level of the download: trained float32 weights hardly compress (7 % at any level), and
#: level 1 is the fastest (bench/export_speed.py: level 9 saves 0.3 % more and takes 1.2x as long)
COMPRESS_LEVEL = 1
#: where the download archives are kept, inside the job folder (one per snapshot, rebuilt when an
#: input file changes)
EXPORT_DIR = "downloads"
#: archives kept per job: the newest requested ones; older ones are removed on the next build
KEEP_ARCHIVES = 2
#: download formats (file name endings), as DIGITS' /models/<id>/download.<extension>
FORMATS = ("tar.gz", "zip")
#: how caffeseg's inference fits an image of another size than the dataset's (jobs.infer.resize_image)
RESIZE_MODE = "squash"


class ExportError(ValueError):
    pass


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


class _Tee:
    """A binary file that also hands every chunk written to ``sink`` (the download stream)."""

    def __init__(self, raw, sink):
        self.raw, self.sink = raw, sink

    def write(self, data):
        self.sink(bytes(data))
        return self.raw.write(data)

    def __getattr__(self, name):
        return getattr(self.raw, name)


def _write_archive(out_path, files, info, classes, fmt="tar.gz", sink=None):
    """Write the tar.gz or zip atomically (``jobs.paths.atomic_output``): concurrent writers never
    share a temporary name, and readers see whole archives only. ``sink`` (tar.gz only: a zip
    seeks back to write its headers) receives the bytes as they are written."""
    texts = (("labels.txt", "".join("%s\n" % c for c in classes)),
             ("info.json", json.dumps(info, indent=2, sort_keys=True)))
    if fmt == "zip":
        with atomic_output(out_path, mode=0o644) as raw, \
                zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL) as zf:
            for src, arcname in files:
                zf.write(src, arcname=arcname)
            for arcname, text in texts:
                entry = zipfile.ZipInfo(arcname, date_time=time.localtime()[:6])
                entry.external_attr, entry.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED
                zf.writestr(entry, text.encode("utf-8"))
        return out_path
    with atomic_output(out_path, mode=0o644) as raw, \
            tarfile.open(fileobj=_Tee(raw, sink) if sink else raw, mode="w:gz", compresslevel=COMPRESS_LEVEL) as tar:
        for src, arcname in files:
            tar.add(src, arcname=arcname, filter=lambda m: _readable(m))
        for arcname, text in texts:
            data = text.encode("utf-8")
            member = _readable(tarfile.TarInfo(arcname))
            member.size, member.mtime = len(data), int(time.time())
            tar.addfile(member, io.BytesIO(data))
    return out_path


def _image_dimensions(job_dir):
    """[height, width, channels] of the dataset's features (DIGITS' ``get_feature_dims``), else
    of the deploy net's input; None when neither can be read."""
    from caffeseg.jobs.dataset import DatasetError, DatasetInfo
    try:
        with open(os.path.join(job_dir, "job.json")) as f:
            dataset_dir = json.load(f).get("dataset_dir")
        channels, height, width = DatasetInfo.read(dataset_dir).feature_shape[-3:]
        return [int(height), int(width), int(channels)]
    except (OSError, ValueError, TypeError, KeyError, DatasetError):
        pass
    try:
        from caffeseg.engine.prototxt import read_net
        net = read_net(os.path.join(job_dir, "deploy.prototxt"))
        dims = list(net.input_shape[0].dim) if len(net.input_shape) else list(net.input_dim)
        if not dims:
            dims = next(list(layer.input_param.shape[0].dim) for layer in net.layer if layer.type == "Input")
        return [int(dims[2]), int(dims[3]), int(dims[1])]
    except Exception:  # noqa: BLE001 - an unreadable deploy net: the key is left out
        return None


def digits_info(job_dir, files, weights, pre, job=None):
    """The DIGITS keys of info.json (see the module docstring) for these archive ``files``."""
    names = {arcname for _, arcname in files}
    info = {"snapshot file": os.path.basename(weights), "framework": "caffe",
            "mean file": pre.get("mean_file") or "", "labels file": "labels.txt",
            "image resize mode": RESIZE_MODE}
    for key, name in (("model file", "original.prototxt"), ("deploy file", "deploy.prototxt"),
                      ("train_val file", "train_val.prototxt"), ("solver file", "solver.prototxt")):
        if name in names:
            info[key] = name
    if "model file" in info:  # the name DIGITS' other frameworks (and their readers) use for it
        info["network file"] = info["model file"]
    dims = _image_dimensions(job_dir)
    if dims:
        info["image dimensions"] = dims
        info["image type"] = "grayscale" if dims[2] == 1 else "color"  # DIGITS' upload form's values
    layers = sorted(n for n in names if n.endswith(".py"))
    if layers:
        info["python layer file"] = layers[0]
    if job:
        info.update({"job id": job["id"], "username": job.get("owner") or "",
                     "creation time": str(datetime.datetime.fromtimestamp(job["created_at"]))})
    return info


def _manifest_name(archive_name):
    """The cache manifest beside an archive: model_X.json for model_X.tar.gz, model_X.zip.json."""
    return archive_name[:-len(".tar.gz")] + ".json" if archive_name.endswith(".tar.gz") else archive_name + ".json"


def export_model(job_dir, out_path=None, snapshot=None, name=None, fmt="tar.gz", job=None, sink=None):
    """The model download for ``snapshot`` (default: the newest): a .tar.gz (``fmt`` "tar.gz") or
    .zip (``fmt`` "zip") real Caffe loads as-is; ``job`` (the store row) fills info.json's DIGITS
    job keys (id, creation time, username).

    With ``out_path`` the archive is written there. Without it, the job's cached archive of that
    snapshot and format is returned, built once: it is rebuilt only when one of its input files
    changed (size or modification time) or its info did, concurrent requests wait for one build
    instead of each writing 200 MB, and archives no longer requested are removed (see
    ``KEEP_ARCHIVES``). ``sink`` receives the bytes of a tar.gz while it is built (see
    ``export_stream``); a cached archive or a zip is not passed to it.
    """
    if fmt not in FORMATS:
        raise ExportError("unknown download format %r (one of %s)" % (fmt, ", ".join(FORMATS)))
    weights = latest_snapshot(job_dir, snapshot)
    files, pre = _archive_files(job_dir, weights)
    classes = _job_classes(job_dir)
    info = {"name": name or os.path.basename(job_dir), "snapshot": os.path.basename(weights),
            "classes": classes, "preprocess": pre, "framework": "caffe", "deploy": "deploy.prototxt"}
    info.update(digits_info(job_dir, files, weights, pre, job))
    if out_path:
        return _write_archive(out_path, files, dict(info, exported_at=time.time()), classes, fmt)
    folder = os.path.join(job_dir, EXPORT_DIR)
    os.makedirs(folder, exist_ok=True)
    stem = "model_%s" % os.path.splitext(os.path.basename(weights))[0]
    archive = os.path.join(folder, "%s.%s" % (stem, fmt))
    manifest_path = os.path.join(folder, _manifest_name(os.path.basename(archive)))
    manifest = {"inputs": [[arcname, os.stat(src).st_size, os.stat(src).st_mtime_ns] for src, arcname in files],
                "info": info, "format": fmt}
    with open(os.path.join(folder, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others then find it done
        try:
            if os.path.isfile(archive) and read_json(manifest_path) == manifest:
                os.utime(manifest_path)  # most recently requested: kept by the clean-up
                return archive
            _write_archive(archive, files, dict(info, exported_at=time.time()), classes, fmt,
                           sink if fmt == "tar.gz" else None)
            atomic_write_json(manifest_path, manifest)
            _clean_exports(folder, keep=os.path.basename(manifest_path))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return archive


class _StreamCancelled(Exception):
    """The client went away: the build in progress stops (its temporary file is removed)."""


STREAM_CHUNK = 1 << 20


def export_stream(job_dir, snapshot=None, name=None, fmt="tar.gz", job=None):
    """(archive path, iterator of its bytes): the model download as ``export_model`` caches it,
    sent while it is built. When the archive must be built (first request for a snapshot), its
    tar.gz bytes reach the client as gzip writes them, so the first byte comes at once instead of
    after the whole build; a cached archive or a zip (which seeks while it is written) is sent
    from the file. Errors before the first byte (no snapshot…) are raised here; a client that
    stops reading stops the build."""
    import queue
    import threading
    weights = latest_snapshot(job_dir, snapshot)  # the user's errors, before anything starts
    stem = "model_%s" % os.path.splitext(os.path.basename(weights))[0]
    path = os.path.join(job_dir, EXPORT_DIR, "%s.%s" % (stem, fmt))
    events, cancelled = queue.Queue(maxsize=16), threading.Event()

    def put(item):
        while True:
            if cancelled.is_set():
                raise _StreamCancelled()
            try:
                events.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    pending = bytearray()  # gzip writes small pieces: hand them on in blocks of STREAM_CHUNK

    def sink(data):
        pending.extend(data)
        if len(pending) >= STREAM_CHUNK:
            put(("data", bytes(pending)))
            pending.clear()

    def build():
        try:
            archive = export_model(job_dir, snapshot=snapshot, name=name, fmt=fmt, job=job, sink=sink)
            if pending:
                put(("data", bytes(pending)))
            put(("done", archive))
        except _StreamCancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the request that waits for it
            try:
                put(("error", exc))
            except _StreamCancelled:
                pass

    threading.Thread(target=build, name="export-stream", daemon=True).start()
    first = events.get()
    if first[0] == "error":
        raise first[1]

    def chunks():
        event, streamed = first, False
        try:
            while True:
                kind, value = event
                if kind == "error":
                    raise value
                if kind == "done":
                    if not streamed:
                        with open(value, "rb") as f:
                            for block in iter(lambda: f.read(STREAM_CHUNK), b""):
                                yield block
                    return
                streamed = True
                yield value
                event = events.get()
        finally:
            cancelled.set()

    return path, chunks()



def _clean_exports(folder, keep):
    """Remove left-over temporary files (a killed build) and all but the KEEP_ARCHIVES most
    recently requested archives (any format); ``keep`` (the manifest just written) always stays."""
    for tmp in glob.glob(os.path.join(folder, ".tmp-*")):
        os.unlink(tmp)
    manifests = sorted(glob.glob(os.path.join(folder, "model_*.json")), key=os.path.getmtime, reverse=True)
    others = [path for path in manifests if os.path.basename(path) != keep]
    for path in others[KEEP_ARCHIVES - 1:]:
        archive = path[:-len(".json")] if path.endswith(".zip.json") else path[:-len(".json")] + ".tar.gz"
        for old in (path, archive):
            if os.path.exists(old):
                os.unlink(old)


def extract(archive, dest):
    """Unpack an export safely (no absolute paths or '..'; see also jobs.pretrained_archive)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if name.startswith("/") or ".." in name.split("/") or name.endswith("/"):
                    raise ValueError("unsafe member %r in %s" % (name, archive))
            zf.extractall(dest)
        return dest
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.startswith("/") or ".." in member.name.split("/") or not member.isfile():
                raise ValueError("unsafe member %r in %s" % (member.name, archive))
        tar.extractall(dest)
    return dest
