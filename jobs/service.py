"""The jobs facade that the web and the CLI both use.

    svc = open_service("/data/jobs")                 # or JobService(root, backend="auto", cpu_slots=1, gpus=())
    ds = svc.create_dataset("sunnybrook", form_values, name="lv", encoding="none", workers=1)  # builds now
    ds = svc.submit_dataset("sunnybrook", form_values, name="lv")   # queued (Waiting); the worker builds it
    ds = svc.import_dataset("/path/with/dataset.json", "lv")      # an already built dataset folder
    [m] = svc.create_model({"dataset_id": ds["id"], "standard_network": "fcn_alexnet",
                            "epochs": 2, "base_lr": "0.01,0.001", ...})  # one job per sweep value

Queries: ``list_jobs(kind=None)``, ``show(id)`` (+ history [(status, time)], progress, and for a
model snapshots [(iteration, file)], eta, iters_per_epoch), ``snapshots(id)``, ``log(id)``,
``dataset_info(id)`` (``jobs.dataset.DatasetInfo``), ``dataset_keys(id, stage)``,
``dataset_record(id, stage, key)`` (the LMDBs, read under ``lmdb_lock``), ``metrics(id,
since=0)`` → {"series": [(iteration, name, value, phase or None)], "status", "progress", "eta",
"iters_per_epoch"} (phase "train"/"val"; lr, epoch, throughput and eta have phase None), ``evaluation(id, snapshot=None)`` (stored table or None), ``clone_values(id)``.
Actions: ``train(id, resume=False, evaluate=False)`` (foreground, returns the final status),
``submit(id, resume=False)`` (queue for the worker), ``start_worker()`` (scheduler thread in this
process: it builds queued datasets and trains queued models), ``resume(id, wait=False)`` (a
dataset is built again), ``abort(id)`` (a dataset build stops at its next record), ``delete(id)``
(a dataset in use is refused, naming its models), ``clone(id)``, ``rename(id, name)``, ``set_notes``, ``set_group``,
``evaluate(id, snapshot=None)``, ``infer(id, snapshot, record=|image_path=)`` (many results; a
folder works), ``infer_record(id, key, snapshot=None, visualize=False)`` and ``infer_image(id, path,
...)`` (one answer: image, class_map, probabilities, label, metrics, contours, classes, layers),
``export(id, snapshot=None, out=None)`` → path of the .tar.gz.

Dataset jobs: ``submit_dataset`` checks the plugin's form values (field errors raise at once)
and queues the build; ``build_dataset_job(id)`` (the worker) runs it, appending to ``log.txt``
and rewriting ``build_status.json`` (the builder's progress event) in the job folder; ``show``
gives ``progress`` while it runs; a failure sets Error with the builder's message. Build
options: encoding (none|png|jpg), label_encoding (none|png), workers, executor (thread|process),
enforce_same_shape.

Model options: dataset_id, name, group_name, notes; network: standard_network | network_text |
previous_job_id; epochs, base_lr, batch_size (both may be comma-separated sweeps), val_batch_size,
iter_size, solver_type, lr_policy {policy, stepsize, stepvalue, gamma, power} (in % of training),
weight_decay, momentum, rms_decay, random_seed, mean (none|image|pixel), crop_size,
snapshot_interval, val_interval (epochs), set_num_output, python_layer_files, pretrained (list of
.caffemodel), pretrained_job_id (+ pretrained_snapshot).

Every job is a dict with at least: id, kind (dataset|model), name, status, dir, created_at,
updated_at, dataset_id, group_name, notes, options, error, pid. Errors the user can fix raise
``ServiceError`` (a ValueError, with ``field_errors`` when a form field is at fault) naming the
job, file or field; an unknown job id raises ``KeyError``; an invalid id ``JobPathError``.
"""
import collections
import json
import os
import shutil
import threading
import time

from caffeseg.jobs import derive
from caffeseg.jobs import gpus as gpu_policy
from caffeseg.jobs import hardware
from caffeseg.jobs import store as st
from caffeseg.jobs.job_settings import training_settings
from caffeseg.jobs.model_job import ModelJobError, job_warnings, write_model_job
from caffeseg.jobs.paths import atomic_write, check_job_id, job_dir, new_job_id
from caffeseg.jobs.scheduler import Scheduler, ingest_metrics, job_is_live, patiently, pid_alive, read_runner_status
from caffeseg.plugin.base import PluginError, get_plugin


DATASET_LOG = "log.txt"  # a dataset job's log: queued, built (the builder's lines), finished
DATASET_PROGRESS = "build_status.json"  # the builder's last progress event, rewritten while it runs
PROGRESS_EVERY_S = 0.5
DATASET_BUILD_OPTIONS = ("encoding", "label_encoding", "workers", "executor", "enforce_same_shape")


class DatasetAborted(Exception):
    """Raised inside a dataset build when its job's abort flag appears."""


def _clear_build(folder, keep):
    """Empty a dataset job's own folder for a new build, except ``keep`` (its log, abort flag);
    also drop a temporary build folder a dead process left beside it."""
    import glob
    for name in os.listdir(folder):
        if name in keep:
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    for tmp in glob.glob(os.path.join(os.path.dirname(folder), ".%s.building-*" % os.path.basename(folder))):
        shutil.rmtree(tmp, ignore_errors=True)


def _append_line(path, line):
    with open(path, "a") as f:
        f.write(str(line).rstrip("\n") + "\n")


def build_progress(job_dir):
    """Fraction done of a dataset build from its build_status.json, or None."""
    try:
        with open(os.path.join(job_dir, DATASET_PROGRESS)) as f:
            event = json.load(f)
    except (OSError, ValueError):
        return None
    if not event.get("total_all"):
        return None
    return float(event.get("done_all") or 0) / float(event["total_all"])


class Progress(collections.namedtuple("Progress", "done total")):
    """A training's (done, total) iterations from its runner status; ``fraction`` is 0..1 or None."""

    @property
    def fraction(self):
        return float(self.done) / self.total if self.total else None


def training_progress(runner_status):
    """``Progress`` of a training from its runner_status.json (``iter`` of ``max_iter``)."""
    return Progress(int(runner_status.get("iter") or 0), int(runner_status.get("max_iter") or 0))


def iters_per_epoch(job_dir):
    """Solver iterations per epoch of a model job (its job.json's max_iter / epochs), or None."""
    try:
        with open(os.path.join(job_dir, "job.json")) as f:
            facts = json.load(f)
    except (OSError, ValueError):
        return None
    if facts.get("max_iter") and facts.get("epochs"):
        return float(facts["max_iter"]) / float(facts["epochs"])
    return None


