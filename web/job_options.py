"""The new-job forms' values ↔ the options of ``jobs.service`` (both directions).

``model_options(form, backend)`` reads a validated ``ModelForm`` (the page and ``POST
/api/models`` share it), ``service_model_options`` renames those values to
``JobService.create_model``'s options, ``model_form_values`` turns a model's ``clone_values``
back into form fields and ``clone_form_data``/``restore_network_tab`` into the Clone form's
data; ``SERVICE_FIELD_NAMES`` maps the service's field errors onto the form.
The dataset form has ``dataset_build_options`` and ``dataset_form_values``.
"""
from __future__ import annotations

import secrets
from pathlib import Path

from werkzeug.utils import secure_filename

from caffeseg.web.backend import BadRequest, Unavailable
from caffeseg.web.forms import ModelForm, choice_list, parse_number_list

# Names the jobs service uses in its field errors → the form's fields.
SERVICE_FIELD_NAMES = {"dataset_id": "dataset", "name": "model_name", "network": "custom_network",
                       "standard_network": "standard_network", "python_layer_file": "python_layer_server_file",
                       "python_layer_files": "python_layer_server_file", "iter_size": "batch_accumulation",
                       "pretrained": "pretrained_model", "mean": "mean_subtraction"}

MODEL_OPTION_FIELDS = ("dataset", "python_layer_server_file", "epochs", "snapshot_interval", "val_interval",
                       "random_seed", "batch_accumulation", "solver_type", "weight_decay", "rms_decay", "lr_policy",
                       "lr_step_size", "lr_gamma", "lr_power", "mean_subtraction", "crop_size",
                       "network_source", "standard_network", "previous_network", "previous_snapshot",
                       "pretrained_network", "custom_network", "group_name", "model_name", "backend",
                       "gpu_count", "gpus", "share_gpus")

# Datasets a model can be made for: built, or still being built (the model waits for it, as
# jobs.service.create_model allows). Failed, aborted or interrupted builds have nothing to train on.
TRAINABLE_DATASET_STATUSES = {"done", "running", "waiting", "initialized"}

MEAN_CHOICES = ("none", "image", "pixel")


def _safe(call, default):
    try:
        return call()
    except Unavailable:
        return default


def fill_model_choices(form: ModelForm, backend, plugin: str | None = None) -> dict:
    """Choices that come from the jobs store; returns the lists the template also needs.
    ``plugin`` (New Model ▸ Images ▸ <plugin>, DIGITS' per-extension menu): only the datasets that
    plugin made are offered."""
    datasets = [j for j in _safe(lambda: backend.jobs("dataset"), [])
                if str(j.get("status", "")).lower() in TRAINABLE_DATASET_STATUSES
                and (not plugin or j.get("plugin") == plugin)]
    form.dataset.choices = choice_list([("", "— choose a dataset —")] + [
        (j["id"], f"{j.get('name', j['id'])} ({j.get('status', '?')})") for j in datasets])
    networks = _safe(backend.standard_networks, [])
    form.standard_network.choices = choice_list((n["name"], n.get("title", n["name"])) for n in networks)
    previous = _safe(lambda: backend.jobs("model"), [])
    form.previous_network.choices = choice_list((j["id"], j.get("name", j["id"])) for j in previous)
    snapshots = [("", "None: the network only")]
    for j in previous:  # each model's snapshots, newest first (DIGITS' per-model "Pretrained model")
        shots = _safe(lambda: backend.snapshots(j), [])
        for s in sorted(shots, key=lambda s: s["iteration"], reverse=True):
            epoch = f"epoch {s['epoch']:g}, " if s.get("epoch") is not None else ""
            snapshots.append((f"{j['id']}:{s['iteration']}", f"{j.get('name', j['id'])}: {epoch}iteration {s['iteration']}"))
    form.previous_snapshot.choices = choice_list(snapshots)
    pretrained = _safe(backend.pretrained_models, [])
    form.pretrained_network.choices = choice_list((p["id"], p.get("name", p["id"])) for p in pretrained)
    costs = _safe(backend.epoch_costs, {})  # the cost hint: time per training image, measured here
    return {"datasets": datasets, "networks": networks, "previous": previous, "pretrained": pretrained, "costs": costs,
            "plugin_filter": plugin}


def model_options(form: ModelForm, backend) -> dict:
    """A validated model form's values (lists parsed, an upload read, a pretrained network resolved)."""
    options = {name: form[name].data for name in MODEL_OPTION_FIELDS}
    options["base_lr"] = parse_number_list(form.base_lr.data)
    options["batch_size"] = parse_number_list(form.batch_size.data, integer=True)
    options["lr_step_values"] = parse_number_list(form.lr_step_values.data)
    options["pretrained_model"] = [p.strip() for p in (form.pretrained_model.data or "").split(":") if p.strip()]
    upload = form.python_layer_upload.data
    if upload and getattr(upload, "filename", ""):
        options["python_layer_upload"] = {"filename": upload.filename, "content": upload.read()}
    if (options.get("network_source") or "standard") == "pretrained":
        # The chosen pretrained model gives the network and its weights (BadRequest when not made yet).
        from caffeseg.web.pretrained_store import with_network
        options = with_network(options, backend.pretrained_network(options["pretrained_network"], options["dataset"]))
    return options


