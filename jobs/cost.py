"""What a training costs here, from the trainings this data folder already ran (New Model's hint).

``epoch_costs(store)`` gives, per standard network, the latest model job of that network that
trained at least one iteration: its seconds of training per training image — time spent Running
(summed over resumes, so validation, snapshots and start-up are included: what a user waits for)
divided by the images it went through (iterations × TRAIN batch × iter_size). An epoch of a new
job then costs about ``seconds_per_image × training records``. No job of a network yet: no entry
(the page says the first training gives the figure); nothing here runs a network.
"""
import os
import time

from engine.prototxt import PrototxtError, read_net
from jobs import derive
from jobs import store as st
from jobs.scheduler import read_runner_status

ENDED = (st.DONE, st.ABORTED, st.INTERRUPTED)


def running_seconds(history, now=None):
    """Seconds a job spent Running, from its status history rows (oldest first)."""
    now = time.time() if now is None else now
    total, since = 0.0, None
    for row in history:
        if since is not None:
            total += max(0.0, row["time"] - since)
            since = None
        if row["status"] == st.RUNNING:
            since = row["time"]
    if since is not None:
        total += max(0.0, now - since)
    return total


def _images_per_iteration(job_dir):
    try:
        net = read_net(os.path.join(job_dir, "train_val.prototxt"))
    except (OSError, PrototxtError):
        return None
    batch = derive.data_batch_size(net, derive.TRAIN_STATE)
    if not batch:
        return None
    iter_size = 1
    try:
        with open(os.path.join(job_dir, "solver.prototxt")) as f:
            for line in f:
                if line.strip().startswith("iter_size:"):
                    iter_size = max(1, int(line.split(":", 1)[1]))
    except (OSError, ValueError):
        pass
    return batch * iter_size


def job_cost(store, job):
    """``{seconds_per_image, images, seconds, job_id, job_name}`` of one model job, or None when
    it has not trained an iteration (or its files are gone)."""
    iterations = int(read_runner_status(job["dir"]).get("iter") or 0)
    per_iteration = _images_per_iteration(job["dir"])
    if iterations < 1 or not per_iteration:
        return None
    seconds = running_seconds(store.history(job["id"]))
    if seconds <= 0:
        return None
    images = iterations * per_iteration
    return {"seconds_per_image": seconds / images, "images": images, "seconds": seconds,
            "job_id": job["id"], "job_name": job["name"], "status": job["status"]}


def epoch_costs(store):
    """{standard network name (file name without .prototxt): job_cost of its latest ended job}."""
    out = {}
    for job in store.list("model"):  # newest first
        if job["status"] not in ENDED:
            continue
        network = os.path.basename((job.get("options") or {}).get("standard_network") or "")
        network = network[:-len(".prototxt")] if network.endswith(".prototxt") else network
        if not network or network in out:
            continue
        cost = job_cost(store, job)
        if cost is not None:
            out[network] = cost
    return out
