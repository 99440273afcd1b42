"""Test Many (DIGITS' "Test a list of images" / "Test a DB"): one model over many images, as one
job-like request with progress, per-image statistics, a CSV and compact prediction files.

Inputs (``collect_images``): a folder on the server, a list file of paths (one per line; a
trailing label column, as DIGITS' image lists have, is ignored), uploaded files, or a zip of
images (unpacked flat into the request's folder, image members only, limits below); every server
path must lie inside ``roots`` when they are given (the web passes its DATA_ROOTS). A whole
dataset stage (DIGITS' Test a DB) is read from its LMDBs (``dataset_inputs``) with its labels, so
each row also has Dice/IoU.

A request lives in ``<model job>/tests/<id>/``: ``request.json``, ``status.json`` ({"state"
Running|Done|Error|Aborted, "done", "total", "started", "finished", "error"}, rewritten as it
goes), ``results.json`` (the rows), ``results.csv``, ``class_maps/<n>.png`` (8-bit class index
per pixel) and with ``probabilities`` ``probabilities/<n>.npy`` (float16 C x H x W). One
unreadable image gives a row with its ``error``; it does not stop the others.

``encode_class_map`` / ``encode_probabilities`` are the compact encodings the single-image
inference JSON uses too (PNG of the argmax, float16 .npy).
"""
import csv
import io
import json
import os
import secrets
import time
import zipfile

import numpy as np

from caffeseg.jobs.paths import atomic_write, atomic_write_json

TESTS_DIR = "tests"
#: images per request (CAFFESEG_MAX_TEST_IMAGES overrides)
DEFAULT_MAX_IMAGES = 10000
#: unpacked bytes of an uploaded zip
MAX_ZIP_BYTES = 2 << 30
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".dicom", ".jpg", ".jpeg")
_TEST_ID = "t-%s"


class TestManyError(ValueError):
    """A request that cannot start; ``field`` names the input at fault."""

    def __init__(self, message, field=None):
        ValueError.__init__(self, message)
        self.field = field


def max_images():
    return int(os.environ.get("CAFFESEG_MAX_TEST_IMAGES", DEFAULT_MAX_IMAGES))


def _inside(path, roots, field):
    real = os.path.realpath(path)
    if roots is not None and not any(os.path.commonpath([real, os.path.realpath(r)]) == os.path.realpath(r)
                                     for r in roots):
        raise TestManyError("%s is outside the data folders this server may read (%s)"
                            % (path, ", ".join(roots)), field)
    return real


def _is_image(name):
    return name.lower().endswith(IMAGE_SUFFIXES)


def _unzip_images(zip_path, out_dir, limit):
    """The image members of a zip, written flat into ``out_dir`` (numbered, so equal names in
    different folders stay apart); bytes are counted while copying."""
    budget = MAX_ZIP_BYTES
    written = []
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise TestManyError("%s is not a zip file" % os.path.basename(str(zip_path)), "zip") from None
    with zf:
        for member in zf.infolist():
            if member.is_dir() or not _is_image(member.filename):
                continue
            if len(written) >= limit:
                raise TestManyError("the zip holds more than %d images" % limit, "zip")
            base = os.path.basename(member.filename.replace("\\", "/"))
            path = os.path.join(out_dir, "%05d_%s" % (len(written), base))
            with zf.open(member) as src, open(path, "wb") as dst:
                while True:
                    block = src.read(1 << 20)
                    if not block:
                        break
                    budget -= len(block)
                    if budget < 0:
                        raise TestManyError("the zip unpacks to more than %d bytes" % MAX_ZIP_BYTES, "zip")
                    dst.write(block)
            written.append((member.filename, path))
    if not written:
        raise TestManyError("the zip holds no image (%s)" % ", ".join(IMAGE_SUFFIXES), "zip")
    return written


