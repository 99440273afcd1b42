"""The pretrained round trip: a trained model becomes a Pretrained Model, an archive comes back in.

* ``make_pretrained(job_dir, dest_dir, ...)`` (DIGITS' ``to_pretrained``): a model job's
  snapshot with its all-stages network (original.prototxt), deploy net, mean image, labels and
  image facts goes into the uploaded-pretrained store (``jobs.pretrained.save_upload``), so the
  New Model form's Pretrained Networks tab offers it;
* ``import_archive(dest_dir, archive)`` (DIGITS' ``upload_archive``): a tar, tar.gz or zip made
  by caffeseg's or DIGITS' download (``info.json`` naming the snapshot, the network, the labels
  and mean files, the image dimensions and resize mode) is unpacked safely — regular files only,
  no absolute or ``..`` names, at most ``MAX_MEMBERS`` members and ``max_bytes`` unpacked (a zip's
  declared sizes are not trusted: bytes are counted while copying) — and stored the same way;
* ``layer_table(weights, prototxt=None)``: a caffemodel's layers with their parameter shapes and
  counts, read by streaming the protobuf (blob data is skipped, never loaded);
* ``layer_weight_image(weights, layer)``: one layer's first blob as a picture (jobs.visualize).
"""
import json
import os
import shutil
import tarfile
import tempfile
import zipfile

from caffeseg.jobs import pretrained as store
from caffeseg.jobs.pretrained import UploadError

#: members an archive may hold (a download has about ten)
MAX_MEMBERS = 64
#: unpacked bytes of an archive, by default (CAFFESEG_MAX_PRETRAINED_BYTES overrides)
DEFAULT_MAX_BYTES = 4 << 30
_CHUNK = 1 << 20


def upload_name(text):
    """A job's or an archive's name made into an upload name (``jobs.pretrained``'s rule: 1-64 of
    letters, digits, spaces, _.+()-, starting with a letter or digit): others become "_"."""
    import re
    name = re.sub(r"[^A-Za-z0-9 _.+()-]", "_", str(text or "")).strip()
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)[:64].strip()
    return name or "pretrained"


def max_archive_bytes():
    return int(os.environ.get("CAFFESEG_MAX_PRETRAINED_BYTES", DEFAULT_MAX_BYTES))


# -- a model job → a pretrained model ------------------------------------------------------------

def make_pretrained(job_dir, dest_dir, name, snapshot=None, description="", job=None):
    """Store a model job's snapshot (default: the newest) as an uploaded pretrained model; see the
    module docstring. ``job``: the store row (its id and owner are recorded). Returns the entry."""
    from caffeseg.jobs.export import _archive_files, _image_dimensions, _job_classes
    from caffeseg.jobs.infer import latest_snapshot
    weights = latest_snapshot(job_dir, snapshot)
    files, pre = _archive_files(job_dir, weights)
    names = {arcname: src for src, arcname in files}
    network = names.get("original.prototxt") or names.get("train_val.prototxt") or names["deploy.prototxt"]
    with open(network) as f:
        text = f.read()
    extra = {n: names[n] for n in store.UPLOAD_EXTRA_FILES if n in names}
    dims = _image_dimensions(job_dir)
    image = None
    if dims:
        image = {"type": "gray" if dims[2] == 1 else "color", "resize_mode": "squash",
                 "height": dims[0], "width": dims[1]}
    from caffeseg.jobs.runner import snapshot_iteration
    source = {"job_id": (job or {}).get("id") or os.path.basename(job_dir),
              "snapshot": snapshot_iteration(weights), "owner": (job or {}).get("owner")}
    staged = tempfile.NamedTemporaryFile(dir=str(_incoming(dest_dir)), suffix=".caffemodel", delete=False)
    staged.close()
    try:
        shutil.copyfile(weights, staged.name)  # save_upload moves it into the store
        return store.save_upload(dest_dir, name, text, staged.name, description=description,
                                 labels=_job_classes(job_dir) or None, image=image, extra_files=extra,
                                 source=source)
    finally:
        if os.path.exists(staged.name):
            os.unlink(staged.name)


def _incoming(dest_dir):
    folder = store.uploads_dir(dest_dir) / ".incoming"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- an archive → a pretrained model ---------------------------------------------------------------

def _safe_name(name):
    """A member name as a relative path of plain parts, or None when it is not safe."""
    name = name.replace("\\", "/")
    if not name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _copy_limited(src, dst_path, budget):
    """Copy a member stream, counting bytes against ``budget`` [remaining]; UploadError past it."""
    with open(dst_path, "wb") as out:
        while True:
            block = src.read(_CHUNK)
            if not block:
                return
            budget[0] -= len(block)
            if budget[0] < 0:
                raise UploadError("the archive unpacks to more than %d bytes (CAFFESEG_MAX_PRETRAINED_BYTES)"
                                  % max_archive_bytes(), "archive")
            out.write(block)


