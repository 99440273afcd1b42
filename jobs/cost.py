"""What a training costs here, from the trainings this data folder already ran (New Model's hint).

``epoch_costs(store)`` gives, per standard network, the latest model job of that network that
trained at least one iteration: its seconds of training per training image — time spent Running
(summed over resumes, so validation, snapshots and start-up are included: what a user waits for)
divided by the images it went through (iterations × TRAIN batch × iter_size). An epoch of a new
job then costs about ``seconds_per_image × training records``. No job of a network yet: no entry
(the page says the first training gives the figure) until ``Estimator`` has measured one
training step of the network on the dataset's image size (once, in the background, cached).
"""
import json
import os
import threading
import time

from caffeseg.engine.prototxt import PrototxtError, read_net
from caffeseg.jobs import derive
from caffeseg.jobs import store as st
from caffeseg.jobs.scheduler import read_runner_status

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


# -- no training of a network here yet: a quick measurement, once, in the background ------------

ESTIMATES_FILE = "cost_estimates.json"  # in the jobs folder: {"network|CxHxW": {...}}


def measure_seconds_per_image(network, dataset_dir, repeats=2):
    """Time one training step of ``network`` (a standard network's name) on this machine, for the
    dataset's image size and the network's own TRAIN batch: its deploy net built by the engine,
    forward then backward (``force_backward``, every output's diff 1) on random input; the best
    of ``repeats`` after a first warm-up pass. Returns ``(seconds per image, batch)``. A training
    step also has the loss and the solver update, and an epoch its validation: an estimate that
    the first real training replaces."""
    import numpy as np

    from caffeseg import engine
    from caffeseg.jobs import resources
    original = read_net(resources.network_path(network))
    facts = derive.DatasetFacts.load(dataset_dir)
    train_val, deploy = derive.derive_networks(original, facts, {})
    batch = derive.data_batch_size(train_val, derive.TRAIN_STATE) or 1
    deploy.force_backward = True
    net = engine.Net.from_param(deploy, engine.TEST)
    name = net.inputs[0]
    shape = (batch,) + tuple(net.blobs[name].data.shape[1:])
    net.blobs[name].reshape(*shape)
    net.reshape()
    net.blobs[name].data[...] = np.random.RandomState(0).rand(*shape).astype(np.float32) * 255
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        net.forward()
        for out in net.outputs:
            net.blobs[out].diff[...] = 1.0
        net.backward()
        times.append(time.perf_counter() - started)
    return min(times[1:]) / batch, batch


class Estimator:
    """Measurements of ``measure_seconds_per_image`` kept in ``ESTIMATES_FILE``; each (network,
    image shape) is measured once, in a daemon thread, so asking never waits."""

    def __init__(self, root, measure=measure_seconds_per_image):
        self.path = os.path.join(root, ESTIMATES_FILE)
        self.measure = measure
        self.lock = threading.Lock()
        self.running = {}

    def _read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def estimate(self, network, dataset_dir, shape):
        """``{state: measuring|done|error, seconds_per_image, batch, measured_at, message}``."""
        key = "%s|%s" % (network, "x".join(str(int(d)) for d in shape))
        with self.lock:
            known = self._read().get(key)
            if known is not None:
                return known
            if key not in self.running:
                thread = threading.Thread(target=self._run, args=(key, network, dataset_dir), daemon=True,
                                          name="cost-estimate-%s" % network)
                self.running[key] = thread
                thread.start()
        return {"state": "measuring"}

    def _run(self, key, network, dataset_dir):
        from caffeseg.jobs.paths import atomic_write_json
        try:
            per_image, batch = self.measure(network, dataset_dir)
            entry = {"state": "done", "seconds_per_image": per_image, "batch": batch, "measured_at": time.time()}
        except Exception as exc:  # noqa: BLE001 - any failure is reported as the estimate's state
            entry = {"state": "error", "message": "%s: %s" % (type(exc).__name__, exc)}
        with self.lock:
            data = self._read()
            data[key] = entry
            atomic_write_json(self.path, data)
            self.running.pop(key, None)


_ESTIMATORS = {}
_ESTIMATORS_LOCK = threading.Lock()


def estimator_for(root):
    """The one Estimator of a jobs folder in this process (so a measurement runs once)."""
    with _ESTIMATORS_LOCK:
        return _ESTIMATORS.setdefault(os.path.abspath(root), Estimator(root))