def collect_images(folder=None, list_file=None, paths=None, zip_path=None, roots=None, work_dir=None):
    """[(source as shown, file path)] of one request's images; see the module docstring."""
    limit = max_images()
    given = [x for x in (folder, list_file, paths, zip_path) if x]
    if len(given) != 1:
        raise TestManyError("give exactly one of: a server folder, a list file, uploaded images, a zip")
    out = []
    if folder:
        real = _inside(folder, roots, "folder")
        if not os.path.isdir(real):
            raise TestManyError("%s is not a folder on the server" % folder, "folder")
        names = sorted(n for n in os.listdir(real) if _is_image(n) and os.path.isfile(os.path.join(real, n)))
        out = [(n, os.path.join(real, n)) for n in names]
    elif list_file:
        real = _inside(list_file, roots, "list_file")
        try:
            with open(real, errors="replace") as f:
                lines = [line.strip() for line in f]
        except OSError as exc:
            raise TestManyError("cannot read the list file %s (%s)" % (list_file, exc.strerror), "list_file") from None
        base = os.path.dirname(real)
        for number, line in enumerate(lines, 1):
            if not line or line.startswith("#"):
                continue
            candidate = line if os.path.isabs(line) else os.path.join(base, line)
            if not os.path.isfile(candidate) and len(line.split()) > 1:  # "path label", DIGITS' list format
                first = line.rsplit(None, 1)[0]
                candidate = first if os.path.isabs(first) else os.path.join(base, first)
            if not os.path.isfile(candidate):
                raise TestManyError("line %d of %s: %s is not a file" % (number, list_file, line), "list_file")
            out.append((line, _inside(candidate, roots, "list_file")))
    elif paths:
        out = [(os.path.basename(p), _inside(p, roots, "paths")) for p in paths]
    else:
        os.makedirs(work_dir, exist_ok=True)
        out = _unzip_images(zip_path, work_dir, limit)
    if not out:
        raise TestManyError("no image found (%s)" % ", ".join(IMAGE_SUFFIXES))
    if len(out) > limit:
        raise TestManyError("%d images; one request takes at most %d (CAFFESEG_MAX_TEST_IMAGES)" % (len(out), limit))
    return out


def dataset_inputs(dataset_dir, stage, keys, lock):
    """Yield (source, image, label) of a dataset stage's records ``keys`` (LMDB), reading each
    under ``lock`` (the service's LMDB lock)."""
    from caffeseg.jobs import infer as inf
    for key in keys:
        with lock:
            image, label = inf.record_by_key(dataset_dir, key, stage)
        yield "%s:%s" % (stage, key), image, label


def encode_class_map(class_map):
    """PNG bytes of a class map (8-bit class index per pixel)."""
    import cv2
    ok, data = cv2.imencode(".png", np.ascontiguousarray(np.asarray(class_map, dtype=np.uint8)))
    if not ok:
        raise ValueError("PNG encoding of the class map failed")
    return data.tobytes()


