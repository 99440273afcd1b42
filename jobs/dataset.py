"""Plugin-agnostic dataset builder: plugin entries -> Caffe LMDBs + mean + dataset.json.

Layout of a finished dataset folder::

    train_db/features  train_db/labels  val_db/features  val_db/labels   (LMDBs of Datum)
    mean.binaryproto     float mean of the training features as stored (JPEG: decoded), 1 x C x H x W
    dataset.json         counts, shapes, dtypes, classes, palette, split, form values,
                         per-record key -> source files / pixel spacing, skipped entries
    build.log            one line per skipped entry and a summary
    status               "done", written last

Keys are zero-padded sequence numbers ("00000000", ...), so LMDB key order is record order and
the features and labels databases pair up key by key. Features are stored as given by the
plugin: encoding "none" keeps exact values in ``float_data`` (uint16 is exact in float32),
"png" stores a lossless (16-bit when needed) PNG. Labels are uint8 ``data``.

Atomic completion: everything is written into a temporary folder beside the target, renamed to
the target when complete (a job's folder that already holds its log: the entries are moved in
beside it), and only then is ``status`` written; a failed or interrupted build leaves no folder
that ``load_dataset_info`` accepts. ``DatasetInfo`` reads dataset.json back for the web and the
service. Entries the plugin cannot encode
(``EntryError``) are skipped and logged; a build with no usable training record fails.
"""

import concurrent.futures as cf
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from caffeseg.plugin.base import EntryError

DATASET_JSON = "dataset.json"
DATASET_FORMAT, DATASET_VERSION = "caffeseg-dataset", 1  # what build_dataset writes, DatasetInfo reads
STATUS_FILE = "status"
MEAN_FILE = "mean.binaryproto"
LOG_FILE = "build.log"
KEY_FORMAT = "%08d"
ENCODINGS = ("none", "png", "jpg")  # feature Datums: exact float_data, lossless PNG, lossy 8-bit JPEG
LABEL_ENCODINGS = ("none", "png")  # label Datums: raw uint8 bytes or PNG (never lossy: they are classes)


class DatasetError(ValueError):
    """A dataset that cannot be built or loaded (the message names the folder/reason)."""


def _encode_entry(plugin, entry, values, encoding, label_encoding="none"):
    """Run in a worker: one entry -> ("ok", feature bytes, label bytes, info) or ("skip", msg)."""
    from caffeseg.engine.datum import array_to_datum, datum_to_array, DatumError
    try:
        rec = plugin.encode(entry, values)
        feature = np.asarray(rec.feature)
        label = np.asarray(rec.label)
        if feature.ndim == 2:
            feature = feature[np.newaxis]
        if label.ndim == 2:
            label = label[np.newaxis]
        if label.shape[1:] != feature.shape[1:]:
            raise EntryError("%s: label shape %s differs from feature shape %s"
                             % (_name(entry), label.shape, feature.shape))
        if label.dtype != np.uint8:
            if label.size and (label.min() < 0 or label.max() > 255):
                raise EntryError("%s: label values outside 0..255" % _name(entry))
            label = label.astype(np.uint8)
        stored = feature
        if encoding == "png":
            stored = _png_ready(feature, entry)
        elif encoding == "jpg" and feature.dtype != np.uint8:
            raise EntryError("%s: %s pixels cannot be stored as JPEG (8-bit only); use encoding 'none' or "
                             "'png' for this dataset" % (_name(entry), feature.dtype))
        try:
            f_datum = array_to_datum(stored, encoding=None if encoding == "none" else encoding)
            l_datum = array_to_datum(label, encoding=None if label_encoding == "none" else label_encoding)
        except DatumError as exc:
            raise EntryError("%s: %s" % (_name(entry), exc)) from None
        # The mean is of the pixels a net reads, as Caffe's compute_image_mean averages each
        # decoded Datum: JPEG is lossy, so its stored pixels are decoded again for it.
        mean_pixels = datum_to_array(f_datum) if encoding == "jpg" else feature
        info = {"shape": list(feature.shape), "dtype": str(feature.dtype),
                "label_shape": list(label.shape), "meta": rec.meta,
                "sum": mean_pixels.astype(np.float64) if entry.stage == "train" else None}
        return ("ok", f_datum.SerializeToString(), l_datum.SerializeToString(), info)
    except EntryError as exc:
        return ("skip", str(exc), getattr(exc, "source", None) or _name(entry))


