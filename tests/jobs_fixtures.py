"""Shared helpers for the jobs tests: a tiny FCN-style network, a dataset folder, a fake pycaffe."""
import json
import os
import textwrap

TINY_NET = textwrap.dedent("""
    name: "tiny_fcn"
    layer { name: "train_data" type: "Data" top: "data" include { stage: "train" } data_param { batch_size: 2 } }
    layer { name: "train_label" type: "Data" top: "label" include { stage: "train" } data_param { batch_size: 2 } }
    layer { name: "val_data" type: "Data" top: "data" include { stage: "val" } data_param { batch_size: 2 } }
    layer { name: "val_label" type: "Data" top: "label" include { stage: "val" } data_param { batch_size: 2 } }
    layer { name: "scale" type: "Power" bottom: "data" top: "scaled" power_param { scale: 0.0039 } }
    layer { name: "conv1" type: "Convolution" bottom: "scaled" top: "conv1"
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
    layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
    layer { name: "score" type: "Convolution" bottom: "conv1" top: "score"
            convolution_param { num_output: 7 kernel_size: 1 weight_filler { type: "xavier" } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
            exclude { stage: "deploy" } }
    layer { name: "accuracy" type: "Accuracy" bottom: "score" bottom: "label" top: "accuracy"
            include { stage: "val" } }
""")


def make_dataset_dir(folder, train=10, val=4, shape=(1, 8, 8), classes=("background", "lv")):
    os.makedirs(folder, exist_ok=True)
    for stage in ("train", "val"):
        for part in ("features", "labels"):
            os.makedirs(os.path.join(folder, "%s_db" % stage, part), exist_ok=True)
    write_dataset_json(folder, {"train": train, "val": val}, shape, classes,
                       pixel_spacing=[1.25, 1.25])  # the global spacing records without one fall back to
    return folder


def write_dataset_json(folder, counts, shape, classes=("background", "lv"), records=None, dtype="uint16", **extra):
    """dataset.json in the format jobs.dataset.build_dataset writes (caffeseg-dataset version 1)."""
    info = {"format": "caffeseg-dataset", "version": 1, "form_values": {}, "encoding": "none",
            "stages": {s: {"count": n, "features_db": "%s_db/features" % s, "labels_db": "%s_db/labels" % s}
                       for s, n in counts.items()},
            "feature": {"shape": list(shape), "dtype": dtype, "storage": "float_data"},
            "label": {"shape": [1] + list(shape[-2:]), "dtype": "uint8", "storage": "data"},
            "classes": list(classes), "palette": [[0, 0, 0]] + [[255, 0, 0]] * (len(classes) - 1),
            "records": records or {}, "mean_file": "mean.binaryproto"}
    info.update(extra)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(info, f)


# A stand-in for pycaffe (no numpy, runs on Python 3.9): records what the runner calls.
FAKE_CAFFE = textwrap.dedent('''
    import json, math, os, re, time

    CALLS = os.environ.get("FAKE_CAFFE_CALLS", "calls.jsonl")

    def _call(*args):
        with open(CALLS, "a") as f:
            f.write(json.dumps([str(a) for a in args]) + "\\n")

    class Array(object):
        def __init__(self, values, shape):
            self.values, self.shape, self.size = list(values), tuple(shape), len(values)
        def mean(self):
            return sum(self.values) / len(self.values)

    class Blob(object):
        def __init__(self, values, shape):
            self.data = Array(values, shape)

    class Net(object):
        def __init__(self, phase):
            self.phase = phase
            self.blobs = {"data": Blob([0.0] * 4, (2, 1, 1, 2)), "loss": Blob([1.0], ())}
            self.outputs = ["loss"] if phase == "train" else ["loss", "accuracy"]
            if phase == "val":
                self.blobs["accuracy"] = Blob([0.5], ())
        def copy_from(self, path):
            _call("copy_from", path)
        def share_with(self, other):
            _call("share_with")
        def forward(self):
            _call("test_forward")
            time.sleep(float(os.environ.get("FAKE_TEST_SECONDS", "0")))  # a slow validation pass
            if os.environ.get("FAKE_VAL_NAN"):  # validation diverges, training does not
                self.blobs["loss"] = Blob([float("nan")], ())

    class Solver(object):
        def __init__(self, path):
            self.iter = 0
            self.net = Net("train")
            self.test_nets = [Net("val")]
            self.text = open(path).read()
        def step(self, n):
            time.sleep(float(os.environ.get("FAKE_STEP_SECONDS", "0")))
            self.iter += n
            nan_at = int(os.environ.get("FAKE_NAN_AT", "0"))
            loss = float("nan") if nan_at and self.iter >= nan_at else 1.0 / self.iter
            self.net.blobs["loss"] = Blob([loss], ())
            _call("step", self.iter)
        def snapshot(self):
            for ext in ("caffemodel", "solverstate"):
                open("snapshot_iter_%d.%s" % (self.iter, ext), "w").write(str(self.iter))
            _call("snapshot", self.iter)
        def restore(self, path):
            self.iter = int(re.search(r"_iter_(\\d+)", path).group(1))
            _call("restore", os.path.basename(path))

    def get_solver(path):
        _call("get_solver", path)
        return Solver(path)

    def set_mode_cpu():
        _call("set_mode_cpu")

    def set_mode_gpu():
        _call("set_mode_gpu")

    def set_device(i):
        _call("set_device", i)
''')


def install_fake_caffe(folder):
    pkg = os.path.join(folder, "caffe")
    os.makedirs(pkg, exist_ok=True)
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write(FAKE_CAFFE)
    return folder


def contours_without_images(root):
    """(image folder, contour folder) that pass the Sunnybrook plugin's form checks but give no
    usable entry: one expert contour whose case folder of images is empty. Its build fails in
    the worker with "no usable contoured image"."""
    expert = os.path.join(str(root), "con", "SC-HF-I-01", "contours-manual", "IRCCI-expert")
    os.makedirs(expert)
    with open(os.path.join(expert, "IM-0001-0048-icontour-manual.txt"), "w") as f:
        f.write("100.0 100.0\n110.0 100.0\n110.0 110.0\n")
    os.makedirs(os.path.join(str(root), "img", "SC-HF-I-1"))
    return os.path.join(str(root), "img"), os.path.join(str(root), "con")


def fake_pycaffe_service(tmp_path, monkeypatch):
    """A JobService on the pycaffe backend whose runners import the fake pycaffe above (the calls
    they make go to ``tmp_path/calls.jsonl``); ``service.fake_path`` is the fake's folder."""
    from caffeseg.jobs.service import JobService
    fake = install_fake_caffe(str(tmp_path / "fake"))
    monkeypatch.setenv("PYTHONPATH", fake)
    monkeypatch.setenv("FAKE_CAFFE_CALLS", str(tmp_path / "calls.jsonl"))
    service = JobService(str(tmp_path / "jobs"), backend="pycaffe")
    service.fake_path = fake
    return service