def service_model_options(form: dict, jobs_dir) -> tuple[dict, Path | None]:
    """``model_options`` → the option names of ``jobs.service.create_model``.

    Returns the options and a staging folder (under ``jobs_dir``) holding an uploaded Python layer
    file (the service copies it into the job folder; the caller removes the staging folder)."""
    opts = {
        "dataset_id": form.get("dataset"),
        "name": form.get("model_name"),
        "group_name": form.get("group_name") or None,
        "epochs": form.get("epochs"),
        "snapshot_interval": form.get("snapshot_interval"),
        "val_interval": form.get("val_interval"),
        "random_seed": form.get("random_seed"),
        "iter_size": form.get("batch_accumulation") or 1,
        "solver_type": form.get("solver_type") or "SGD",
        "weight_decay": form.get("weight_decay"),
        "base_lr": ",".join(str(v) for v in form.get("base_lr") or [0.01]),
        "batch_size": ",".join(str(v) for v in form.get("batch_size") or []) or None,
        "mean": form.get("mean_subtraction") if form.get("mean_subtraction") in MEAN_CHOICES else "none",
        "crop_size": form.get("crop_size"),
        "lr_policy": _lr_policy(form),
        "backend": form.get("backend") or None,  # recorded on the job: only a worker for it takes it
        # GPUs (jobs/gpus.py): a count of the next free ones, or these; the service checks them
        "gpu_count": form.get("gpu_count"),
        "gpus": (form.get("gpus") or "").strip() or None,
        "share_gpus": True if form.get("share_gpus") else None,
    }
    source = form.get("network_source") or "standard"
    if source == "custom":
        opts["network_text"] = form.get("custom_network")
    elif source == "previous":
        opts["previous_job_id"] = form.get("previous_network")
        job_id, _, iteration = str(form.get("previous_snapshot") or "").partition(":")
        if job_id and iteration.isdigit():  # start from that snapshot's weights (checked by the form)
            opts["pretrained_job_id"], opts["pretrained_snapshot"] = job_id, int(iteration)
    elif source == "pretrained":  # model_options resolves it first (web.pretrained_store.with_network)
        raise BadRequest("choose a pretrained network", {"pretrained_network": "choose a pretrained network"})
    else:
        opts["standard_network"] = form.get("standard_network")
    if form.get("rms_decay") not in (None, "") and (form.get("solver_type") or "SGD") == "RMSProp":
        opts["rms_decay"] = float(form["rms_decay"])  # Caffe's default 0.99 when left empty
    if form.get("pretrained_model"):
        opts["pretrained"] = list(form["pretrained_model"])
    if form.get("pretrained_network_id"):
        # Remembered for Clone (the Pretrained tab comes back selected); the runner ignores them.
        opts["pretrained_network"] = form["pretrained_network_id"]
        opts["pretrained_network_weights"] = form.get("pretrained_network_weights")
    files = [form["python_layer_server_file"]] if form.get("python_layer_server_file") else []
    staged = None
    upload = form.get("python_layer_upload")
    if upload:
        staged = Path(jobs_dir) / ".uploads" / secrets.token_hex(8)
        staged.mkdir(parents=True, exist_ok=True)
        target = staged / (secure_filename(upload["filename"]) or "python_layer.py")
        target.write_bytes(upload["content"])
        files.append(str(target))
    if files:
        opts["python_layer_files"] = files
    return {k: v for k, v in opts.items() if v is not None}, staged


def _lr_policy(form: dict) -> dict:
    """The form's learning-rate fields → ``lr_policy`` {policy, stepsize, stepvalue, gamma, power}
    with only the parameters the policy uses."""
    policy = form.get("lr_policy") or "fixed"
    out = {"policy": policy}
    if policy in ("step", "sigmoid") and form.get("lr_step_size") is not None:
        out["stepsize"] = form["lr_step_size"]
    if policy == "multistep" and form.get("lr_step_values"):
        out["stepvalue"] = ",".join(str(v) for v in form["lr_step_values"])
    if policy in ("step", "multistep", "exp", "inv", "sigmoid") and form.get("lr_gamma") is not None:
        out["gamma"] = form["lr_gamma"]
    if policy in ("inv", "poly") and form.get("lr_power") is not None:
        out["power"] = form["lr_power"]
    return out


