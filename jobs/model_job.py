"""Writing a model job's folder: original/train_val/deploy/solver prototxts and job.json.

A model job is made from a dataset job + a network (a file from ``prototxt/``, a previous
model job's ``original.prototxt``, or custom text) + solver options. Everything the runner
needs is written here, once, so the runner itself stays a thin pycaffe-API loop.
"""
import json
import os
import shutil

from engine.prototxt import PrototxtError, format_message, parse_net
from jobs import derive
from jobs.paths import atomic_write, atomic_write_json

STANDARD_NETWORK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "prototxt")


class ModelJobError(ValueError):
    """Bad model-job options; ``field`` names the form field when there is one."""

    def __init__(self, message, field=None):
        ValueError.__init__(self, message)
        self.field = field
        self.field_errors = {field: message} if field else None


def network_text(options, root=None):
    """The original network text from options: network_text, standard_network or previous_job."""
    if options.get("network_text"):
        return options["network_text"], "custom network"
    if options.get("standard_network"):
        name = os.path.basename(options["standard_network"])
        if not name.endswith(".prototxt"):
            name += ".prototxt"
        path = os.path.join(STANDARD_NETWORK_DIR, name)
        if not os.path.isfile(path):
            raise ModelJobError("no standard network %r in %s" % (name, STANDARD_NETWORK_DIR), "standard_network")
        with open(path) as f:
            return f.read(), path
    if options.get("previous_job_dir"):
        path = os.path.join(options["previous_job_dir"], "original.prototxt")
        with open(path) as f:
            return f.read(), path
    raise ModelJobError("choose a network: a standard network, a previous model or custom text", "network")


def write_model_job(job_dir, dataset_dir, options):
    """Derive and write all files of a model job; returns the SolverParameter."""
    text, source = network_text(options)
    try:
        original = parse_net(text, source=source)
    except PrototxtError as exc:
        raise ModelJobError("network %s: %s" % (source, exc), "network")
    facts = derive.DatasetFacts.load(dataset_dir)
    try:
        train_val, deploy = derive.derive_networks(original, facts, options)
        batch = derive.data_batch_size(train_val, derive.TRAIN_STATE)
        val_batch = derive.data_batch_size(train_val, derive.VAL_STATE)
        solver = derive.derive_solver(facts.train_count, facts.val_count if val_batch else 0, batch,
                                      val_batch or 0, options)
    except derive.DeriveError as exc:
        raise ModelJobError(str(exc))
    os.makedirs(job_dir, exist_ok=True)
    atomic_write(os.path.join(job_dir, "original.prototxt"), text)
    atomic_write(os.path.join(job_dir, "train_val.prototxt"), format_message(train_val))
    atomic_write(os.path.join(job_dir, "deploy.prototxt"), format_message(deploy))
    atomic_write(os.path.join(job_dir, "solver.prototxt"), format_message(solver))
    for path in _python_layer_files(options):
        shutil.copy2(path, os.path.join(job_dir, os.path.basename(path)))
    atomic_write_json(os.path.join(job_dir, "job.json"), {
        "epochs": int(options.get("epochs", 30)), "dataset_dir": os.path.abspath(dataset_dir),
        "network_source": source, "options": _jsonable(options), "max_iter": solver.max_iter,
        "classes": facts.classes, "mean": options.get("mean", "none")})
    return solver


def _python_layer_files(options):
    files = options.get("python_layer_files") or []
    if isinstance(files, str):
        files = [files]
    for path in files:
        if not os.path.isfile(path):
            raise ModelJobError("python layer file %s does not exist" % path, "python_layer_file")
    return files


def _jsonable(options):
    return json.loads(json.dumps(options, default=str))