def unpack(archive, work_dir):
    """Unpack a tar/tar.gz/zip into ``work_dir`` with the rules above; returns the member names."""
    budget = [max_archive_bytes()]
    names = []

    def target(name):
        safe = _safe_name(name)
        if safe is None:
            raise UploadError("the archive has an unsafe member name %r" % name, "archive")
        if len(names) >= MAX_MEMBERS:
            raise UploadError("the archive has more than %d members" % MAX_MEMBERS, "archive")
        path = os.path.join(work_dir, safe)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        names.append(safe)
        return path

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                if member.is_dir():
                    continue
                mode = member.external_attr >> 16
                if mode and (mode & 0o170000) not in (0, 0o100000):
                    raise UploadError("the archive member %r is not a regular file" % member.filename, "archive")
                path = target(member.filename)
                with zf.open(member) as src:
                    _copy_limited(src, path, budget)
        return names
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError):
        raise UploadError("not a tar, tar.gz or zip archive", "archive") from None
    with tar:
        try:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise UploadError("the archive member %r is not a regular file (links are refused)"
                                      % member.name, "archive")
                path = target(member.name)
                _copy_limited(tar.extractfile(member), path, budget)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UploadError("the archive is damaged or truncated (%s)" % exc, "archive") from None
    return names


def _member(base, names, name, what):
    """The unpacked path of ``name`` (as info.json gives it, relative to the info.json folder)."""
    safe = _safe_name(str(name or ""))
    if safe is None:
        raise UploadError("info.json names %s %r, not a file of the archive" % (what, name), "archive")
    relative = os.path.normpath(os.path.join(base, safe)).lstrip("./") if base else safe
    if relative not in names:
        raise UploadError("info.json names %s %r, which the archive does not contain" % (what, name), "archive")
    return relative


def import_archive(dest_dir, archive, name=None, description=""):
    """Store the pretrained model a caffeseg or DIGITS download holds; see the module docstring.
    Returns the entry (``jobs.pretrained.upload_entry``); UploadError (field "archive") names
    what is wrong with it."""
    with tempfile.TemporaryDirectory(dir=str(_incoming(dest_dir))) as work:
        names = unpack(archive, work)
        infos = sorted((n for n in names if os.path.basename(n) == "info.json"), key=lambda n: n.count("/"))
        if not infos:
            raise UploadError("the archive has no info.json: upload a caffeseg or DIGITS model download, "
                              "or the network and weights files separately", "archive")
        base = os.path.dirname(infos[0])
        try:
            with open(os.path.join(work, infos[0])) as f:
                info = json.load(f)
        except (OSError, ValueError) as exc:
            raise UploadError("info.json is not readable JSON (%s)" % exc, "archive") from None
        if not isinstance(info, dict):
            raise UploadError("info.json is not a JSON object", "archive")
        if str(info.get("framework") or "caffe").lower() != "caffe":
            raise UploadError("a %s model; caffeseg takes Caffe models" % info.get("framework"), "archive")
        path = lambda relative: os.path.join(work, relative)  # noqa: E731
        snapshot = info.get("snapshot file") or info.get("snapshot")
        if not snapshot:
            raise UploadError('info.json names no snapshot ("snapshot file")', "archive")
        weights = path(_member(base, names, snapshot, "the snapshot"))
        network_key = next((k for k in ("model file", "train_val file", "deploy file", "deploy") if info.get(k)), None)
        if network_key is None and "original.prototxt" in [os.path.basename(n) for n in names]:
            network_key, info = "model file", dict(info, **{"model file": "original.prototxt"})
        if network_key is None:
            raise UploadError('info.json names no network ("model file", "train_val file" or "deploy file")', "archive")
        with open(path(_member(base, names, info[network_key], "the network")), "rb") as f:
            network = f.read(store.MAX_PROTOTXT_BYTES + 1)
        extra = {}
        deploy = info.get("deploy file") or info.get("deploy")
        if deploy:
            extra["deploy.prototxt"] = path(_member(base, names, deploy, "the deploy network"))
        mean = info.get("mean file") or (info.get("preprocess") or {}).get("mean_file")
        if mean:
            extra["mean.binaryproto"] = path(_member(base, names, mean, "the mean file"))
        labels = info.get("classes") or None
        if info.get("labels file"):
            with open(path(_member(base, names, info["labels file"], "the labels file")), "rb") as f:
                labels = f.read(store.MAX_LABELS_BYTES + 1)
        image = None
        dims = info.get("image dimensions")
        if isinstance(dims, list) and len(dims) == 3:
            image = {"type": "gray" if int(dims[2]) == 1 else "color", "height": dims[0], "width": dims[1],
                     "resize_mode": info.get("image resize mode") or "squash"}
        given = name or upload_name(info.get("name") or os.path.splitext(os.path.basename(str(snapshot)))[0])
        return store.save_upload(dest_dir, given, network, weights, description=description, labels=labels,
                                 image=image, extra_files=extra,
                                 source={"archive": os.path.basename(str(archive)),
                                         "job_id": info.get("job id"), "username": info.get("username")})


