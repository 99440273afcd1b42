"""An in-memory backend and plugin for the web tests (the real jobs service is tested by its own
suite). The module also checks the fake itself, so a change in the web's backend contract that
the fake no longer follows shows up here first."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from caffeseg.web.backend import Backend, BadRequest, NotFound
from caffeseg.plugin.sunnybrook import SunnybrookPlugin


def sunnybrook_plugin() -> SunnybrookPlugin:
    """The real Sunnybrook plugin, not a copy of its fields: the web's dataset form is built from
    its own ``FormField`` list, so a renamed field fails the web tests that post it."""
    return SunnybrookPlugin()


def _feature(index: int) -> np.ndarray:
    """A 16-bit image with a bright disc and a few hot pixels (the windowing must ignore them)."""
    yy, xx = np.mgrid[:32, :32]
    img = 200 + 10 * ((xx + index) % 7)
    img = img + (((yy - 16) ** 2 + (xx - 16) ** 2) < 36) * 1500
    img[0, 0] = 60000
    return img.astype(np.uint16)[None]


def _label(index: int) -> np.ndarray:
    yy, xx = np.mgrid[:32, :32]
    return (((yy - 16) ** 2 + (xx - 16) ** 2) < 36).astype(np.uint8)


class FakeBackend:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.jobs_: dict[str, dict] = {}
        self.calls: list[tuple] = []
        self.iteration = 0
        self.next_id = 1

    # helpers for tests
    def add_job(self, kind, name, status="Done", **extra) -> str:
        job_id = f"20260101-000000-{self.next_id:04d}"
        self.next_id += 1
        d = self.root / job_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "log.txt").write_text(f"log of {name}\n")
        job = {"id": job_id, "kind": kind, "name": name, "group": extra.pop("group", ""), "status": status,
               "submitted": time.time(), "elapsed": 12.0, "progress": 1.0 if status == "Done" else 0.3,
               "metrics": {}, "dir": str(d), "files": [{"name": "log.txt", "size": 12}],
               "history": [{"status": "Waiting", "time": time.time() - 5}, {"status": status, "time": time.time()}],
               "log": f"log of {name}\n", "size": 1234}
        if kind == "dataset":
            job["info"] = {"counts": {"train": 4, "val": 2}, "feature_shape": [1, 32, 32], "feature_dtype": "uint16",
                           "label_shape": [1, 32, 32], "label_dtype": "uint8", "classes": ["background", "lv"],
                           "palette": [[0, 0, 0], [255, 0, 0]]}
            job["summary"] = {"train_count": 4, "val_count": 2, "feature_shape": [1, 32, 32], "classes": ["background", "lv"]}
        if kind == "model":
            (d / "snapshot_iter_4.caffemodel").write_bytes(b"weights")
            job["snapshots"] = [{"iteration": 4, "epoch": 1.0, "file": "snapshot_iter_4.caffemodel", "size": 7}]
            job["metrics"] = {"train/loss": {"last": 0.5, "min": 0.4, "max": 0.9, "spark": [0.9, 0.7, 0.5]}}
            job["settings"] = [("Network", "standard network fcn_tiny.prototxt"), ("Batch size", "2 (the network's own)")]
        job.update(extra)
        self.jobs_[job_id] = job
        return job_id

    # Backend contract
    def jobs(self, kind=None):
        return [dict(j) for j in self.jobs_.values() if kind is None or j["kind"] == kind]

    def job(self, job_id):
        if job_id not in self.jobs_:
            raise NotFound(f"job {job_id} does not exist")
        return dict(self.jobs_[job_id])

    def metrics(self, job_id, since=0):
        self.job(job_id)
        self.iteration += 2
        its = [i for i in range(self.iteration) if i >= since]
        return {"status": self.jobs_[job_id]["status"], "progress": min(1.0, self.iteration / 20), "eta": 30,
                "iteration": self.iteration, "iters_per_epoch": 4,
                "series": {"train/loss": [[i, 1.0 / (1 + i)] for i in its],
                           "lr": [[i, 0.01] for i in its],
                           "val/dice": [[i, 0.1 * i] for i in its if i % 4 == 3]}}

    def abort(self, job_id):
        self.calls.append(("abort", job_id))
        self.job(job_id)
        self.jobs_[job_id]["status"] = "Aborted"

    def resume(self, job_id):
        self.calls.append(("resume", job_id))
        self.jobs_[job_id]["status"] = "Running"

    def delete(self, job_id):
        self.calls.append(("delete", job_id))
        job = self.job(job_id)
        users = [j["name"] for j in self.jobs_.values() if j.get("dataset_id") == job_id]
        if users:
            raise ValueError(f"dataset is used by {', '.join(users)}")
        del self.jobs_[job_id]

    def clone(self, job_id):
        job = self.job(job_id)
        if job["kind"] == "dataset":
            return {"plugin": "sunnybrook", "values": {"val_percent": 25, "split_by": "patient"},
                    "options": {"encoding": "png"}}
        return {"dataset": job.get("dataset_id"), "base_lr": [0.01, 0.001], "epochs": 3,
                "network_source": "custom", "custom_network": "name: 'x'"}

    def create_dataset(self, plugin_id, values, options):
        self.calls.append(("create_dataset", plugin_id, values, options))
        if values.get("val_percent") == 100:
            raise BadRequest("no training records would be left", {"val_percent": "must be below 100"})
        return self.add_job("dataset", options["dataset_name"], status="Running", group=options.get("group_name") or "")

    def create_model(self, options):
        self.calls.append(("create_model", options))
        ids = []
        for lr in options["base_lr"]:
            ids.append(self.add_job("model", f"{options['model_name']} lr={lr}", status="Running",
                                    dataset_id=options["dataset"], group=options.get("group_name") or ""))
        return ids

    def dataset_records(self, job_id, stage, offset, limit):
        self.job(job_id)
        n = 4 if stage == "train" else 2
        recs = [{"index": i, "key": f"{i:08d}", "name": f"SC-HF-NI-3 / {48 + i:04d}"} for i in range(n)]
        return {"total": n, "records": recs[offset:offset + limit]}

    def dataset_record(self, job_id, stage, index):
        self.job(job_id)
        if index >= (4 if stage == "train" else 2):
            raise NotFound(f"no record {index} in {stage}")
        return _feature(index), _label(index), {"palette": [[0, 0, 0], [255, 0, 0]]}

    def worker_takes(self, job):
        return True

    def worker_backends(self):
        return {"engine"}

    def snapshots(self, job):
        return self.job(job["id"]).get("snapshots") or []

    def standard_networks(self):
        return [{"name": "fcn_tiny", "title": "FCN tiny", "description": "test net", "text": "name: 'tiny'\n"}]

    def epoch_costs(self):
        return dict(getattr(self, "costs", {}))

    def cost_estimate(self, network, dataset_id):
        self.calls.append(("cost_estimate", network, dataset_id))
        self.job(dataset_id)
        estimates = getattr(self, "estimates", {})  # tests: {network: [answers in turn]}
        answers = estimates.get(network) or [{"state": "error", "message": "no estimate in this fake"}]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    # GPUs: a test sets ``gpus`` (the summary) and ``hardware_panel`` to what the service would say.
    def gpu_summary(self):
        return dict(getattr(self, "gpus", {"total": 0, "free": [], "jobs": {}}))

    def hardware(self, job_id):
        self.job(job_id)
        return dict(getattr(self, "hardware_panel", {
            "device": "CPU", "gpus": [], "process": None,
            "system": {"cores": 2, "load_average": [0.5, 0.4, 0.3], "memory_total": 8 << 30,
                       "memory_available": 6 << 30, "memory_used_fraction": 0.25}}))

    # Pretrained models: the real store (web.pretrained_store) under this fake's folder; every
    # dataset of the fake has 1-channel features.
    def pretrained_models(self):
        from caffeseg.web import pretrained_store
        return pretrained_store.catalogue(self.root)

    def pretrained_network(self, pretrained_id, dataset_id):
        from caffeseg.web import pretrained_store
        return pretrained_store.resolve(self.root, pretrained_id, 1)

    def upload_pretrained(self, name, prototxt, weights, description="", fields=None):
        from caffeseg.web import pretrained_store
        self.calls.append(("upload_pretrained", name))
        return pretrained_store.save_upload(self.root, name, prototxt, weights, description, fields)

    def delete_pretrained(self, pretrained_id):
        from caffeseg.web import pretrained_store
        self.calls.append(("delete_pretrained", pretrained_id))
        pretrained_store.delete_upload(self.root, pretrained_id)

    def prepare_pretrained(self, name, gray):
        self.calls.append(("prepare_pretrained", name, gray))
        return {"name": name, "phase": "queued", "gray": gray}

    def inspect_network(self, text, dataset_id=None):
        from caffeseg.web.netinspect import inspect  # the real parser and shape inference (Visualize)
        return inspect(text, [1, 32, 32])

    def evaluation(self, job_id):
        self.job(job_id)
        return {"summary": {"dice": {"mean": 0.8, "std": 0.1, "min": 0.5, "max": 0.95}},
                "worst": [{"key": "00000001", "name": "SC-HF-NI-3 / 0049", "dice": 0.5, "iou": 0.33}],
                "worst_columns": ["dice", "iou"]}

    def evaluate(self, job_id):
        self.calls.append(("evaluate", job_id))
        return self.evaluation(job_id)

    def clinical_export(self, job_id, fmt, *, case=None, record=None):
        self.calls.append(("clinical_export", job_id, fmt, case, record))
        self.job(job_id)
        return f"contours-{case or record or 'all'}.zip", "application/zip", b"PK\x05\x06" + bytes(18)

    def infer_series(self, job_id, path):
        self.calls.append(("infer_series", job_id, path))
        self.job(job_id)
        return {"snapshot": "snapshot_iter_10.caffemodel",
                "images": [{"source": "IM-0001.dcm", "lv_area_mm2": 1200.0, "slice_location": 0.0, "phase_key": "phase 0"}],
                "function": {"why_not": "volumes need several DICOM slices with PixelSpacing (one series at ED and ES)"}}

    def infer(self, job_id, snapshot, *, record=None, image_path=None, visualize=False):
        self.calls.append(("infer", job_id, snapshot, record, image_path, visualize))
        if record is not None and record not in ("00000000", "00000001"):
            raise BadRequest(f"no validation record {record}")
        label = _label(0) if record else None
        pred = np.roll(_label(0), 1, axis=1)
        result = {"image": _feature(0), "prediction": pred, "label": label, "classes": ["background", "lv"],
                  "palette": [[0, 0, 0], [255, 0, 0]], "snapshot": snapshot or 4,
                  "foreground_probability": np.where(pred > 0, 0.8, 0.3),  # the threshold's input
                  "metrics": {"dice": 0.9, "iou": 0.82, "area_pred_px": int(pred.sum())} if record else {}}
        if visualize:
            result["layers"] = [{"name": "conv1", "kind": "activation", "shape": [1, 4, 32, 32], "mean": 0.1,
                                 "std": 0.2, "hist": {"counts": [1, 5, 2], "edges": [0, 1, 2, 3]}}]
        return result

    def download(self, job_id, snapshot=None, fmt="tar.gz"):
        job = self.job(job_id)
        path = Path(job["dir"]) / ("model." + fmt)
        path.write_bytes(b"archive")
        return str(path)

    def download_stream(self, job_id, snapshot=None, fmt="tar.gz"):
        path = self.download(job_id, snapshot, fmt)
        return path, iter([b"arch", b"ive"])

    # DIGITS parity (issue 18): editing, details, info, pretrained round trip, Test Many
    def edit_job(self, job_id, fields):
        self.calls.append(("edit_job", job_id, dict(fields)))
        self.job(job_id)
        if "name" in fields and not str(fields["name"]).strip():
            raise BadRequest("a job name needs 1-256 characters", {"name": "1-256 characters"})
        for key, value in fields.items():
            self.jobs_[job_id][key] = value
        return self.job(job_id)

    def bulk_jobs(self, action, job_ids, group=None):
        self.calls.append(("bulk_jobs", action, list(job_ids), group))
        done, errors = [], {}
        for job_id in job_ids:
            if job_id not in self.jobs_:
                errors[job_id] = f"no job {job_id}"
                continue
            if action == "group":
                self.jobs_[job_id]["group"] = group or ""
            elif action == "delete":
                del self.jobs_[job_id]
            else:
                self.jobs_[job_id]["status"] = "Aborted"
            done.append(job_id)
        return {"done": done, "errors": errors}

    def job_details(self, job_id):
        job = self.job(job_id)
        now = time.time()
        related = [{"id": j["id"], "name": j["name"], "kind": j["kind"], "status": j["status"],
                    "relation": "model" if job["kind"] == "dataset" else "dataset"}
                   for j in self.jobs_.values()
                   if j.get("dataset_id") == job_id or j["id"] == job.get("dataset_id")]
        return {"timeline": [{"status": "Waiting", "time": now - 65, "message": None, "duration": 5.0},
                             {"status": "Running", "time": now - 60, "message": None, "duration": 60.0},
                             {"status": job["status"], "time": now, "message": None, "duration": None}],
                "folder": job["dir"], "disk_bytes": 1234, "related": related, "owner": job.get("owner"),
                "pretrained": [{"path": "/data/pretrained/bvlc_alexnet-fcn-gray.caffemodel", "exists": True,
                                "size": 1000, "source": "known"}] if job["kind"] == "model" else []}

    def server_info(self):
        return {"server": "fake-host", "caffeseg": "0.1.0", "python": "3.11", "python_executable": "python",
                "torch": "2.13.0", "cuda": None, "engine": "/engine", "engine_version": "1.0.0",
                "real_caffe": {"found": False, "hint": "run `make caffe`"}, "plugins": ["sunnybrook"],
                "broken_plugins": [], "cpu": {"model": "Fake CPU", "cores": 2, "usable_cores": 2},
                "memory_total": 8 << 30, "gpus": [], "gpu_jobs": {"total": 0, "free": [], "jobs": {}}}

    def make_pretrained(self, job_id, snapshot=None, name=None):
        self.calls.append(("make_pretrained", job_id, snapshot, name))
        job = self.job(job_id)
        return {"id": "up-000000000001", "name": name or job["name"], "source": {"job_id": job_id}}

    def upload_pretrained_archive(self, archive, name=None):
        from caffeseg.web import pretrained_store
        self.calls.append(("upload_pretrained_archive", name))
        return pretrained_store.save_archive(self.root, archive, name)

    def pretrained_layers(self, pretrained_id):
        from caffeseg.web import pretrained_store
        return pretrained_store.layers(self.root, pretrained_id)

    def pretrained_layer_image(self, pretrained_id, layer):
        from caffeseg.web import pretrained_store
        return pretrained_store.layer_image(self.root, pretrained_id, layer)

    def test_many(self, job_id, source, options):
        self.calls.append(("test_many", job_id, dict(source), dict(options)))
        self.job(job_id)
        self.tests_ = getattr(self, "tests_", {})
        test_id = "t-%010d" % (len(self.tests_) + 1)
        rows = [{"index": 0, "source": "img0.png", "height": 32, "width": 32, "lv_area_px": 12,
                 "mean_confidence": 0.9, "classes": {"background": {"pixels": 1012, "fraction": 1012 / 1024},
                                                     "lv": {"pixels": 12, "fraction": 12 / 1024}},
                 "files": {"class_map": "class_maps/00000.png"}}]
        self.tests_[test_id] = {"id": test_id, "request": {"source": dict(source)}, "classes": ["background", "lv"],
                                "status": {"state": "Done", "done": 1, "total": 1, "error": None}, "rows": rows}
        return self.tests_[test_id]

    def test_many_status(self, job_id, test_id):
        self.job(job_id)
        if test_id not in getattr(self, "tests_", {}):
            raise NotFound(f"no test request {test_id!r}")
        return self.tests_[test_id]


def test_fake_and_real_backends_implement_every_method_of_the_contract():
    """Both implement each method of web.backend.Backend with its parameters, so a change of the
    contract fails here, not on a page."""
    import inspect
    from caffeseg.web.service_backend import ServiceBackend
    contract = {name: inspect.signature(fn) for name, fn in vars(Backend).items()
                if callable(fn) and not name.startswith("_")}
    assert len(contract) > 20
    for implementation in (FakeBackend, ServiceBackend):
        for name, signature in contract.items():
            own = getattr(implementation, name, None)
            assert own is not None and own is not getattr(Backend, name), f"{implementation.__name__}.{name} missing"
            assert list(inspect.signature(own).parameters) == list(signature.parameters), \
                f"{implementation.__name__}.{name}{inspect.signature(own)} differs from Backend.{name}{signature}"


def test_fake_backend_follows_the_contract(tmp_path):
    fake = FakeBackend(tmp_path)
    ds = fake.add_job("dataset", "d")
    assert fake.job(ds)["kind"] == "dataset"
    feature, label, meta = fake.dataset_record(ds, "train", 0)
    assert feature.dtype == np.uint16 and feature.shape == (1, 32, 32) and label.shape == (32, 32)
    m = fake.metrics(ds, since=0)
    assert set(m["series"]) == {"train/loss", "lr", "val/dice"}