class ServiceError(ValueError):
    def __init__(self, message, field_errors=None):
        ValueError.__init__(self, message)
        self.field_errors = field_errors


class NotOwner(ServiceError):
    """A user who did not make a job asked to edit, abort or delete it (DIGITS' owner rule)."""


def check_owner(job, user):
    """DIGITS' rule: only a job's owner edits, aborts or deletes it; anyone views, clones and
    tests it. ``user`` None is the local single user (no login), who may do everything; a job
    made without login (owner None) is anyone's."""
    if user is None or not job.get("owner") or job["owner"] == user:
        return
    raise NotOwner("job %s (%s) belongs to %s; %s may view, clone and test it, not change it"
                   % (job["id"], job["name"], job["owner"], user))


def open_service(root, **kwargs):
    return JobService(root, **kwargs)


class JobService:
    def __init__(self, root, backend="auto", python=None, cpu_slots=1, gpus=()):
        self.root = os.path.abspath(root)
        self.store = st.JobStore(self.root)
        self.scheduler = Scheduler(self.store, python=python, backend=backend, cpu_slots=cpu_slots, gpus=gpus)
        self.scheduler.on_done = self._evaluate_after_training  # worker-run jobs are evaluated too
        self.scheduler.prepare = self._derive_pending
        self.scheduler.build_dataset = self.build_dataset_job  # queued dataset jobs (submit_dataset)
        # LMDB refuses to open a database that is already open in the same process: every read of a
        # dataset's LMDBs here (evaluation, also the worker thread's after a training; inference of
        # a record; the web's dataset explorer) takes this lock.
        self.lmdb_lock = threading.RLock()
        # deploy nets loaded for inference, kept between requests (loading one costs more than
        # its forward pass); DeployModel.predict serialises the requests on one net
        from caffeseg.jobs.net_cache import DeployNetCache
        self.deploy_nets = DeployNetCache()
        self._key_cache = {}
        # Running jobs nobody supervises (server restart, kill, power loss): a runner that ended
        # meanwhile gets its real outcome (Done is evaluated), one that stopped mid-way becomes
        # Interrupted (resumable); live runners are left to the worker, which adopts them.
        self.scheduler.recover(adopt=False)

    # -- queries ---------------------------------------------------------------------------
    def list_jobs(self, kind=None):
        return self.store.list(kind)

    def show(self, job_id):
        """The job with its history [(status, time)] and progress (0..1 or None); a model also
        has snapshots [(iteration, file)], eta (seconds, while it runs), iters_per_epoch and
        trained_on (the runner's ``backend_used``: backend, Caffe module and version, python,
        device; None before its first run)."""
        job = self.store.get(check_job_id(job_id))
        job["history"] = [(h["status"], h["time"]) for h in self.store.history(job_id)]
        job["progress"] = None
        if job["kind"] == "model":
            status = read_runner_status(job["dir"])
            job["progress"] = training_progress(status).fraction
            job["eta"] = status.get("eta") if job["status"] == st.RUNNING else None
            job["iters_per_epoch"] = iters_per_epoch(job["dir"])
            job["snapshots"] = self.snapshots(job_id)
            job["trained_on"] = status.get("backend")
            job["warnings"] = job_warnings(job["dir"])  # what the option check let through, said
            job["settings"] = training_settings(job["dir"], job["trained_on"])  # the model page's Settings
        elif job["status"] == st.RUNNING:
            job["progress"] = build_progress(job["dir"])
        return job

    def snapshots(self, job_id):
        from caffeseg.jobs.runner import snapshot_iteration
        folder = self.store.get(job_id)["dir"]
        names = [n for n in os.listdir(folder) if n.endswith(".caffemodel")] if os.path.isdir(folder) else []
        return sorted(((snapshot_iteration(n), n) for n in names))

    def metrics(self, job_id, since=0):
        """Metric rows with iteration >= since: (iteration, name, value, phase or None), with the
        job's status, progress, eta and iters_per_epoch (as ``show``)."""
        job = self.store.get(check_job_id(job_id))
        if job["kind"] == "model" and job["status"] == st.RUNNING:
            ingest_metrics(self.store, job)
        rows = self.store.metrics_since(job_id, since)
        out = {"series": [(i, n, v, p or None) for i, p, n, v in rows], "status": job["status"],
               "progress": None, "eta": None, "iters_per_epoch": None}
        if job["kind"] == "model":
            status = read_runner_status(job["dir"])
            out.update(progress=training_progress(status).fraction, iters_per_epoch=iters_per_epoch(job["dir"]),
                       eta=status.get("eta") if job["status"] == st.RUNNING else None)
        return out

    def log(self, job_id):
        """The job's log text, or None before it has one: ``log.txt`` (trainings and dataset
        jobs), else the ``build.log`` of an imported dataset folder."""
        folder = self.store.get(check_job_id(job_id))["dir"]
        from caffeseg.jobs.dataset import LOG_FILE
        for name in (DATASET_LOG, LOG_FILE):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path, errors="replace") as f:
                    return f.read()
        return None

    def dataset_info(self, job_id):
        """A dataset job's dataset.json (``jobs.dataset.DatasetInfo``), None while it is not
        written yet; DatasetError when it cannot be read."""
        from caffeseg.jobs.dataset import DATASET_JSON, DatasetInfo
        job = self._dataset_job(job_id)
        if not os.path.isfile(os.path.join(job["dir"], DATASET_JSON)):
            return None
        return DatasetInfo.read(job["dir"])

    def dataset_keys(self, job_id, stage):
        """The LMDB keys of a dataset job's stage (train/val), in record order; [] without one."""
        folder = os.path.join(self._dataset_job(job_id)["dir"], "%s_db" % stage, "features")
        if not os.path.isdir(folder):
            return []
        cache_key = (folder, os.stat(folder).st_mtime)
        if cache_key not in self._key_cache:
            from caffeseg.engine.lmdb_io import LmdbReader
            with self.lmdb_lock, LmdbReader(folder) as reader:
                self._key_cache[cache_key] = list(reader.keys())
        return self._key_cache[cache_key]

    def dataset_record(self, job_id, stage, key):
        """(feature C x H x W, label H x W) of one record of a dataset job's stage, by LMDB key."""
        from caffeseg.jobs import infer as inf
        folder = self._dataset_job(job_id)["dir"]
        try:
            with self.lmdb_lock:
                return inf.record_by_key(folder, key, stage)
        except inf.InferError as exc:
            raise ServiceError(str(exc))

    def _dataset_job(self, job_id):
        job = self.store.get(check_job_id(job_id))
        if job["kind"] != "dataset":
            raise ServiceError("job %s is a %s, not a dataset" % (job_id, job["kind"]))
        return job

    # -- datasets --------------------------------------------------------------------------------
    def _new_job(self, kind, name, **kw):  # kw: store.add_job's (dataset_id, group_name, notes, options, owner)
        job_id = new_job_id()
        while os.path.exists(job_dir(self.root, job_id)):
            job_id = new_job_id()
        folder = job_dir(self.root, job_id)
        os.makedirs(folder)
        return self.store.add_job(job_id, kind, name, folder, **kw)

    def _dataset_plugin(self, plugin):
        """(plugin object, plugin id) for an id or a DataPlugin; ServiceError if it is not
        installed or broken."""
        if not isinstance(plugin, str):
            return plugin, plugin.id
        try:
            return get_plugin(plugin), plugin
        except PluginError as exc:
            raise ServiceError(str(exc))

    def _new_dataset_job(self, plugin, values, name, group_name, build_options, owner=None):
        """Check the plugin's form values and the build options, then record the job (Initialized)."""
        plugin_obj, plugin_id = self._dataset_plugin(plugin)
        unknown = sorted(set(build_options) - set(DATASET_BUILD_OPTIONS))
        if unknown:
            raise ServiceError("unknown dataset build option(s) %s (known: %s)"
                               % (", ".join(unknown), ", ".join(DATASET_BUILD_OPTIONS)))
        from caffeseg.jobs.dataset import ENCODINGS, LABEL_ENCODINGS
        for option, allowed in (("encoding", ENCODINGS), ("label_encoding", LABEL_ENCODINGS)):
            value = build_options.get(option, "none")
            if value not in allowed:
                raise ServiceError("%s must be one of %s, got %r" % (option, ", ".join(allowed), value),
                                   {option: "one of " + ", ".join(allowed)})
        try:
            plugin_obj.validate(dict(values))
        except ValueError as exc:  # FormError (per field) or PluginError (the input as a whole)
            errors = getattr(exc, "errors", None)
            raise ServiceError("please correct the marked fields: %s" % exc if errors else str(exc), errors)
        job = self._new_job("dataset", name, group_name=group_name, owner=owner,
                            options={"plugin": plugin_id, "values": values, "build": build_options})
        return plugin_obj, job

    def submit_dataset(self, plugin, values, name, group_name=None, owner=None, **build_options):
        """Queue a dataset build and return the job (Waiting) at once; the worker
        (``start_worker`` / ``caffeseg worker``) builds it, writing its progress and log to the job.
        The plugin's form checks run here, so field errors come back before anything is queued."""
        _, job = self._new_dataset_job(plugin, values, name, group_name, build_options, owner)
        _append_line(os.path.join(job["dir"], DATASET_LOG), "queued: %s dataset %s" % (job["options"]["plugin"], name))
        self.store.set_status(job["id"], st.WAITING)
        return self.store.get(job["id"])

    def create_dataset(self, plugin, values, name, group_name=None, progress=None, log=None, owner=None,
                       **build_options):
        """Build a dataset now, in this thread (the CLI); returns the Done job or raises ServiceError."""
        plugin_obj, job = self._new_dataset_job(plugin, values, name, group_name, build_options, owner)
        self.store.claim(job["id"], st.INITIALIZED, st.RUNNING, "built in the foreground", pid=os.getpid())
        status, exc = self.build_dataset_job(job["id"], progress=progress, log=log, plugin=plugin_obj)
        if status != st.DONE:
            raise ServiceError("dataset %s failed: %s" % (name, exc or status), getattr(exc, "field_errors", None))
        return self.store.get(job["id"])

    def build_dataset_job(self, job_id, progress=None, log=None, plugin=None):
        """Build a dataset job that is Running (claimed, with its pid, by the worker,
        ``create_dataset`` or ``resume(wait=True)``).

        The log goes to ``log.txt`` and the progress to ``build_status.json`` in the job folder
        while it builds; an ``abort_requested`` flag (``abort``) stops it at the next record, never
        after the last one (the dataset is then complete). Whatever an earlier build of the job
        left in its folder (a build interrupted after its files were in place) is removed first,
        except the log. Returns (final status, exception or None); the job records the error."""
        from caffeseg.jobs import dataset as dataset_builder
        from caffeseg.jobs.scheduler import ABORT_FLAG
        job = self.store.get(job_id)
        folder, options = job["dir"], job["options"]
        flag = os.path.join(folder, ABORT_FLAG)
        log_path, progress_path = os.path.join(folder, DATASET_LOG), os.path.join(folder, DATASET_PROGRESS)
        written = {"time": 0.0, "phase": None}

        def on_log(line):
            _append_line(log_path, line)
            if log is not None:
                log(line)

        def on_progress(event):
            if event.get("phase") != "finish" and os.path.exists(flag):  # "finish": all is in place
                raise DatasetAborted("aborted")
            now = time.time()  # written on a new phase, the last record, else at most every 0.5 s
            if now - written["time"] >= PROGRESS_EVERY_S or event.get("phase") != written["phase"] \
                    or event.get("done_all") == event.get("total_all"):
                written.update(time=now, phase=event.get("phase"))
                atomic_write(progress_path, json.dumps(dict(event, time=now)))
            if progress is not None:
                progress(event)

        try:
            if plugin is None:
                plugin = self._dataset_plugin(options.get("plugin") or "")[0]
            if options.get("plugin") and os.path.realpath(folder) == os.path.realpath(job_dir(self.root, job_id)):
                _clear_build(folder, (DATASET_LOG, ABORT_FLAG))  # only ever the job's own folder
            on_log("building: %s dataset %s (worker pid %d)" % (options.get("plugin"), job["name"], os.getpid()))
            dataset_builder.build_dataset(plugin, options.get("values") or {}, folder, progress=on_progress,
                                          log=on_log, log_file=None,
                                          keep_files=(DATASET_LOG, DATASET_PROGRESS, ABORT_FLAG),
                                          **(options.get("build") or {}))
        except Exception as exc:
            aborted = isinstance(exc, DatasetAborted) or os.path.exists(flag)
            status, message = (st.ABORTED, "aborted") if aborted else (st.ERROR, str(exc) or type(exc).__name__)
            on_log("%s: %s" % ("aborted" if aborted else "error", message))
            # a locked store must not leave a finished build Running: wait it out (backoff)
            patiently(self.store.update, job_id, pid=None, log=on_log)
            patiently(self.store.set_status, job_id, status, message, log=on_log)
            return status, exc
        on_log("done")
        patiently(self.store.update, job_id, pid=None, log=on_log)
        patiently(self.store.set_status, job_id, st.DONE, log=on_log)
        if os.path.exists(flag):
            os.unlink(flag)  # the abort came after the last record: the dataset is complete
        return st.DONE, None

    def import_dataset(self, folder, name, group_name=None, owner=None):
        """Register an already built dataset folder (with dataset.json): it is copied in."""
        if not os.path.isfile(os.path.join(folder, "dataset.json")):
            raise ServiceError("%s has no dataset.json: not a dataset folder" % folder)
        job = self._new_job("dataset", name, group_name=group_name, owner=owner,
                            options={"imported_from": os.path.abspath(folder)})
        shutil.rmtree(job["dir"])
        shutil.copytree(folder, job["dir"])
        self.store.set_status(job["id"], st.DONE)
        return self.store.get(job["id"])

    # -- models ------------------------------------------------------------------------------------
    def create_model(self, options, owner=None):
        """Create model job(s). base_lr and batch_size may be comma-separated lists: one job per
        combination, named "<name> lr=<v> bs=<v>", all in one group. Returns the list of jobs.
        ``owner``: the user making them (None: no login)."""
        options = dict(options)
        dataset_id = options.get("dataset_id")
        try:
            dataset = self.store.get(check_job_id(dataset_id or ""))
        except (KeyError, ValueError):
            raise ServiceError("unknown dataset job %r" % (dataset_id,), {"dataset_id": "unknown dataset"})
        if dataset["kind"] != "dataset":
            raise ServiceError("job %s is not a dataset" % dataset_id, {"dataset_id": "not a dataset"})
        if options.get("pretrained_job_id"):
            # a previous job's snapshot as pretrained weights (its newest, or pretrained_snapshot)
            from caffeseg.jobs.infer import InferError, latest_snapshot
            try:
                snap = latest_snapshot(self.store.get(check_job_id(options["pretrained_job_id"]))["dir"],
                                       options.get("pretrained_snapshot"))
            except (KeyError, InferError) as exc:
                raise ServiceError(str(exc), {"pretrained": str(exc)})
            weights = options.get("pretrained") or []
            options["pretrained"] = (weights if isinstance(weights, list) else [weights]) + [snap]
        if options.get("previous_job_id"):
            options["previous_job_dir"] = self.store.get(check_job_id(options["previous_job_id"]))["dir"]
        try:  # GPUs (jobs/gpus.py): what this machine can never give is refused now, naming the field
            gpu_policy.check_request(gpu_policy.request_from_options(options), self.scheduler.gpus,
                                     options.get("backend"))
        except gpu_policy.GpuRequestError as exc:
            raise ServiceError(str(exc), {exc.field: str(exc)})
        lrs = derive.sweep(options.get("base_lr", 0.01))
        given = options.get("batch_size")
        batches = derive.sweep(given if given not in (None, "") else [None])  # 0 is refused, not "unset"
        name = options.get("name") or "model"
        combos = [(lr, bs) for lr in lrs for bs in batches]
        group = options.get("group_name") or (name if len(combos) > 1 else None)
        jobs = []
        from caffeseg.jobs.model_options import ModelOptionError, check_model_options
        for lr, bs in combos:  # one check for the CLI, the form and the API, before any job exists
            try:
                check_model_options(dict(options, base_lr=lr, batch_size=bs))
            except ModelOptionError as exc:
                raise ServiceError(str(exc), exc.field_errors)
        for lr, bs in combos:
            one = dict(options, base_lr=float(lr), batch_size=int(bs) if bs not in (None, "") else None)
            label = name if len(combos) == 1 else "%s lr=%s%s" % (name, lr, " bs=%s" % bs if bs else "")
            job = self._new_job("model", label, dataset_id=dataset_id, group_name=group,
                                notes=options.get("notes"), options=one, owner=owner)
            try:
                if dataset["status"] in (st.INITIALIZED, st.WAITING, st.RUNNING):
                    # The dataset is still being built: keep the network now, derive when the
                    # worker starts the job (it waits for the dataset to be Done).
                    from caffeseg.jobs.model_job import network_text
                    text, _ = network_text(one)
                    atomic_write(os.path.join(job["dir"], "original.prototxt"), text)
                    one = dict(one, network_text=text, _derive_pending=True)
                    self.store.update(job["id"], options=one)
                else:
                    write_model_job(job["dir"], dataset["dir"], one)
            except (ModelJobError, OSError) as exc:
                self._remove(job)
                for made in jobs:
                    self._remove(made)
                err = ServiceError(str(exc), getattr(exc, "field_errors", None))
                err.line, err.column = getattr(exc, "line", None), getattr(exc, "column", None)
                raise err
            jobs.append(self.store.get(job["id"]))
        return jobs

    def train(self, job_id, resume=False, on_progress=None, gpu=None, evaluate=False):
        """Train in the foreground (a runner subprocess); returns the final status."""
        job = self.store.get(check_job_id(job_id))
        if job["kind"] != "model":
            raise ServiceError("job %s is a %s, not a model" % (job_id, job["kind"]))
        if job["status"] == st.RUNNING and job_is_live(job):
            raise ServiceError("job %s is already running (pid %s)" % (job_id, job["pid"] or job["supervisor_pid"]))
        return self.scheduler.train(job_id, resume=resume, gpu=gpu, on_progress=on_progress,
                                    auto_evaluate=evaluate)

    def gpu_summary(self):
        """This service's GPUs: {"total", "free" [indices], "jobs" {gpu: [running job ids]}}."""
        holders = self.scheduler.gpu_holders()
        return {"total": len(self.scheduler.gpus), "free": self.scheduler.free_gpus(),
                "jobs": {g: [job_id for job_id, _ in on_it] for g, on_it in sorted(holders.items())}}

    def hardware(self, job_id):
        """The model page's hardware panel: {"device" ("CPU" or "GPU 0,1"), "gpus" (NVML rows),
        "process" (the runner and its ranks, None when not running), "system"}."""
        job = self.store.get(check_job_id(job_id))
        assigned = (job.get("options") or {}).get("assigned_gpus") or []
        import socket
        running = (job["status"] == st.RUNNING and job.get("host") in (None, socket.gethostname())
                   and pid_alive(job.get("pid")))
        return {"device": "GPU " + ",".join(map(str, assigned)) if assigned else "CPU",
                "gpus": hardware.gpu_usage(assigned), "system": hardware.system_usage(),
                "process": hardware.process_usage(job["pid"]) if running else None}

    def _derive_pending(self, job):
        """Derive the files of a model created while its dataset was building (now Done)."""
        options = dict(job["options"])
        if not options.pop("_derive_pending", False):
            return
        write_model_job(job["dir"], self.store.get(job["dataset_id"])["dir"], options)
        self.store.update(job["id"], options=options)

    def _evaluate_after_training(self, job_id):
        """DIGITS-style: evaluate the final snapshot; a failure is logged, the training stays Done."""
        try:
            self.evaluate(job_id)
        except Exception as exc:  # evaluation is a bonus on a finished job: never fail it
            with open(os.path.join(self.store.get(job_id)["dir"], "log.txt"), "a") as log:
                log.write("evaluation failed: %s: %s\n" % (type(exc).__name__, exc))

    def submit(self, job_id, resume=False):
        """Queue a model job: Waiting, for the worker that takes its backend (``Scheduler.takes``:
        ``caffeseg worker``, ``python3 -m caffeseg.jobs.worker``, or ``start_worker``). A job already
        Waiting or Running is refused."""
        job = self.store.get(check_job_id(job_id))
        if job["kind"] != "model":
            raise ServiceError("job %s is a %s, not a model" % (job_id, job["kind"]))
        if job["status"] in (st.WAITING, st.RUNNING):
            raise ServiceError("job %s is already %s" % (job_id, job["status"]))
        if resume:
            job["options"]["_resume"] = True
            self.store.update(job_id, options=job["options"])
        self.store.set_status(job_id, st.WAITING)

    def resume(self, job_id, wait=False):
        job = self.store.get(check_job_id(job_id))
        if job["status"] not in (st.INTERRUPTED, st.ABORTED, st.ERROR):
            raise ServiceError("job %s is %s; only Interrupted, Aborted or Error jobs resume" % (job_id, job["status"]))
        if job["kind"] == "dataset":
            # Resuming builds it again (build_dataset_job clears what an earlier build left).
            from caffeseg.jobs.scheduler import ABORT_FLAG
            flag = os.path.join(job["dir"], ABORT_FLAG)
            if os.path.exists(flag):
                os.unlink(flag)
            if wait:
                if not self.store.claim(job_id, job["status"], st.RUNNING, "rebuilt in the foreground",
                                        pid=os.getpid()):
                    raise ServiceError("job %s changed status meanwhile; try again" % job_id)
                return self.build_dataset_job(job_id)[0]
            _append_line(os.path.join(job["dir"], DATASET_LOG), "queued again (resume)")
            self.store.set_status(job_id, st.WAITING, "resumed")
            return st.WAITING
        from caffeseg.jobs.runner import latest_solverstate
        if latest_solverstate(job["dir"]) is None:
            raise ServiceError("job %s has no .solverstate to resume from" % job_id)
        if wait:
            return self.train(job_id, resume=True)
        self.submit(job_id, resume=True)
        return st.WAITING

    def start_worker(self):
        """Run the scheduler loop in a background thread of this process (single-process serve)."""
        self._stop = threading.Event()
        t = threading.Thread(target=self.scheduler.loop, args=(self._stop,), daemon=True)
        t.start()
        return t

    def abort(self, job_id, user=None):
        check_owner(self.store.get(check_job_id(job_id)), user)
        return self.scheduler.abort(job_id)

    # -- evaluation, inference, export ---------------------------------------------------------------
    def _model(self, job_id):
        job = self.store.get(check_job_id(job_id))
        if job["kind"] != "model":
            raise ServiceError("job %s is a %s, not a model" % (job_id, job["kind"]))
        return job

    def _deploy_model(self, job, snapshot=None):
        from caffeseg.jobs.infer import InferError
        try:
            return self.deploy_nets.deploy_model(job["dir"], snapshot, backend=self.scheduler.backend)
        except InferError as exc:
            raise ServiceError(str(exc))

    def evaluate(self, job_id, snapshot=None, progress=None):
        """Run the deploy net over the whole val set; stores and returns the table
        ({"snapshot", "records": [{key, case, image_no, dice, iou, pixel_accuracy, *_area_px, *_area_mm2}],
        "count", "summary": {metric: {mean, std, min, max}}, "worst": [records, lowest Dice first]})."""
        from caffeseg.jobs.evaluate import evaluate
        job = self._model(job_id)
        dataset = self.store.get(job["dataset_id"])
        model = self._deploy_model(job, snapshot)
        name = "evaluation.json" if snapshot is None else "evaluation_iter_%d.json" % int(snapshot)
        with self.lmdb_lock:
            return evaluate(model, dataset["dir"], os.path.join(job["dir"], name), progress=progress)

    def evaluation(self, job_id, snapshot=None):
        """The stored evaluation table, or None when the job has not been evaluated."""
        job = self._model(job_id)
        name = "evaluation.json" if snapshot is None else "evaluation_iter_%d.json" % int(snapshot)
        path = os.path.join(job["dir"], name)
        if not os.path.exists(path):
            return None
        import json
        with open(path) as f:
            return json.load(f)

    def clinical_export(self, job_id, fmt, snapshot=None, case=None, record=None):
        """Predicted segmentations of an evaluation to take away: fmt "contours" (Sunnybrook
        text files in a zip laid out like the expert release) or "dicom-seg" (DICOM SEG per
        patient and phase, referencing the source images), for one record (key), one patient
        (case) or all. Returns (file name, content type, bytes); jobs/clinical_export.py."""
        from caffeseg.jobs import clinical_export as cx
        from caffeseg.jobs.evaluate import masks_path
        job = self._model(job_id)
        table = self.evaluation(job_id, snapshot)
        if table is None:
            raise ServiceError("job %s has no evaluation%s: evaluate it first"
                               % (job_id, "" if snapshot is None else " at iteration %d" % int(snapshot)))
        name = "evaluation.json" if snapshot is None else "evaluation_iter_%d.json" % int(snapshot)
        from caffeseg.jobs.dataset import DatasetError, load_dataset_info
        try:
            info = load_dataset_info(self.store.get(job["dataset_id"])["dir"])
        except DatasetError as exc:
            raise ServiceError(str(exc))
        try:
            masks = cx.load_masks(masks_path(os.path.join(job["dir"], name)))
            return cx.export(table, masks, info, fmt, case=case, key=record)
        except cx.ExportError as exc:
            raise ServiceError(str(exc))

    def infer(self, job_id, snapshot=None, record=None, image_path=None, visualize=False):
        """Predict one val record (by key), one image file, or every image of a folder.
        Returns {"results": [{"source", "class_map", "probabilities", "metrics"?, "contours"}]}."""
        from caffeseg.jobs import infer as inf
        job = self._model(job_id)
        model = self._deploy_model(job, snapshot)
        inputs = []
        try:
            if record is not None:
                from caffeseg.jobs.dataset import DatasetError, DatasetInfo
                dataset_dir = self.store.get(job["dataset_id"])["dir"]
                try:
                    record = DatasetInfo.read(dataset_dir).record_key("val", record)
                except DatasetError as exc:
                    raise ServiceError(str(exc))
                with self.lmdb_lock:
                    image, label = inf.record_by_key(dataset_dir, record)
                inputs.append(("record:%s" % record, image, label))
            elif image_path:
                for path in inf.image_files(image_path):
                    inputs.append((path, inf.load_image(path), None))
            else:
                raise ServiceError("give a record key or an image path")
            results = []
            threads_now = self.inference_threads()
            for source, image, label in inputs:
                r = model.predict(image, label=label, visualize=visualize, threads=threads_now)
                r["source"] = source
                r["contours"] = inf.lv_contours(r["class_map"])
                results.append(r)
        except inf.InferError as exc:
            raise ServiceError(str(exc))
        return {"snapshot": os.path.basename(model.weights), "classes": model.classes, "results": results}

    def test_many(self, job_id, snapshot=None, folder=None, list_file=None, paths=None, zip_path=None,
                  dataset_stage=None, probabilities=False, resize=None, roots=None, wait=False):
        """Test Many (jobs/infer_many.py): the model over a server folder, a list file, uploaded
        files, a zip, or a whole dataset stage ("train"/"val" of the model's dataset, with labels:
        DIGITS' Test a DB), as one request with progress. ``roots``: the folders server paths must
        lie in (None: any, the CLI); ``resize`` (height, width) or None (as the images are).
        Without ``wait`` it runs in a thread of this process and returns at once. Returns
        ``test_many_status`` of the request."""
        from caffeseg.jobs import infer_many as im
        job = self._model(job_id)
        model = self._deploy_model(job, snapshot)
        request = {"snapshot": os.path.basename(model.weights), "probabilities": bool(probabilities),
                   "resize": list(resize) if resize else None}
        try:
            if dataset_stage:
                if dataset_stage not in ("train", "val"):
                    raise im.TestManyError("dataset stage train or val, not %r" % (dataset_stage,), "dataset_stage")
                dataset_dir = self.store.get(job["dataset_id"])["dir"]
                keys = self.dataset_keys(job["dataset_id"], dataset_stage)
                if not keys:
                    raise im.TestManyError("the dataset has no %s records" % dataset_stage, "dataset_stage")
                if len(keys) > im.max_images():
                    raise im.TestManyError("%d records; one request takes at most %d" % (len(keys), im.max_images()))
                test_id, out = im.new_request(job["dir"], dict(request, source={"dataset_stage": dataset_stage}))
                inputs, total = im.dataset_inputs(dataset_dir, dataset_stage, keys, self.lmdb_lock), len(keys)
            else:
                source = {k: v for k, v in (("folder", folder), ("list_file", list_file), ("zip", zip_path))
                          if v} or {"uploads": len(paths or [])}
                test_id, out = im.new_request(job["dir"], dict(request, source=source))
                try:
                    images = im.collect_images(folder, list_file, paths, zip_path, roots=roots,
                                               work_dir=os.path.join(out, "inputs"))
                except im.TestManyError:
                    shutil.rmtree(out, ignore_errors=True)
                    raise
                inputs, total = ((source_name, path, None) for source_name, path in images), len(images)
        except im.TestManyError as exc:
            raise ServiceError(str(exc), {exc.field: str(exc)} if exc.field else None)
        flag = os.path.join(out, "abort_requested")

        def work():
            im.run(model, inputs, total, out, model.classes, probabilities=probabilities, resize=resize,
                   extra=_add_dicom_area, should_stop=lambda: os.path.exists(flag))
        if wait:
            work()
        else:
            thread = threading.Thread(target=work, name="test-many-%s" % test_id, daemon=True)
            self._test_threads = getattr(self, "_test_threads", {})
            self._test_threads[test_id] = thread
            thread.start()
        return self.test_many_status(job_id, test_id, with_rows=wait)

    def test_many_status(self, job_id, test_id, with_rows=True):
        """{"id", "request", "status" (state, done, total, started, finished, error), "rows" and
        "classes" once written, "folder"}; a request left Running by a process that ended (no
        thread here runs it) reads as Interrupted. KeyError for an unknown request."""
        from caffeseg.jobs import infer_many as im
        job = self._model(job_id)
        out = im.read_request(job["dir"], test_id, with_rows=with_rows)
        thread = getattr(self, "_test_threads", {}).get(test_id)
        if out["status"]["state"] == "Running" and (thread is None or not thread.is_alive()):
            out["status"]["state"] = "Interrupted"
        return out

    def test_many_list(self, job_id):
        """The model's Test Many requests, oldest first (without their rows)."""
        from caffeseg.jobs import infer_many as im
        job = self._model(job_id)
        return [self.test_many_status(job_id, r["id"], with_rows=False) for r in im.list_requests(job["dir"])]

    def test_many_abort(self, job_id, test_id):
        """Ask a running request to stop after its current image."""
        from caffeseg.jobs import infer_many as im
        folder = im.read_request(self._model(job_id)["dir"], test_id, with_rows=False)["folder"]
        with open(os.path.join(folder, "abort_requested"), "w"):
            pass

    def infer_series(self, job_id, path, snapshot=None):
        """DICOM images of one patient (a folder, a zip, or one file) → per image the predicted
        LV area in mm², and for one series at several phases the volumes and EF
        (jobs/series_function.py: ED = largest volume, ES = smallest). Returns {"snapshot",
        "images": [{"source", "lv_area_mm2", "slice_location", "phase_key", ...}], "function"}."""
        import tempfile
        from caffeseg.jobs import infer as inf
        from caffeseg.jobs import series_function as sf
        from caffeseg.plugin.base import EntryError
        from caffeseg.plugin.sunnybrook.dicom import read_header
        job = self._model(job_id)
        model = self._deploy_model(job, snapshot)
        readings = []
        try:
            threads_now = self.inference_threads()
            with tempfile.TemporaryDirectory(prefix="caffeseg-series-") as work:
                for path_one in sf.series_files(path, work):
                    header = read_header(path_one)
                    class_map = model.predict(inf.load_image(path_one), threads=threads_now)["class_map"]
                    reading = sf.image_reading(class_map, header)
                    reading["source"] = os.path.basename(path_one)
                    readings.append(reading)
        except (inf.InferError, EntryError, sf.SeriesError) as exc:
            raise ServiceError(str(exc))
        if not readings:
            raise ServiceError("%s holds no image" % path)
        return {"snapshot": os.path.basename(model.weights), "images": readings,
                "function": sf.series_function(readings)}

    def infer_record(self, job_id, record, snapshot=None, visualize=False):
        """One val record by key → {"image", "class_map", "probabilities", "label", "metrics",
        "contours", "classes", "layers" (with visualize: name, kind, shape, mean, std, histogram)}."""
        from caffeseg.jobs import infer as inf
        job = self._model(job_id)
        try:
            with self.lmdb_lock:
                image, label = inf.record_by_key(self.store.get(job["dataset_id"])["dir"], record)
        except inf.InferError as exc:
            raise ServiceError(str(exc))
        return self._infer_one(job, snapshot, image, label, "record:%s" % record, visualize)

    def infer_image(self, job_id, image_path, snapshot=None, visualize=False):
        """One uploaded image (PNG/TIFF 8/16-bit or DICOM); same answer as infer_record, no label."""
        from caffeseg.jobs import infer as inf
        job = self._model(job_id)
        try:
            image = inf.load_image(image_path)
        except inf.InferError as exc:
            raise ServiceError(str(exc))
        result = self._infer_one(job, snapshot, image, None, image_path, visualize)
        _add_dicom_area(result, image_path)
        return result

    def inference_threads(self):
        """CPU threads for one inference now: all usable cores while no job runs here, else the
        inference plan's share (``jobs.threads.inference_threads_now``)."""
        from caffeseg.jobs import threads
        return threads.inference_threads_now(others_computing=self.store.running_count() > 0)

    def _infer_one(self, job, snapshot, image, label, source, visualize):
        from caffeseg.jobs import infer as inf
        model = self._deploy_model(job, snapshot)
        try:
            r = model.predict(image, label=label, visualize=visualize, threads=self.inference_threads())
        except inf.InferError as exc:
            raise ServiceError(str(exc))
        r.update(source=source, image=model.crop_like(image), classes=model.classes,
                 label=None if label is None else model.crop_like(label),
                 contours=inf.lv_contours(r["class_map"]), snapshot=os.path.basename(model.weights),
                 dataset_id=job.get("dataset_id"))
        if visualize:
            layers = [dict(stats, name=name, kind="activation") for name, stats in r.pop("activations").items()]
            for name, blobs in r.pop("weights").items():
                layers += [dict(stats, name="%s[%d]" % (name, i), kind="weights") for i, stats in enumerate(blobs)]
            # DIGITS' pictures (jobs.visualize): an activation grid per blob; per layer with
            # parameters its weight image and parameter count, on the row of its first blob
            pictures = {(v["kind"], v["name"]): v for v in r.pop("visuals", [])}
            for row in layers:
                if row["kind"] == "activation":
                    row["png"] = (pictures.get(("activation", row["name"])) or {}).get("png")
                elif row["name"].endswith("[0]"):
                    picture = pictures.get(("weights", row["name"][:-3])) or {}
                    row.update(png=picture.get("png"), param_count=picture.get("param_count"))
            r["layers"] = layers
            r["param_total"] = sum(v.get("param_count") or 0 for v in pictures.values())
        return r

    def export(self, job_id, snapshot=None, out=None, fmt="tar.gz"):
        """Write the model download (``fmt`` "tar.gz" or "zip"; info.json with caffeseg's and
        DIGITS' keys, jobs/export.py) and return its path."""
        from caffeseg.jobs.export import ExportError, export_model
        from caffeseg.jobs.infer import InferError
        job = self._model(job_id)
        try:
            return export_model(job["dir"], out_path=out, snapshot=snapshot, name=job["name"], fmt=fmt, job=job)
        except (InferError, ExportError) as exc:
            raise ServiceError(str(exc))

    def export_stream(self, job_id, snapshot=None, fmt="tar.gz"):
        """(archive path, iterator of its bytes): the cached model download, sent while it is built
        the first time (``jobs.export.export_stream``)."""
        from caffeseg.jobs.export import ExportError, export_stream
        from caffeseg.jobs.infer import InferError
        job = self._model(job_id)
        try:
            return export_stream(job["dir"], snapshot=snapshot, name=job["name"], fmt=fmt, job=job)
        except (InferError, ExportError) as exc:
            raise ServiceError(str(exc))

    def make_pretrained(self, job_id, pretrained_dir, snapshot=None, name=None, description="", owner=None):
        """DIGITS' "Make Pretrained Model": the job's snapshot (default: the newest) with its network,
        deploy net, mean, labels and image facts becomes an uploaded pretrained model in
        ``pretrained_dir`` (jobs/pretrained_archive.py). Anyone who may view the job may do it (as
        a clone); ``owner`` is recorded. Returns the pretrained entry."""
        from caffeseg.jobs.infer import InferError
        from caffeseg.jobs.pretrained import UploadError
        from caffeseg.jobs.pretrained_archive import make_pretrained, upload_name
        job = self._model(job_id)
        try:
            entry = make_pretrained(job["dir"], pretrained_dir, name or upload_name(job["name"]), snapshot=snapshot,
                                    description=description, job=dict(job, owner=owner or job.get("owner")))
        except (InferError, UploadError) as exc:
            raise ServiceError(str(exc), {getattr(exc, "field", None) or "snapshot": str(exc)})
        return entry

    # -- editing -------------------------------------------------------------------------------------
    def delete(self, job_id, user=None):
        job = self.store.get(check_job_id(job_id))
        check_owner(job, user)
        if job["kind"] == "dataset":
            users = self.store.jobs_using_dataset(job_id)
            if users:
                raise ServiceError("dataset %s is used by model(s) %s; delete them first" %
                                   (job["name"], ", ".join("%s (%s)" % (u["name"], u["id"]) for u in users)))
        if job["status"] == st.RUNNING and (pid_alive(job["pid"]) or job_is_live(job)):
            raise ServiceError("job %s is running; abort it first" % job_id)
        self._remove(job)

    def _remove(self, job):
        self.store.delete(job["id"])
        self.deploy_nets.forget(job["dir"])
        shutil.rmtree(job["dir"], ignore_errors=True)

    def rename(self, job_id, name, user=None):
        self.edit(job_id, user=user, name=name)

    def set_notes(self, job_id, notes, user=None):
        self.edit(job_id, user=user, notes=notes)

    def set_group(self, job_id, group_name, user=None):
        self.edit(job_id, user=user, group_name=group_name)

    def edit(self, job_id, user=None, **fields):
        """DIGITS' ``PUT /jobs/<id>``: change a job's name, notes and/or group_name (only the
        owner, ``check_owner``). A name is 1-256 characters after trimming; notes up to 64 KiB
        ("" clears them); group_name "" or None takes the job out of its group. Returns the job."""
        job = self.store.get(check_job_id(job_id))
        check_owner(job, user)
        unknown = sorted(set(fields) - {"name", "notes", "group_name"})
        if unknown:
            raise ServiceError("a job's %s cannot be edited (name, notes, group_name can)" % ", ".join(unknown))
        changes = {}
        if "name" in fields:
            name = str(fields["name"] or "").strip()
            if not name or len(name) > 256:
                raise ServiceError("a job name needs 1-256 characters", {"name": "1-256 characters"})
            changes["name"] = name
        if "notes" in fields:
            notes = "" if fields["notes"] is None else str(fields["notes"])
            if len(notes.encode("utf-8")) > 65536:
                raise ServiceError("notes longer than 64 KiB", {"notes": "at most 64 KiB"})
            changes["notes"] = notes or None
        if "group_name" in fields:
            group = str(fields["group_name"] or "").strip()
            if len(group) > 256:
                raise ServiceError("a group name has at most 256 characters", {"group_name": "at most 256 characters"})
            changes["group_name"] = group or None
        if changes:
            self.store.update(job_id, **changes)
        return self.store.get(job_id)

    def bulk(self, action, job_ids, user=None, group_name=None):
        """One action on many jobs (the home page's selection): "abort", "delete" or "group"
        (move them to ``group_name``; "" takes them out). Each job is done on its own: returns
        {"done": [ids], "errors": {id: message}} (a refused or unknown job does not stop the others)."""
        if action not in ("abort", "delete", "group"):
            raise ServiceError("unknown bulk action %r (abort, delete, group)" % (action,))
        done, errors = [], {}
        for job_id in dict.fromkeys(job_ids):  # each once, in the order given
            try:
                if action == "abort":
                    self.abort(job_id, user=user)
                elif action == "delete":
                    self.delete(job_id, user=user)
                else:
                    self.edit(job_id, user=user, group_name=group_name)
                done.append(job_id)
            except (KeyError, ValueError) as exc:  # ServiceError, NotOwner, JobPathError
                errors[str(job_id)] = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        return {"done": done, "errors": errors}

    def details(self, job_id, pretrained_dir=None):
        """The job page's panels (jobs/job_details.py): {"timeline" (status, time, message,
        duration), "folder", "disk_bytes", "related" [{id, name, kind, status, relation}],
        "pretrained" (weights a model loaded, with their source; ``pretrained_dir`` is the
        pretrained store), "owner"}."""
        from caffeseg.jobs import job_details
        job = self.store.get(check_job_id(job_id))
        jobs = self.store.list()
        return {"timeline": job_details.status_timeline(self.store.history(job_id)),
                "folder": job["dir"], "disk_bytes": job_details.folder_size(job["dir"]),
                "related": job_details.related_jobs(job, jobs), "owner": job.get("owner"),
                "pretrained": job_details.pretrained_used(job, jobs, pretrained_dir)
                if job["kind"] == "model" else []}

    def epoch_costs(self):
        """{standard network: its latest ended training's seconds per training image, ...} for
        the New Model form's cost hint (``jobs.cost.epoch_costs``)."""
        from caffeseg.jobs import cost
        return cost.epoch_costs(self.store)

    def cost_estimate(self, network, dataset_id):
        """No training of ``network`` here yet: its measured training step on this dataset's image
        size (``jobs.cost.Estimator``: measured once in the background, then kept)."""
        from caffeseg.jobs import cost, networks
        from caffeseg.jobs.dataset import DatasetInfo
        if network not in {n["name"] for n in networks.standard_networks()}:
            raise ServiceError("no standard network %r" % network, {"network": "unknown network"})
        job = self._dataset_job(dataset_id)
        if job["status"] != st.DONE:
            raise ServiceError("dataset %s is not built yet" % dataset_id, {"dataset": "not built yet"})
        return cost.estimator_for(self.root).estimate(network, job["dir"], DatasetInfo.read(job["dir"]).feature_shape)

    def metric_summary(self, job_id):
        """Every metric the job recorded with its last, min and max ({"val/dice": {...}}; see
        jobs.job_details.metric_summary): the home table's metric columns."""
        from caffeseg.jobs import job_details
        return job_details.metric_summary(self.metrics(job_id)["series"])

    def clone_values(self, job_id):
        """The options a job was made with (for a "clone" form); internal keys removed."""
        job = self.store.get(check_job_id(job_id))
        values = {k: v for k, v in job["options"].items() if not k.startswith("_")}
        values["name"] = job["name"] + " (clone)"
        values["cloned_from"] = job["id"]  # related jobs: the clone links back
        if job["kind"] == "model":
            values["dataset_id"] = job["dataset_id"]
            with open(os.path.join(job["dir"], "original.prototxt")) as f:
                values["network_text"] = f.read()
            # Python layer files are kept: point at the copies in the job folder.
            files = values.get("python_layer_files") or []
            values["python_layer_files"] = [os.path.join(job["dir"], os.path.basename(p))
                                            for p in ([files] if isinstance(files, str) else files)]
        return values

    def clone(self, job_id, owner=None):
        """A new model job with this one's options (anyone may clone; the clone is ``owner``'s)."""
        values = self.clone_values(job_id)
        if self.store.get(job_id)["kind"] != "model":
            raise ServiceError("only model jobs are cloned directly; use clone_values for datasets")
        values.pop("standard_network", None)
        return self.create_model(values, owner=owner)


def _add_dicom_area(result, path):
    """An uploaded DICOM's predicted LV area in mm² (jobs.series_function) into its metrics, when
    its header gives PixelSpacing and the prediction has the image's own size."""
    from caffeseg.jobs import series_function as sf
    from caffeseg.plugin.base import EntryError
    from caffeseg.plugin.images import looks_like_dicom
    from caffeseg.plugin.sunnybrook.dicom import read_header
    if not (str(path).lower().endswith((".dcm", ".dicom")) or looks_like_dicom(path)):
        return
    try:
        header = read_header(path)
    except EntryError:
        return
    reading = sf.image_reading(result["class_map"], header)
    if reading["lv_area_mm2"] is not None and tuple(result["image"].shape[-2:]) == tuple(result["class_map"].shape):
        result["metrics"] = dict(result.get("metrics") or {}, lv_area_mm2=reading["lv_area_mm2"])
