"""DIGITS' names and shapes, for the DIGITS URLs (``web.views.digits_urls``): the JSON dicts its
scripts read (``job_entry``: the home table's ``json_dict``, ``creation_time``, ``version``) and
its New Model form's field names (``model_form_values``: digits/model/forms.py → caffeseg's
``ModelForm``). Pure functions over the ``Backend``'s job dicts and a request's form.
"""
from __future__ import annotations

import datetime
import importlib.metadata

from caffeseg.web.templating import STATUS_CLASS

FINISHED = ("Done", "Error", "Aborted", "Interrupted")  # completed_jobs.json's jobs: all but the running ones

# DIGITS' model form field → caffeseg's ModelForm field (digits/model/forms.py names)
MODEL_FIELDS = {
    "dataset": "dataset", "model_name": "model_name", "group_name": "group_name", "train_epochs": "epochs",
    "snapshot_interval": "snapshot_interval", "val_interval": "val_interval", "random_seed": "random_seed",
    "batch_size": "batch_size", "batch_accumulation": "batch_accumulation", "learning_rate": "base_lr",
    "weight_decay": "weight_decay", "rms_decay": "rms_decay", "lr_policy": "lr_policy",
    "lr_step_size": "lr_step_size", "lr_multistep_values": "lr_step_values", "use_mean": "mean_subtraction",
    "crop_size": "crop_size", "method": "network_source", "standard_networks": "standard_network",
    "previous_networks": "previous_network", "custom_network": "custom_network",
    "custom_network_snapshot": "pretrained_model", "select_gpu_count": "gpu_count", "select_gpus": "gpus"}
# the policy's own gamma / power fields of DIGITS' form
LR_GAMMA = {"step": "lr_step_gamma", "multistep": "lr_multistep_gamma", "exp": "lr_exp_gamma",
            "inv": "lr_inv_gamma", "sigmoid": "lr_sigmoid_gamma"}
LR_POWER = {"inv": "lr_inv_power", "poly": "lr_poly_power"}
SOLVERS = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
           "ADADELTA": "AdaDelta", "ADAM": "Adam"}
# fields DIGITS scripts send that have no meaning here (one framework, one GPU policy)
IGNORED = {"framework", "select_gpu", "shuffle", "python_layer_from_client", "python_layer_server_file"}


def model_form_values(form) -> tuple[dict, list[str]]:
    """DIGITS' model form fields (a MultiDict) → (caffeseg ModelForm values, the fields left unused)."""
    out, unused = {}, []
    policy = form.get("lr_policy") or "step"
    for key in form:
        values = form.getlist(key)
        value = ",".join(values) if key == "select_gpus" else values[-1]
        if key in MODEL_FIELDS:
            out[MODEL_FIELDS[key]] = value
        elif key == LR_GAMMA.get(policy):
            out["lr_gamma"] = value
        elif key == LR_POWER.get(policy):
            out["lr_power"] = value
        elif key == "lr_sigmoid_step" and policy == "sigmoid":
            out["lr_step_size"] = value
        elif key == "solver_type":
            out["solver_type"] = SOLVERS.get(value.upper(), value)
        elif not (key.startswith("lr_") or key in IGNORED):
            unused.append(key)
    if out.get("mean_subtraction") in ("", None):
        out.pop("mean_subtraction", None)
    return out, unused


def job_entry(job: dict, fields: set) -> dict:
    """DIGITS' home-table ``json_dict``: id, name, group, status, status_css, submitted, elapsed,
    progress (percent), dataset_id, type, framework, username, and per model output
    "<name> (<phase>) last/min/max" (each such key is also added to ``fields``)."""
    d = {"id": job["id"], "name": job["name"], "group": job.get("group") or "", "status": job["status"],
         "status_css": STATUS_CLASS.get(str(job["status"]).lower(), ""), "submitted": job.get("submitted"),
         "elapsed": job.get("elapsed"), "type": job["kind"], "username": job.get("owner") or ""}
    if job.get("progress") is not None:
        d["progress"] = int(round(100 * float(job["progress"])))
    if job.get("dataset_id"):
        d["dataset_id"] = job["dataset_id"]
    if job["kind"] == "model":
        d["framework"] = "caffe"
        for key, m in (job.get("metrics") or {}).items():
            phase, _, name = key.partition("/") if "/" in key else ("", "", key)
            label = "%s (%s) " % (name, phase) if phase else "%s " % name
            for stat in ("last", "min", "max"):
                if m.get(stat) is not None:
                    fields.add(label + stat)
                    d[label + stat] = m[stat]
    return d


def brief_entry(job: dict) -> dict:
    """``{id, name, status}``: a job in index.json and in the answer of a model creation."""
    return {"id": job["id"], "name": job["name"], "status": job["status"]}


def creation_time(job: dict) -> str | None:
    """DIGITS' "creation time": the local time the job was submitted, as ``str(datetime)``."""
    return str(datetime.datetime.fromtimestamp(job["submitted"])) if job.get("submitted") else None


def version() -> str | None:
    """The installed caffeseg's version (index.json's ``version``), None in a bare checkout."""
    try:
        return importlib.metadata.version("caffeseg")
    except importlib.metadata.PackageNotFoundError:
        return None
