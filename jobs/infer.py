"""Inference with a trained model through the pycaffe API (engine or real pycaffe).

``DeployModel`` wraps ``caffe.Net(deploy.prototxt, snapshot, caffe.TEST)`` and applies the same
preprocessing as training (the val Data layer's transform_param: mean file or mean values,
center crop, scale; Caffe's order ``(x[crop] - mean[crop]) * scale``). Images: PNG/TIFF 8- or
16-bit, DICOM, or records of the validation set by key. Output: class map, per-class
probabilities, metrics when a label exists, optional per-layer activation/weight statistics,
and the LV contour in Sunnybrook's text format.
"""
import contextlib
import glob
import os
import re
import threading

import numpy as np

from caffeseg.jobs.paths import read_json


class InferError(ValueError):
    pass


# one prediction at a time computes on borrowed cores: two at once would each take all of them
_BORROWING = threading.Lock()


@contextlib.contextmanager
def cpu_threads(caffe, count):
    """Run the block with ``count`` engine CPU threads (``jobs.threads.inference_threads_now``),
    then go back to the process's count. Nothing changes for real pycaffe (its OpenBLAS reads
    its count once), for ``count`` None, or while another prediction holds borrowed threads."""
    if not count or not getattr(caffe, "__caffeseg_engine__", False) or not _BORROWING.acquire(blocking=False):
        yield
        return
    from caffeseg.engine import device
    before = device.cpu_threads()
    try:
        if count != before:
            device.set_cpu_threads(count)
        yield
    finally:
        if count != before:
            device.set_cpu_threads(before)
        _BORROWING.release()


def get_caffe(backend="auto"):
    """The ``caffe`` module: real pycaffe when importable (auto/pycaffe), else the engine."""
    from caffeseg.engine import caffe_shim
    if backend in ("auto", "pycaffe") and caffe_shim.real_pycaffe_available():
        import caffe
        return caffe
    if backend == "pycaffe":
        raise InferError("backend pycaffe asked for, but real pycaffe is not importable")
    return caffe_shim.install()


def latest_snapshot(job_dir, iteration=None):
    from caffeseg.jobs.runner import snapshot_iteration
    models = glob.glob(os.path.join(job_dir, "*_iter_*.caffemodel"))
    if iteration is not None:
        models = [m for m in models if snapshot_iteration(m) == int(iteration)]
        if not models:
            raise InferError("job %s has no snapshot at iteration %s" % (os.path.basename(job_dir), iteration))
    if not models:
        raise InferError("job %s has no snapshot yet; train it first" % os.path.basename(job_dir))
    return max(models, key=snapshot_iteration)


def preprocessing_from_train_val(path):
    """The val features Data layer's transform_param as a plain dict."""
    from caffeseg.engine.prototxt import read_net
    from caffeseg.jobs import derive
    net = read_net(path)
    for layer in net.layer:
        if layer.type == "Data" and derive.layer_in_state(layer, *derive.VAL_STATE) and \
                not any("label" in t for t in layer.top):
            tp = layer.transform_param
            return {"scale": tp.scale if tp.HasField("scale") else 1.0,
                    "mean_file": tp.mean_file if tp.HasField("mean_file") else None,
                    "mean_value": list(tp.mean_value), "crop_size": tp.crop_size or None}
    return {"scale": 1.0, "mean_file": None, "mean_value": [], "crop_size": None}


def load_image(path):
    """An image file → C×H×W array in its own dtype (uint8/uint16/float); DICOM in modality units.

    ``plugin.images.read_image``: the size is checked from the header before decoding, and DICOM
    is read exactly as the dataset builder reads it (Modality LUT / Rescale Slope+Intercept)."""
    from caffeseg.plugin.images import ImageTooLarge, UnreadableImage, read_image
    try:
        return read_image(path)
    except (ImageTooLarge, UnreadableImage) as exc:
        raise InferError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a decoder's own failure, named with the file
        raise InferError("cannot read image %s (%s)" % (path, exc)) from None