def encode_probabilities(probabilities):
    """.npy bytes of the per-class probabilities as float16 (C x H x W): half the size of float32,
    3 significant digits — enough to threshold or average."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(probabilities, dtype=np.float16))
    return buffer.getvalue()


def image_statistics(result, classes):
    """One row: image size, per class its pixel count and fraction, the mean confidence (mean over
    pixels of the winning class's probability), LV area (class 1) and the metrics when labelled."""
    class_map = np.asarray(result["class_map"])
    probs = np.asarray(result["probabilities"])
    counts = np.bincount(class_map.ravel(), minlength=max(len(classes), int(class_map.max()) + 1))
    total = float(class_map.size)
    row = {"height": int(class_map.shape[0]), "width": int(class_map.shape[1]),
           "mean_confidence": float(probs.max(axis=0).mean()),
           "lv_area_px": int(counts[1]) if len(counts) > 1 else 0,
           "classes": {(classes[i] if i < len(classes) else str(i)): {"pixels": int(c), "fraction": c / total}
                       for i, c in enumerate(counts)}}
    for key, value in (result.get("metrics") or {}).items():
        row[key] = value
    return row


CSV_FIXED = ("index", "source", "error", "height", "width", "lv_area_px", "mean_confidence")


def write_csv(path, rows, classes):
    """results.csv: the fixed columns, per class its pixel fraction, then the metrics found."""
    metric_names = sorted({k for r in rows for k in r if k not in CSV_FIXED and k not in ("classes", "files")})
    class_names = list(classes) or sorted({c for r in rows for c in (r.get("classes") or {})})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(list(CSV_FIXED) + ["fraction_%s" % c for c in class_names] + metric_names)
    for r in rows:
        fractions = [((r.get("classes") or {}).get(c) or {}).get("fraction") for c in class_names]
        writer.writerow([r.get(k) for k in CSV_FIXED] + fractions + [r.get(k) for k in metric_names])
    atomic_write(path, buffer.getvalue())


def new_request(job_dir, request):
    """Make the request's folder with request.json and a status of 0 done; returns (id, folder)."""
    test_id = _TEST_ID % secrets.token_hex(5)
    folder = os.path.join(job_dir, TESTS_DIR, test_id)
    os.makedirs(os.path.join(folder, "class_maps"))
    atomic_write_json(os.path.join(folder, "request.json"), dict(request, id=test_id, created=time.time()))
    atomic_write_json(os.path.join(folder, "status.json"),
                      {"state": "Running", "done": 0, "total": None, "started": time.time(), "finished": None,
                       "error": None})
    return test_id, folder


def _status(folder, **fields):
    path = os.path.join(folder, "status.json")
    with open(path) as f:
        status = json.load(f)
    status.update(fields)
    atomic_write_json(path, status)
    return status


def run(model, inputs, total, folder, classes, probabilities=False, resize=None, extra=None, should_stop=None):
    """Predict every input (source, image array or file path, label or None) into the request's
    ``folder``; ``resize`` (height, width) squashes each image first (None: as it is); ``extra(result,
    path)`` may add to a result (e.g. a DICOM's mm² area). Returns the final status."""
    from caffeseg.jobs import infer as inf
    rows = []
    if probabilities:
        os.makedirs(os.path.join(folder, "probabilities"), exist_ok=True)
    _status(folder, total=total)
    last_write = 0.0
    try:
        for index, (source, image, label) in enumerate(inputs):
            if should_stop is not None and should_stop():
                return _finish(folder, rows, classes, "Aborted")
            row = {"index": index, "source": source}
            try:
                path = image if isinstance(image, str) else None
                array = inf.load_image(image) if path else image
                if resize:
                    array = inf.resize_image(array, *resize)
                    if label is not None:
                        label = None  # a label of the original size no longer fits
                result = model.predict(array, label=label)
                if extra is not None and path:
                    result["image"] = model.crop_like(np.asarray(array))
                    extra(result, path)
                row.update(image_statistics(result, classes))
                name = "%05d" % index
                with open(os.path.join(folder, "class_maps", name + ".png"), "wb") as f:
                    f.write(encode_class_map(result["class_map"]))
                row["files"] = {"class_map": "class_maps/%s.png" % name}
                if probabilities:
                    with open(os.path.join(folder, "probabilities", name + ".npy"), "wb") as f:
                        f.write(encode_probabilities(result["probabilities"]))
                    row["files"]["probabilities"] = "probabilities/%s.npy" % name
            except inf.InferError as exc:
                row["error"] = str(exc)
            rows.append(row)
            if time.time() - last_write > 0.5 or index + 1 == total:
                last_write = time.time()
                _status(folder, done=index + 1)
    except Exception as exc:  # noqa: BLE001 - the request records why it stopped (an LMDB, a net)
        _finish(folder, rows, classes, "Error")
        return _status(folder, error="%s: %s" % (type(exc).__name__, exc))
    return _finish(folder, rows, classes, "Done")


def _finish(folder, rows, classes, state):
    atomic_write_json(os.path.join(folder, "results.json"), {"classes": list(classes), "rows": rows})
    write_csv(os.path.join(folder, "results.csv"), rows, classes)
    return _status(folder, state=state, done=len(rows), finished=time.time())


def read_request(job_dir, test_id, with_rows=True):
    """{"id", "request", "status", "rows"?, "classes"?} of a request; KeyError for an unknown id."""
    if not isinstance(test_id, str) or not test_id.startswith("t-") or not test_id[2:].isalnum():
        raise KeyError("no test request %r" % (test_id,))
    folder = os.path.join(job_dir, TESTS_DIR, test_id)
    try:
        with open(os.path.join(folder, "request.json")) as f:
            request = json.load(f)
        with open(os.path.join(folder, "status.json")) as f:
            status = json.load(f)
    except (OSError, ValueError):
        raise KeyError("no test request %r" % (test_id,)) from None
    out = {"id": test_id, "request": request, "status": status, "folder": folder}
    if with_rows and os.path.isfile(os.path.join(folder, "results.json")):
        with open(os.path.join(folder, "results.json")) as f:
            out.update(json.load(f))
    return out


def list_requests(job_dir):
    folder = os.path.join(job_dir, TESTS_DIR)
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    out = []
    for name in names:
        try:
            out.append(read_request(job_dir, name, with_rows=False))
        except KeyError:
            continue
    return sorted(out, key=lambda r: r["request"].get("created") or 0)