def _name(entry):
    src = entry.source or {}
    return ", ".join("%s=%s" % kv for kv in sorted(src.items())) or "entry"


def _bit_depth_mismatch(dtype, dataset_dtype):
    """Why a record of ``dtype`` cannot join a dataset of ``dataset_dtype`` (None if it can).

    An 8-bit slice among 16-bit ones holds 0..255 where the others hold 0..4095 or more: the same
    tissue would get other numbers, silently. Rescaling would guess a window the file does not
    state, so the record is skipped with this reason (wider integer types from a DICOM rescale,
    int64 or float32 beside uint16, are the same modality units and stay)."""
    eight_bit = ("uint8", "int8")
    if (dtype in eight_bit) == (dataset_dtype in eight_bit):
        return None
    return ("%s pixels among the dataset's %s ones (%s); convert the file to the bit depth of "
            "the others or remove it" % (dtype, dataset_dtype,
                                        "8-bit values 0..255 are not on the 16-bit scale"
                                        if dtype in eight_bit else
                                        "the dataset's first record is 8-bit: convert or remove the 8-bit files"))


def _png_ready(feature, entry):
    if feature.dtype in (np.uint8, np.uint16):
        return feature
    if np.issubdtype(feature.dtype, np.integer) and feature.size and \
            feature.min() >= 0 and feature.max() <= 65535:
        return feature.astype(np.uint16)
    raise EntryError("%s: values of dtype %s (range %s..%s) cannot be stored losslessly as "
                     "PNG; use encoding 'none'" % (_name(entry), feature.dtype,
                                                    feature.min(), feature.max()))