def resize_image(image, height, width):
    """C×H×W (or H×W) → C×height×width in the same dtype, as DIGITS does before inferring an
    image of another size than the dataset's: ``resize_mode`` 'squash' (generic datasets), i.e.
    both axes scaled independently with bilinear interpolation. Same size: returned untouched."""
    import cv2
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise InferError("cannot resize to %dx%d" % (width, height))
    if arr.shape[-2:] == (height, width):
        return arr
    dtype = arr.dtype
    work = arr if dtype in (np.uint8, np.uint16, np.float32, np.float64) else arr.astype(np.float32)
    planes = [cv2.resize(np.ascontiguousarray(p), (width, height), interpolation=cv2.INTER_LINEAR) for p in work]
    out = np.stack(planes)
    if out.dtype != dtype:
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        out = out.astype(dtype)
    return out


def blob_stats(array, bins=20):
    a = np.asarray(array, dtype=np.float64).ravel()
    if a.size == 0:
        return {"mean": None, "std": None, "histogram": [], "edges": []}
    hist, edges = np.histogram(a, bins=bins)
    return {"mean": float(a.mean()), "std": float(a.std()), "shape": list(np.shape(array)),
            "histogram": hist.tolist(), "edges": edges.tolist()}


def lv_contours(class_map, lv_class=1):
    """Outer contours of the LV mask as lists of (x, y), via cv2.findContours, at pixel index + 0.5
    as ``jobs.clinical.mask_contour`` traces them: the Sunnybrook expert points are truncated to
    pixel indices when a label is filled, so a perfect prediction's outline lies on the expert
    contour, and the exported contour files of ``infer --out`` and the clinical export agree."""
    import cv2
    mask = (np.asarray(class_map) == lv_class).astype(np.uint8)
    found = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contours = found[0] if len(found) == 2 else found[1]
    return [[(float(p[0][0]) + 0.5, float(p[0][1]) + 0.5) for p in c] for c in contours]


def sunnybrook_contour_text(contour):
    """Sunnybrook's contour file: one "x y" pair per line (pixel coordinates)."""
    return "".join("%.2f %.2f\n" % (x, y) for x, y in contour)


