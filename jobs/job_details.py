"""What a job page shows beside the job record (DIGITS' status panel and "related jobs").

* ``status_timeline(history)``: the status history as DIGITS' panel shows it: each status with
  its time and how long the job stayed in it (the last one until now while the job is active);
* ``folder_size(path)``: bytes on disk of a job folder (files counted once, symlinks not followed);
* ``related_jobs(job, jobs)``: the dataset of a model, the models trained on a dataset, the job
  a model was cloned from and its clones, the models whose weights or network it started from
  and those that started from it;
* ``pretrained_used(job, jobs)``: the pretrained weights a model loaded before training, each
  with where it came from (a previous job's snapshot, an uploaded or known pretrained model, a
  plain file) and whether the file is still there;
* ``metric_summary(rows)``: per metric (name and phase) its last, min and max value: the home
  table's columns.

Pure functions over store rows and the file system; ``jobs.service.JobService.details`` wires them.
"""
import os
import time

from caffeseg.jobs import store as st


def status_timeline(history, now=None):
    """[{"status", "time", "message", "duration"}] from the store's history rows (dicts with
    status, time, message, oldest first). ``duration``: seconds until the next status; for the
    last one, until ``now`` while the job is active (Initialized, Waiting, Running), else None."""
    now = time.time() if now is None else now
    rows = [dict(status=h["status"], time=float(h["time"]), message=h.get("message")) for h in history]
    for here, after in zip(rows, rows[1:]):
        here["duration"] = max(0.0, after["time"] - here["time"])
    if rows:
        last = rows[-1]
        last["duration"] = max(0.0, now - last["time"]) if last["status"] in st.ACTIVE else None
    return rows


def folder_size(path):
    """Bytes of the regular files under ``path`` (hard links counted once, symlinks not
    followed); 0 for a missing folder."""
    total, seen = 0, set()
    stack = [path]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    if (info.st_dev, info.st_ino) not in seen:
                        seen.add((info.st_dev, info.st_ino))
                        total += info.st_size
            except OSError:
                continue  # removed meanwhile
    return total


def _brief(job, relation):
    return {"id": job["id"], "name": job["name"], "kind": job["kind"], "status": job["status"],
            "relation": relation}


def _inside(folder, path):
    try:
        return os.path.commonpath([os.path.realpath(folder), os.path.realpath(path)]) == os.path.realpath(folder)
    except ValueError:
        return False


def related_jobs(job, jobs):
    """Jobs related to ``job`` among ``jobs`` (all store rows), as [{"id", "name", "kind",
    "status", "relation"}]; relations: "dataset" (of this model), "model" (trained on this
    dataset), "cloned from", "clone", "started from" (weights or network of that job), "used by"
    (a model that started from this one)."""
    by_id = {j["id"]: j for j in jobs}
    out = []
    options = job.get("options") or {}
    if job["kind"] == "model":
        if job.get("dataset_id") in by_id:
            out.append(_brief(by_id[job["dataset_id"]], "dataset"))
        origin = options.get("cloned_from")
        if origin in by_id:
            out.append(_brief(by_id[origin], "cloned from"))
        for key in ("pretrained_job_id", "previous_job_id"):
            if options.get(key) in by_id and options.get(key) != origin:
                out.append(_brief(by_id[options[key]], "started from"))
        for other in jobs:
            if other["id"] == job["id"] or other["kind"] != "model":
                continue
            theirs = other.get("options") or {}
            if theirs.get("cloned_from") == job["id"]:
                out.append(_brief(other, "clone"))
            elif job["id"] in (theirs.get("pretrained_job_id"), theirs.get("previous_job_id")):
                out.append(_brief(other, "used by"))
    else:
        for other in jobs:
            if other["kind"] == "model" and other.get("dataset_id") == job["id"]:
                out.append(_brief(other, "model"))
    seen, unique = set(), []
    for row in out:
        if (row["id"], row["relation"]) not in seen:
            seen.add((row["id"], row["relation"]))
            unique.append(row)
    return unique


def pretrained_used(job, jobs, pretrained_dir=None):
    """[{"path", "exists", "size", "source", "job_id"?, "pretrained_id"?}] of the weights a model
    job loads before training (its ``pretrained`` option); ``source``: "job" (a snapshot of
    another job), "uploaded" / "known" (in ``pretrained_dir``, the pretrained store), "file"."""
    options = job.get("options") or {}
    weights = options.get("pretrained") or []
    weights = [weights] if isinstance(weights, str) else list(weights)
    rows = []
    for path in weights:
        path = str(path)
        row = {"path": path, "exists": os.path.isfile(path),
               "size": os.path.getsize(path) if os.path.isfile(path) else None, "source": "file"}
        owner = next((j for j in jobs if j["id"] != job["id"] and _inside(j["dir"], path)), None)
        if owner is not None:
            row.update(source="job", job_id=owner["id"], job_name=owner["name"])
        elif pretrained_dir and _inside(pretrained_dir, path):
            relative = os.path.relpath(os.path.realpath(path), os.path.realpath(pretrained_dir)).split(os.sep)
            if relative[0] == "uploaded" and len(relative) > 1:
                row.update(source="uploaded", pretrained_id=relative[1])
            else:
                row.update(source="known")
        rows.append(row)
    if options.get("pretrained_network"):
        for row in rows:
            row.setdefault("pretrained_id", options["pretrained_network"])
    return rows


def metric_summary(series):
    """{"<phase>/<name>" (or "<name>" without phase): {"name", "phase", "last", "min", "max",
    "last_iteration"}} over metric rows (iteration, name, value, phase), as
    ``JobService.metrics(...)["series"]``; None values are skipped."""
    out = {}
    for iteration, name, value, phase in series:
        if value is None:
            continue
        key = "%s/%s" % (phase, name) if phase else name
        row = out.get(key)
        value = float(value)
        if row is None:
            out[key] = {"name": name, "phase": phase, "last": value, "min": value, "max": value,
                        "last_iteration": iteration}
            continue
        row["min"], row["max"] = min(row["min"], value), max(row["max"], value)
        if iteration >= row["last_iteration"]:
            row["last"], row["last_iteration"] = value, iteration
    return out