class _Executor:
    """Ordered map over entries with 1 (inline), N threads or N processes."""

    def __init__(self, workers, kind):
        self.workers = max(1, int(workers))
        self.kind = kind
        self._pool = None
        if self.workers > 1:
            if kind == "thread":
                self._pool = cf.ThreadPoolExecutor(self.workers)
            elif kind == "process":
                method = "fork" if sys.platform.startswith("linux") else "spawn"
                self._pool = cf.ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context(method))
            else:
                raise ValueError("executor must be 'thread' or 'process', got %r" % kind)

    def map(self, fn, items):
        if self._pool is None:
            for item in items:
                yield fn(*item)
            return
        # Bounded look-ahead keeps memory flat while the workers stay busy.
        window = self.workers * 4
        futures = []
        it = iter(items)
        for item in it:
            futures.append(self._pool.submit(fn, *item))
            if len(futures) >= window:
                break
        while futures:
            result = futures.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                futures.append(self._pool.submit(fn, *nxt))
            yield result

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def build_dataset(plugin, form_values, out_dir, *, encoding="none", label_encoding="none", workers=1,
                  executor="thread", progress=None, log=None, enforce_same_shape=None,
                  overwrite=False, keep_files=(), log_file=LOG_FILE):
    """Build a dataset with ``plugin`` from ``form_values`` into ``out_dir``.

    progress: callable(event dict) with keys phase ("itemize"/"encode"/"finish"), stage,
      done, total (this stage), done_all, total_all, skipped.
    log: callable(str) for human-readable lines (also written to ``log_file``, build.log; a
      job that keeps its own log passes log_file=None and gets one log, not two).
    enforce_same_shape: None = the form's "enforce_same_shape" value (default True).
    keep_files: names of files that may already be in ``out_dir`` (a job's live log, progress
      and abort flag, written while it builds); they do not make it "not empty" and stay where
      they are: the built files are moved in beside them.
    Returns the dataset.json content. Raises FormError, PluginError or DatasetError.
    """
    from caffeseg.engine.blobproto import write_binaryproto
    from caffeseg.engine.lmdb_io import LmdbWriter

    if encoding not in ENCODINGS:
        raise DatasetError("encoding must be one of %s, got %r" % (", ".join(ENCODINGS), encoding))
    if label_encoding not in LABEL_ENCODINGS:
        raise DatasetError("label encoding must be one of %s, got %r"
                           % (", ".join(LABEL_ENCODINGS), label_encoding))
    started = time.time()
    log_lines = []

    def say(line):
        log_lines.append(line)
        if log is not None:
            log(line)

    def emit(**event):
        if progress is not None:
            progress(event)

    values = plugin.validate(form_values)
    if enforce_same_shape is None:
        enforce_same_shape = bool(values.get("enforce_same_shape", True))
    out_dir = os.path.abspath(out_dir)
    _check_target(out_dir, overwrite, keep_files)
    emit(phase="itemize", stage=None, done=0, total=0, done_all=0, total_all=0, skipped=0)
    items = plugin.itemize(values)
    skipped = list(items.skipped)
    for s in skipped:
        say("skipped: %s" % s["message"])
    for warning in items.warnings:
        say("warning: %s" % warning)
    stages = [s for s in ("train", "val", "test") if s in items.stages]
    total_all = sum(len(items.stages[s]) for s in stages)
    say("%s: %d entries to encode (%s)" % (plugin.id, total_all,
        ", ".join("%s %d" % (s, len(items.stages[s])) for s in stages)))

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".%s.building-" % os.path.basename(out_dir), dir=parent)
    pool = _Executor(workers, executor)
    try:
        records, counts = {}, {}
        first_shape = None
        feature_info = label_info = None
        mean_sum, done_all = None, 0
        for stage in stages:
            entries = items.stages[stage]
            db_dir = os.path.join(tmp, "%s_db" % stage)
            records[stage] = []
            n_ok = 0
            with LmdbWriter(os.path.join(db_dir, "features")) as fdb, \
                    LmdbWriter(os.path.join(db_dir, "labels")) as ldb:
                work = ((plugin, e, values, encoding, label_encoding) for e in entries)
                for i, result in enumerate(pool.map(_encode_entry, work)):
                    done_all += 1
                    if result[0] == "skip":
                        skipped.append({"file": result[2], "message": result[1]})
                        say("skipped: %s" % result[1])
                    else:
                        _, fbytes, lbytes, info = result
                        shape = tuple(info["shape"])
                        if first_shape is None:
                            first_shape = shape
                            feature_info = {"shape": info["shape"], "dtype": info["dtype"]}
                            label_info = {"shape": info["label_shape"], "dtype": "uint8"}
                        depth = _bit_depth_mismatch(info["dtype"], feature_info["dtype"])
                        if (shape != first_shape and enforce_same_shape) or depth:
                            src = (info["meta"] or {}).get("files", {}).get("image") \
                                or _name(entries[i])
                            msg = ("%s: %s" % (src, depth)) if depth else \
                                ("%s: shape %s differs from the dataset's %s (enforce same "
                                 "shape is on)" % (src, list(shape), list(first_shape)))
                            skipped.append({"file": src, "message": msg})
                            say("skipped: %s" % msg)
                        else:
                            key = KEY_FORMAT % n_ok
                            fdb.put(key, fbytes)
                            ldb.put(key, lbytes)
                            rec = {"key": key}
                            rec.update(info["meta"] or {})
                            if shape != first_shape:
                                rec["shape"] = list(shape)
                            records[stage].append(rec)
                            if info["sum"] is not None and shape == first_shape:
                                mean_sum = info["sum"] if mean_sum is None else mean_sum + info["sum"]
                            n_ok += 1
                    emit(phase="encode", stage=stage, done=i + 1, total=len(entries),
                         done_all=done_all, total_all=total_all, skipped=len(skipped))
            counts[stage] = n_ok
        if not counts.get("train"):
            raise DatasetError("no usable training record: %d entr%s skipped (see the "
                               "messages above%s); nothing was written to %s"
                               % (len(skipped), "y" if len(skipped) == 1 else "ies",
                                  "; the first: %s" % skipped[0]["message"] if skipped else "", out_dir))
        mean = (mean_sum / counts["train"]).astype(np.float32)
        write_binaryproto(os.path.join(tmp, MEAN_FILE), mean[np.newaxis])
        say("done: %s; %d skipped" % (", ".join("%s %d" % (s, counts[s]) for s in stages),
                                      len(skipped)))
        info = {
            "format": DATASET_FORMAT, "version": DATASET_VERSION,
            "plugin": {"id": plugin.id, "title": plugin.title},
            "form_values": values,
            "encoding": encoding, "label_encoding": label_encoding,
            "stages": {s: {"count": counts[s], "features_db": "%s_db/features" % s,
                           "labels_db": "%s_db/labels" % s} for s in stages},
            "feature": dict(feature_info, storage="float_data" if encoding == "none" else encoding),
            "label": dict(label_info, storage="data" if label_encoding == "none" else label_encoding),
            "classes": plugin.class_labels(values),
            "palette": plugin.palette(values),
            "split": items.split,
            "mean_file": MEAN_FILE,
            "mean_shape": [1] + list(mean.shape),
            "records": records,
            "skipped": skipped,
            "skipped_count": len(skipped),
            "warnings": list(items.warnings),
            "workers": pool.workers, "executor": executor if pool.workers > 1 else "inline",
            "build_seconds": round(time.time() - started, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(os.path.join(tmp, DATASET_JSON), "w") as fh:
            json.dump(info, fh, indent=1, sort_keys=True, default=_json_default)
        if log_file:
            with open(os.path.join(tmp, log_file), "w") as fh:
                fh.write("\n".join(log_lines) + "\n")
        _move_into_place(tmp, out_dir, overwrite, keep_files)
    except BaseException:
        pool.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pool.close()
    _write_atomic(os.path.join(out_dir, STATUS_FILE), "done\n")
    emit(phase="finish", stage=None, done=total_all, total=total_all, done_all=total_all,
         total_all=total_all, skipped=len(skipped))
    return json.loads(json.dumps(info, default=_json_default))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError("%r is not JSON serialisable" % (obj,))


def _is_done(path):
    return os.path.isfile(os.path.join(path, STATUS_FILE))


def _foreign_entries(out_dir, keep_files=()):
    """Entries of ``out_dir`` other than the kept ones (a job's log, progress, abort flag)."""
    return sorted(set(os.listdir(out_dir)) - set(keep_files))


def _check_target(out_dir, overwrite, keep_files=()):
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise DatasetError("%s exists and is not a folder" % out_dir)
        if _foreign_entries(out_dir, keep_files) and not overwrite:
            raise DatasetError("%s is not empty; choose a new folder (or pass overwrite=True)"
                               % out_dir)


def _move_into_place(tmp, out_dir, overwrite, keep_files=()):
    """Put the finished build (``tmp``) at ``out_dir``. A missing target is one rename. An
    existing one is checked first (only kept files allowed, unless ``overwrite``): nothing of it
    is touched when that fails. Kept files stay in place; the built entries are moved in beside
    them (``status`` is written after this, so a half-moved folder is never a dataset)."""
    if not os.path.isdir(out_dir):
        os.rename(tmp, out_dir)
        return
    built = set(os.listdir(tmp))
    foreign = _foreign_entries(out_dir, set(keep_files) - built)
    if foreign and not overwrite:
        raise DatasetError("%s became non-empty during the build (%s)" % (out_dir, ", ".join(foreign[:5])))
    if STATUS_FILE in foreign:  # the old dataset stops being one before anything is replaced
        os.unlink(os.path.join(out_dir, STATUS_FILE))
    for name in foreign:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    for name in sorted(built):
        os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    os.rmdir(tmp)


def _write_atomic(path, text):
    part = path + ".part"
    with open(part, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, path)


def load_dataset_info(dataset_dir):
    """Return dataset.json of a finished dataset; DatasetError if missing or unfinished."""
    path = os.path.join(dataset_dir, DATASET_JSON)
    if not os.path.isdir(dataset_dir):
        raise DatasetError("dataset folder %s does not exist" % dataset_dir)
    if not _is_done(dataset_dir):
        raise DatasetError("%s is not a finished dataset (no '%s' marker)"
                           % (dataset_dir, STATUS_FILE))
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise DatasetError("%s: cannot read dataset description (%s)" % (path, exc)) from None


class DatasetInfo:
    """dataset.json as ``build_dataset`` writes it (format ``caffeseg-dataset``, version 1), read back.

    ``counts`` {stage: records}, ``feature_shape``/``label_shape`` (C x H x W), ``feature_dtype``/
    ``label_dtype``, ``classes`` (names), ``palette`` ([r, g, b] per class), ``form_values`` (the
    plugin form the dataset was built from), ``records(stage)`` (the per-record metadata, in key
    order) and ``record_names(stage)`` (key -> a readable name). Another format or version raises
    DatasetError naming the file."""

    def __init__(self, info, source=DATASET_JSON):
        if not isinstance(info, dict) or info.get("format") != DATASET_FORMAT \
                or info.get("version") != DATASET_VERSION:
            got = (info.get("format"), info.get("version")) if isinstance(info, dict) else (type(info).__name__, None)
            raise DatasetError("%s: not a dataset description this version reads (format %r version %r; "
                               "expected %r version %d): build the dataset again"
                               % (source, got[0], got[1], DATASET_FORMAT, DATASET_VERSION))
        self.info = info
        self.counts = {stage: s["count"] for stage, s in info["stages"].items()}
        self.feature_shape, self.feature_dtype = info["feature"]["shape"], info["feature"]["dtype"]
        self.label_shape, self.label_dtype = info["label"]["shape"], info["label"]["dtype"]
        self.classes = list(info.get("classes") or [])
        self.palette = [list(c) for c in info.get("palette") or []]
        self.form_values = dict(info.get("form_values") or {})

    @classmethod
    def read(cls, dataset_dir):
        """The dataset.json of ``dataset_dir`` (finished or not: the job's status says that)."""
        path = os.path.join(dataset_dir, DATASET_JSON)
        try:
            with open(path) as fh:
                info = json.load(fh)
        except (OSError, ValueError) as exc:
            raise DatasetError("%s: cannot read dataset description (%s)" % (path, exc)) from None
        return cls(info, path)

    def records(self, stage):
        return list((self.info.get("records") or {}).get(stage) or [])

    def record_names(self, stage):
        """Record key -> readable name (``record_name``)."""
        return {rec["key"]: record_name(rec) for rec in self.records(stage)}

    def record_key(self, stage, key_or_name):
        """The key of a record given by its key ("00000021") or by the name the pages show
        ("SC-HF-I-1 / 0021", spaces and case ignored); DatasetError naming examples otherwise."""
        names = self.record_names(stage)
        wanted = str(key_or_name).strip()
        if wanted in names or not names:  # without record metadata only keys exist (the LMDB checks them)
            return wanted
        squeeze = lambda text: "".join(text.split()).lower()  # noqa: E731
        matches = [key for key, name in names.items() if squeeze(name) == squeeze(wanted)]
        if len(matches) == 1:
            return matches[0]
        examples = ", ".join("%s (%s)" % (name, key) for key, name in list(names.items())[:3])
        raise DatasetError("no %s record %r in this dataset: give a record key or name, e.g. %s"
                           % (stage, wanted, examples or "(the dataset has none)"))


def record_name(meta):
    """A record's readable name from its metadata (a dataset.json record, an evaluation row):
    the plugin's ``case`` and ``image_no`` as "SC-HF-NI-3 / 0048", else its ``title``, else its key."""
    if meta.get("case") is not None and isinstance(meta.get("image_no"), int):
        return "%s / %04d" % (meta["case"], meta["image_no"])
    return str(meta.get("title") or meta.get("key"))