def model_form_values(values: dict) -> dict:
    """``jobs.service.clone_values`` of a model → the new-model form's field names."""
    policy = values.get("lr_policy") if isinstance(values.get("lr_policy"), dict) else {"policy": values.get("lr_policy") or "fixed"}
    out = {
        "dataset": values.get("dataset_id"), "model_name": values.get("name"),
        "group_name": values.get("group_name"), "epochs": values.get("epochs"),
        "snapshot_interval": values.get("snapshot_interval"), "val_interval": values.get("val_interval"),
        "random_seed": values.get("random_seed"), "batch_accumulation": values.get("iter_size"),
        "solver_type": values.get("solver_type"), "weight_decay": values.get("weight_decay"),
        "rms_decay": values.get("rms_decay"),
        "base_lr": values.get("base_lr"), "batch_size": values.get("batch_size"),
        "mean_subtraction": values.get("mean"), "crop_size": values.get("crop_size"),
        "lr_policy": policy.get("policy"), "lr_step_size": policy.get("stepsize"),
        "lr_gamma": policy.get("gamma"), "lr_power": policy.get("power"),
        "lr_step_values": policy.get("stepvalue"), "pretrained_model": values.get("pretrained"),
        "backend": values.get("backend"),
        "gpu_count": values.get("gpu_count"),
        "gpus": ",".join(str(g) for g in values["gpus"]) if isinstance(values.get("gpus"), list) else values.get("gpus"),
        "share_gpus": values.get("share_gpus"),
    }
    if values.get("pretrained_network"):
        out["network_source"], out["pretrained_network"] = "pretrained", values["pretrained_network"]
        weights = values.get("pretrained") or []
        rest = [p for p in ([weights] if isinstance(weights, str) else weights)
                if p != values.get("pretrained_network_weights")]
        out["pretrained_model"] = rest or None
    elif values.get("network_text"):
        out["network_source"], out["custom_network"] = "custom", values["network_text"]
    elif values.get("standard_network"):
        out["network_source"], out["standard_network"] = "standard", values["standard_network"]
    files = values.get("python_layer_files") or []
    if files:
        out["python_layer_server_file"] = files[0] if isinstance(files, list) else files
    return {k: v for k, v in out.items() if v is not None}


def _plain_number(value):
    """1.0 → 1 (the form shows "1", as on a new form); other values unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def restore_network_tab(form: ModelForm, job: dict, lists: dict) -> None:
    """The clone's network tab as the model was made (DIGITS): a standard or previous network
    comes back chosen on its tab, not pasted into Custom Network (the service gives every model's
    original.prototxt as its text). A custom network, or one no longer offered, stays custom."""
    options = job.get("options") or {}
    if (form.network_source.data or "custom") != "custom" or options.get("pretrained_network"):
        return
    standard = options.get("standard_network")
    previous = options.get("previous_job_id")
    if standard and standard in {n["name"] for n in lists["networks"]}:
        form.network_source.data, form.standard_network.data = "standard", standard
    elif not standard and previous and previous in {j["id"] for j in lists["previous"]}:
        form.network_source.data, form.previous_network.data = "previous", previous
    else:
        return
    form.custom_network.data = ""


def clone_form_data(values: dict, name: str) -> dict:
    """``Backend.clone``'s values of a model → the new-model form's data (lists as "a, b" text,
    1.0 as 1, pretrained paths joined by ":"), named ``name``; absent values keep the defaults."""
    values = dict(values)
    for key in ("base_lr", "batch_size", "lr_step_values"):
        if isinstance(values.get(key), str):  # e.g. the service's stepvalue "50.0,85.0"
            try:
                values[key] = [float(v) for v in values[key].split(",") if v.strip()]
            except ValueError:
                pass
        if isinstance(values.get(key), (list, tuple)):
            values[key] = ", ".join(str(_plain_number(v)) for v in values[key])
    for key in ("snapshot_interval", "val_interval", "lr_step_size", "lr_gamma", "lr_power", "weight_decay"):
        values[key] = _plain_number(values.get(key))
    values = {k: v for k, v in values.items() if v is not None}
    if isinstance(values.get("pretrained_model"), (list, tuple)):
        values["pretrained_model"] = ":".join(values["pretrained_model"])
    values["model_name"] = name
    return values


def dataset_build_options(options: dict) -> dict:
    """The dataset form's generic fields → ``JobService.submit_dataset``'s keyword arguments."""
    out = {"name": options.get("dataset_name") or "dataset", "group_name": options.get("group_name") or None,
           "encoding": options.get("encoding") or "none", "label_encoding": options.get("label_encoding") or "none",
           "workers": options.get("encoder_threads") or 1}
    if options.get("enforce_same_shape") is not None:
        out["enforce_same_shape"] = options["enforce_same_shape"]
    return out


def dataset_form_values(values: dict, job: dict) -> dict:
    """``jobs.service.clone_values`` of a dataset → ``{plugin, values, options}`` for its form."""
    build = values.get("build") or {}
    options = {"dataset_name": values.get("name"), "group_name": job.get("group_name"),
               "encoding": build.get("encoding"), "label_encoding": build.get("label_encoding"),
               "encoder_threads": build.get("workers"), "enforce_same_shape": build.get("enforce_same_shape")}
    return {"plugin": values.get("plugin"), "values": values.get("values") or {},
            "options": {k: v for k, v in options.items() if v is not None}}