# -- a pretrained model's layers --------------------------------------------------------------------

# LayerParameter (NetParameter.layer = 100): name 1, type 2 (string), blobs 7; V1LayerParameter
# (NetParameter.layers = 2): name 4, type 5 (enum), blobs 6. BlobProto: shape 7 (BlobShape, dim 1),
# legacy num 1, channels 2, height 3, width 4.
_LAYERS = {100: (1, 2, 7), 2: (4, 5, 6)}


def _scan_layer_shapes(f, start, length, fields):
    name_field, type_field, blobs_field = fields
    name, kind, shapes = "", None, []
    f.seek(start)
    end = start + length
    while f.tell() < end:
        key = store._varint(f, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = store._varint(f, end)
            if number == type_field:
                kind = "V1:%d" % value
        elif wire == 2:
            size = store._varint(f, end)
            here = f.tell()
            if number == name_field:
                name = f.read(size).decode("utf-8", "replace")
            elif number == type_field:
                kind = f.read(size).decode("utf-8", "replace")
            elif number == blobs_field:
                shapes.append(_read_blob_shape(f, here, size))
            f.seek(here + size)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        else:
            raise ValueError("unsupported protobuf wire type %d" % wire)
    return name, kind, shapes


def _read_blob_shape(f, start, length):
    """A BlobProto's shape (its BlobShape, else legacy num/channels/height/width), data skipped."""
    end = start + length
    f.seek(start)
    dims, legacy = None, {}
    while f.tell() < end:
        key = store._varint(f, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = store._varint(f, end)
            if number in (1, 2, 3, 4):
                legacy[number] = value
        elif wire == 2:
            size = store._varint(f, end)
            here = f.tell()
            if number == 7:
                dims = []
                inner_end = here + size
                while f.tell() < inner_end:
                    inner_key = store._varint(f, inner_end)
                    if inner_key >> 3 == 1 and inner_key & 7 == 2:
                        packed = store._varint(f, inner_end)
                        packed_end = f.tell() + packed
                        while f.tell() < packed_end:
                            dims.append(store._varint(f, packed_end))
                    elif inner_key >> 3 == 1 and inner_key & 7 == 0:
                        dims.append(store._varint(f, inner_end))
                    else:
                        raise ValueError("unexpected field in a BlobShape")
            f.seek(here + size)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        else:
            raise ValueError("unsupported protobuf wire type %d" % wire)
    if dims is not None:
        return [int(d) for d in dims]
    return [int(legacy.get(n, 1)) for n in (1, 2, 3, 4)] if legacy else []


def layer_table(weights, prototxt=None):
    """{"layers": [{"name", "type", "shapes" [[dims] per blob], "param_count"}], "total"} of the
    layers with parameters of a caffemodel, in file order; ``type`` from the caffemodel, else from
    ``prototxt`` (text) by layer name. ValueError for a file that is not a caffemodel."""
    import numpy as np
    types = {}
    if prototxt:
        from caffeseg.engine.prototxt import parse_net
        types = {layer.name: layer.type for layer in parse_net(prototxt, source="network").layer}
    rows = []
    with open(str(weights), "rb") as f:
        end = f.seek(0, os.SEEK_END)
        f.seek(0)
        for number, wire, span in store._wire_fields(f, end):
            if wire == 2 and number in _LAYERS:
                here = f.tell()
                name, kind, shapes = _scan_layer_shapes(f, span[0], span[1], _LAYERS[number])
                f.seek(here)
                if shapes:
                    if kind is None or kind.startswith("V1:"):
                        kind = types.get(name, kind)
                    rows.append({"name": name, "type": kind, "shapes": shapes,
                                 "param_count": int(sum(int(np.prod(s)) if s else 0 for s in shapes))})
    if not rows:
        raise ValueError("%s holds no layer with parameters" % weights)
    return {"layers": rows, "total": sum(r["param_count"] for r in rows)}


def layer_weight_image(weights, layer):
    """PNG bytes of one layer's first parameter blob (``jobs.visualize.weight_image``), or None
    when it is not 4-D; KeyError for a layer the caffemodel does not have."""
    from caffeseg.engine.caffemodel import layer_arrays, read_caffemodel
    from caffeseg.jobs import visualize
    arrays = layer_arrays(read_caffemodel(str(weights)))
    if layer not in arrays:
        raise KeyError("the weights have no layer %r" % (layer,))
    image = visualize.weight_image(arrays[layer][0])
    return visualize.png(image) if image is not None else None