class DeployModel:
    """A deploy net + weights + preprocessing, ready to predict one image at a time."""

    def __init__(self, deploy_path, weights, preprocess, classes=None, caffe=None, backend="auto"):
        self.deploy_path, self.weights = deploy_path, weights
        self.preprocess_spec = dict(preprocess)
        self.classes = list(classes or [])
        self.caffe = caffe or get_caffe(backend)
        self.net = self.caffe.Net(deploy_path, weights, self.caffe.TEST)
        # a net's blobs are shared state: one prediction at a time (the web answers in several
        # threads, and jobs.net_cache hands one loaded model to all of them)
        self.lock = threading.Lock()
        self.input_name = list(self.net.inputs)[0]
        self.mean = None
        if self.preprocess_spec.get("mean_file"):
            from caffeseg.engine.blobproto import read_binaryproto
            mean = np.asarray(read_binaryproto(self.preprocess_spec["mean_file"]), dtype=np.float32)
            self.mean = mean.reshape(mean.shape[-3:]) if mean.ndim >= 3 else mean
        elif self.preprocess_spec.get("mean_value"):
            self.mean = np.asarray(self.preprocess_spec["mean_value"], dtype=np.float32)[:, None, None]

    @classmethod
    def from_job(cls, job_dir, snapshot=None, backend="auto", caffe=None, weights=None):
        """The job's deploy net with snapshot iteration ``snapshot`` (None: the newest), or with
        the snapshot file ``weights`` when given (jobs.net_cache names the file it keys on)."""
        info = read_json(os.path.join(job_dir, "job.json"), {})
        return cls(os.path.join(job_dir, "deploy.prototxt"), weights or latest_snapshot(job_dir, snapshot),
                   preprocessing_from_train_val(os.path.join(job_dir, "train_val.prototxt")),
                   classes=info.get("classes"), caffe=caffe, backend=backend)

    @classmethod
    def from_export(cls, folder, backend="auto", caffe=None):
        """An extracted export archive (see jobs.export)."""
        info = read_json(os.path.join(folder, "info.json"), {})
        pre = dict(info["preprocess"])
        if pre.get("mean_file"):
            pre["mean_file"] = os.path.join(folder, pre["mean_file"])
        return cls(os.path.join(folder, "deploy.prototxt"), os.path.join(folder, info["snapshot"]), pre,
                   classes=info.get("classes"), caffe=caffe, backend=backend)

    # -- preprocessing ----------------------------------------------------------------------
    def _crop_box(self, h, w):
        crop = self.preprocess_spec.get("crop_size")
        if not crop:
            return 0, 0, h, w
        if crop > min(h, w):
            raise InferError("image %dx%d is smaller than the crop %d" % (h, w, crop))
        top, left = (h - crop) // 2, (w - crop) // 2  # Caffe's TEST phase: center crop
        return top, left, crop, crop

    def crop_like(self, label):
        top, left, ch, cw = self._crop_box(*label.shape[-2:])
        return label[..., top:top + ch, left:left + cw]

    def preprocess(self, image):
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[None]
        want = self.net.blobs[self.input_name].data.shape[1]
        if image.shape[0] != want:
            if want == 1 and image.shape[0] >= 3:
                image = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
            elif want == 3 and image.shape[0] == 1:
                image = np.repeat(image, 3, axis=0)
            else:
                raise InferError("the net wants %d channels, the image has %d" % (want, image.shape[0]))
        x = image.astype(np.float32)
        if self.mean is not None:
            if self.mean.ndim == 3 and self.mean.shape[-2:] != x.shape[-2:]:
                raise InferError("mean image %s does not match image %s" % (self.mean.shape, x.shape))
            x = x - self.mean
        top, left, ch, cw = self._crop_box(*x.shape[-2:])
        x = x[:, top:top + ch, left:left + cw]
        return x * float(self.preprocess_spec.get("scale") or 1.0)

    # -- prediction -----------------------------------------------------------------------------
    def predict(self, image, label=None, visualize=False, threads=None):
        """The prediction of one image; ``threads``: CPU threads for this one (``cpu_threads``)."""
        with self.lock, cpu_threads(self.caffe, threads):
            return self._predict(image, label, visualize)

    def _predict(self, image, label, visualize):
        x = self.preprocess(image)
        blob = self.net.blobs[self.input_name]
        blob.reshape(1, *x.shape)
        self.net.reshape()
        blob.data[...] = x[None]
        outputs = self.net.forward()
        name = "prob" if "prob" in outputs else ("score" if "score" in outputs else list(outputs)[-1])
        scores = np.asarray(outputs[name][0], dtype=np.float64)
        if name == "prob":
            probs = scores
        else:
            e = np.exp(scores - scores.max(axis=0, keepdims=True))
            probs = e / e.sum(axis=0, keepdims=True)
        result = {"class_map": probs.argmax(axis=0).astype(np.uint8), "probabilities": probs.astype(np.float32),
                  "output": name}
        if label is not None:
            from caffeseg.jobs.evaluate import mask_metrics
            result["metrics"] = mask_metrics(result["class_map"], self.crop_like(np.asarray(label).reshape(
                np.asarray(label).shape[-2:])))
        if visualize:
            result["activations"] = {k: blob_stats(b.data) for k, b in self.net.blobs.items()}
            result["weights"] = {k: [blob_stats(p.data) for p in ps] for k, ps in self.net.params.items()}
            from caffeseg.jobs.visualize import layer_visuals  # DIGITS' pictures: activation grids, weight images, counts
            result["visuals"] = layer_visuals(self.net)
        return result


def record_by_key(dataset_dir, key, stage="val"):
    """(image, label) of one record of a dataset stage, by LMDB key."""
    from caffeseg.engine.datum import datum_to_array
    from caffeseg.engine.lmdb_io import LmdbReader
    from caffeseg.engine.proto import caffe_pb2
    base = os.path.join(dataset_dir, "%s_db" % stage)
    arrays = []
    for part in ("features", "labels"):
        with LmdbReader(os.path.join(base, part)) as reader:
            value = reader.get(key, None)
            if value is None:
                raise InferError("no record %r in the %s set" % (key, stage))
            datum = caffe_pb2.Datum()
            datum.ParseFromString(value)
            arrays.append(datum_to_array(datum))
    return arrays[0], arrays[1].reshape(arrays[1].shape[-2:])


def image_files(path):
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if re.search(r"\.(png|tiff?|dcm|dicom|jpe?g)$", n, re.I))
        return [os.path.join(path, n) for n in names]
    return [path]

