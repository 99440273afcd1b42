"""Shared pieces of the clinical tests: a phantom dataset and a stand-in for the network."""
import os

import cv2
import numpy as np

from caffeseg.jobs import evaluate as ev
from caffeseg.jobs.dataset import build_dataset
from caffeseg.plugin.sunnybrook import phantom
from caffeseg.plugin.sunnybrook.plugin import SunnybrookPlugin

CASES = ["SC-HF-I-1", "SC-N-2", "SC-HYP-1"]


def make_release(root, cases=CASES, slices=5, seed=4):
    return phantom.generate(root, cases=cases, seed=seed, slices=slices)


def make_dataset(release_root, out, **values):
    form = {"image_folder": os.path.join(release_root, "challenge_training"),
            "contour_folder": os.path.join(release_root, "TrainingDataContours"), "val_percent": 30}
    form.update(values)
    plugin = SunnybrookPlugin()
    return build_dataset(plugin, plugin.validate(form), out)


class OracleModel:
    """Stands in for the network: answers each image with its label, optionally dilated by
    ``grow`` pixels (a model that over-segments)."""

    def __init__(self, dataset_dir, grow=0):
        self.weights = "oracle.caffemodel"
        self.lookup = {}
        for stage in ("train", "val"):
            for _, _, image, label in ev.iter_stage(dataset_dir, stage):
                if grow:
                    label = cv2.dilate(label.astype(np.uint8), np.ones((2 * grow + 1,) * 2, np.uint8))
                self.lookup[image.tobytes()] = label

    def predict(self, image):
        return {"class_map": self.lookup[np.asarray(image).tobytes()]}

    def crop_like(self, label):
        return label


def evaluated_model_job(svc, tmp_path, cases=("SC-HF-I-1", "SC-N-2", "SC-HYP-1", "SC-N-3"), grow=1):
    """A dataset built from a phantom release, imported into ``svc`` (a JobService), one model job
    on it, and that job's evaluation.json / evaluation_masks.npz written by jobs.evaluate with
    OracleModel standing in for the network (no training). Returns (dataset job, model job)."""
    from tests.jobs_fixtures import TINY_NET
    root = str(tmp_path / "release")
    make_release(root, cases=list(cases), slices=3)
    built = str(tmp_path / "built")
    make_dataset(root, built, val_percent=50)
    ds = svc.import_dataset(built, "clinical")
    [job] = svc.create_model({"dataset_id": ds["id"], "network_text": TINY_NET, "set_num_output": True})
    ds_dir = svc.show(ds["id"])["dir"]
    ev.evaluate(OracleModel(ds_dir, grow=grow), ds_dir, os.path.join(job["dir"], "evaluation.json"))
    return ds, job
