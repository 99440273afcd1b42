"""Running jobs: one subprocess per training job, metrics ingestion, a worker loop.

``Scheduler.train(job)`` starts ``jobs/runner.py`` for a model job and supervises it: it stores
the runner's pid (so any process can abort it with SIGTERM), ingests ``metrics.jsonl`` into the
store while it runs, and sets the final status from the runner's exit code. ``Scheduler.loop``
is the ``caffeseg worker``: it picks Waiting jobs whose dataset is Done (a model whose dataset
errored fails with it), respecting CPU slots and one training per GPU. Waiting dataset jobs are
built in a thread of the worker (``build_dataset``, set by the service), one at a time by default
(``dataset_slots``), beside the trainings.
"""
import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import traceback

from caffeseg.jobs import allocator
from caffeseg.jobs import gpus as gpu_policy
from caffeseg.jobs import real_caffe, resources, threads
from caffeseg.jobs import runner as runner_mod
from caffeseg.jobs import store as st

RUNNER_PATH = os.path.abspath(runner_mod.__file__)
IMPORT_ROOT = resources.import_root()  # on the runner's PYTHONPATH: it imports caffeseg from there
ABORT_FLAG = runner_mod.ABORT_FLAG  # the runner stops at its next iteration when it appears
ABORT_GRACE_SECONDS = 10.0  # a runner still busy in one long iteration after this is killed
# A locked job database (another process holding a write lock) is waited out, never fatal to a
# supervision: retries back off from the first delay, doubling, up to the longest one.
STORE_RETRY_FIRST_S, STORE_RETRY_LONGEST_S = 0.5, 10.0


def ingest_metrics(store, job):
    """Read new complete lines of the job's metrics.jsonl into the store; returns rows added."""
    path = os.path.join(job["dir"], runner_mod.METRICS)
    if not os.path.exists(path):
        return 0
    offset = job.get("metrics_offset") or 0
    if offset > os.path.getsize(path):
        offset = 0  # the runner rewrote the file on resume; rows are keyed, so re-reading is safe
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1  # a line still being written is left for next time
    rows = []
    for line in chunk[:end].decode("utf-8", "replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        it, phase = int(rec["iter"]), rec.get("phase", "train")
        for name, value in (rec.get("values") or {}).items():
            rows.append((it, phase, name, value))
        for name in ("lr", "epoch", "throughput", "eta"):
            if rec.get(name) is not None:
                rows.append((it, "", name, rec[name]))
    if rows:
        store.add_metrics(job["id"], rows)
    store.update(job["id"], metrics_offset=offset + end)
    job["metrics_offset"] = offset + end
    return len(rows)


def patiently(fn, *args, what="the job database", log=None, **kwargs):
    """``fn(*args, **kwargs)``, retried with backoff while the store is locked or busy.

    Used where giving up would leave a job wrong (a supervised training's status, its metrics):
    the runner keeps training meanwhile, and the outcome is recorded once the lock is gone."""
    delay, said = STORE_RETRY_FIRST_S, False
    while True:
        try:
            return fn(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            if not st.is_busy(exc):
                raise
            if log is not None and not said:
                log("%s is busy (%s); retrying" % (what, exc))
                said = True
            time.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_LONGEST_S)


def _append_log(job_dir, line):
    try:
        with open(os.path.join(job_dir, "log.txt"), "a") as f:
            f.write(line.rstrip("\n") + "\n")
    except OSError:
        pass  # an unwritable job folder: the status message still says what happened


def runner_error_from_log(job_dir, tail_bytes=65536):
    """The runner's last ``error: ...`` line in log.txt (its stderr), without the prefix, or None.

    When the job folder became unwritable, runner_status.json still holds an older state; the
    runner's stderr goes to log.txt through a file the scheduler opened before, so the reason is
    there."""
    try:
        with open(os.path.join(job_dir, "log.txt"), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):].strip() or None
    return None


def read_runner_status(job_dir):
    try:
        with open(os.path.join(job_dir, runner_mod.STATUS)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def pid_alive(pid):
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def job_is_live(job):
    """Whether a Running job's runner or its supervising worker/server still runs (a claimed job
    has a supervisor before its runner has a pid); False for pids recorded on another host."""
    if job.get("host") not in (None, socket.gethostname()):
        return False
    return (st.same_process(job.get("pid"), job.get("pid_started"))
            or st.same_process(job.get("supervisor_pid"), job.get("supervisor_started")))


BACKENDS = ("engine", "pycaffe")


def _write_abort_flag(job_dir):
    """The abort request every kind of job reads: runners each iteration, dataset builds per record."""
    with open(os.path.join(job_dir, ABORT_FLAG), "w") as f:
        f.write(str(time.time()))


def _remove_abort_flag(job_dir):
    try:
        os.unlink(os.path.join(job_dir, ABORT_FLAG))
    except FileNotFoundError:
        pass


def job_backend(job):
    """The backend a model job asked for: ``engine``, ``pycaffe``, ``auto`` or None (not recorded:
    the job belongs to the app's own scheduler, which runs it on its backend; a worker treats it
    as ``engine``)."""
    value = (job.get("options") or {}).get("backend")
    return value if value in BACKENDS + ("auto",) else None


def _real_pycaffe_importable():
    return real_caffe.importable_real_pycaffe()


def _engine_importable():
    """Whether this installation has the engine (the pycaffe image ships caffeseg without it)."""
    return importlib.util.find_spec("caffeseg.engine") is not None


def runnable_backends(backend):
    """What a scheduler started with ``--backend backend`` can run: itself, or for ``auto``
    each backend importable here (the engine, real pycaffe)."""
    if backend in BACKENDS:
        return {backend}
    found = set()
    if _engine_importable():
        found.add("engine")
    if _real_pycaffe_importable():
        found.add("pycaffe")
    return found


def _kill_if_alive(pid):
    if pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Scheduler:
    def __init__(self, store, python=None, backend="auto", cpu_slots=1, gpus=()):
        self.store = store
        self.python = python or sys.executable
        self.backend = backend
        self.cpu_slots = max(1, int(cpu_slots))
        self.gpus = gpu_policy.detect() if gpus == "auto" else list(gpus)  # "auto": NVML's list
        self._running = {}  # job id → thread
        self._building = {}  # dataset job id → thread
        self.dataset_slots = 1
        self.build_dataset = None  # called with a dataset job id claimed Running (the service builds it)
        self.on_done = None  # called with the job id after a training ends Done (evaluation)
        self.prepare = None  # called with the job before its runner starts (late derivation)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._runnable = None

    # -- one training job -------------------------------------------------------------------
    def runner_backend(self, job):
        """The backend the runner of ``job`` is started with: the job's own, else this scheduler's."""
        wanted = job_backend(job)
        if wanted is None and self.build_dataset is None:
            wanted = "engine"  # a standalone worker runs unrecorded jobs as engine jobs (see takes)
        return wanted if wanted in BACKENDS else self.backend

    def runner_command(self, job, resume=False, gpu=None, gpus=None):
        cmd = [self.python, RUNNER_PATH, job["dir"], "--backend", self.runner_backend(job)]
        if resume:
            cmd.append("--resume")
        weights = (job.get("options") or {}).get("pretrained") or []
        if weights and not resume:
            cmd += ["--weights", ",".join(weights if isinstance(weights, list) else [weights])]
        if gpus and len(gpus) > 1:  # one job on several GPUs: one runner process each (jobs/ranks.py)
            cmd += ["--gpus", ",".join(str(g) for g in gpus)]
        elif gpus:
            cmd += ["--gpu", str(gpus[0])]
        elif gpu is not None:
            cmd += ["--gpu", str(gpu)]
        return cmd

    def train(self, job_id, resume=False, gpu=None, on_progress=None, poll=0.5, auto_evaluate=True,
              claimed=False, gpus=None):
        """Run the runner for ``job_id`` and wait; returns the final status.
        ``claimed``: the job was already moved to Running by ``step`` (worker path)."""
        self._local.auto_evaluate = auto_evaluate
        job = self.store.get(job_id)
        if gpus is None and gpu is None and not claimed and self.gpus:
            gpus = self.gpus_for(job)  # a foreground training picks its GPUs as the worker would
            if gpus is None:
                self.store.set_status(job_id, st.ERROR, "the GPUs this job asks for are busy or not here "
                                      "(free: %s); queue it to wait for them" % (",".join(map(str, self.free_gpus())) or "none"))
                return st.ERROR
            self.store.update(job_id, options=dict(job["options"] or {}, assigned_gpus=gpus))
        if self.prepare is not None:
            try:
                self.prepare(job)
            except ValueError as exc:  # the network does not fit the finished dataset
                self.store.set_status(job_id, st.ERROR, str(exc))
                return st.ERROR
        if resume:
            state = runner_mod.latest_solverstate(job["dir"])
            last = runner_mod.snapshot_iteration(state) if state else 0
            # The file is cut here, before ingestion restarts from offset 0: were the runner to
            # cut it later, lines re-read from the old file would leave the offset in the middle
            # of a new line, and that iteration would be lost.
            runner_mod.truncate_metrics(os.path.join(job["dir"], runner_mod.METRICS), last)
            self.store.drop_metrics_after(job_id, last)
            self.store.update(job_id, metrics_offset=0)
            job["metrics_offset"] = 0
        flag = os.path.join(job["dir"], ABORT_FLAG)
        if os.path.exists(flag):
            os.unlink(flag)
        env = dict(os.environ)
        env["PYTHONPATH"] = IMPORT_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        command = self.runner_command(job, resume, gpu, gpus)
        if self.runner_backend(job) == "pycaffe":
            # Real Caffe may need its own interpreter and path (the `make caffe` build).
            try:
                command[0], env = real_caffe.runner_launch(self.python, gpu=gpu is not None or bool(gpus))
            except real_caffe.RealCaffeError as exc:
                self.store.set_status(job_id, st.ERROR, str(exc))
                return st.ERROR
        # Each runner's thread count and OpenMP wait policy (jobs.threads): they must be in its
        # environment, as torch or OpenBLAS reads them once, when it starts its thread pool.
        threads.runner_environment(env, trainings=len(self.gpus) or self.cpu_slots)
        allocator.runner_environment(env)  # freed tensors stay in the heap: no page faults each step
        with open(os.path.join(job["dir"], "log.txt"), "ab") as log:
            proc = subprocess.Popen(command, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=job["dir"])
        log = lambda line: _append_log(job["dir"], "scheduler: " + line)  # noqa: E731
        patiently(self.store.update, job_id, pid=proc.pid, supervisor_pid=os.getpid(), log=log)
        if claimed and patiently(self.store.get, job_id, log=log)["status"] != st.RUNNING:
            # Aborted while it was prepared (no runner pid to signal then): stop the runner now.
            _write_abort_flag(job["dir"])
            proc.terminate()
        if not claimed:
            patiently(self.store.set_status, job_id, st.RUNNING, "resumed" if resume else None, log=log)
        while proc.poll() is None:
            time.sleep(poll)
            self._ingest_quietly(job, log)
            if on_progress:
                on_progress(read_runner_status(job["dir"]))
        patiently(ingest_metrics, self.store, job, log=log)
        return patiently(self._finish, job, proc.returncode, log=log)

    def _ingest_quietly(self, job, log):
        """Ingest new metric lines; a locked store only delays them to the next poll."""
        try:
            ingest_metrics(self.store, job)
        except sqlite3.OperationalError as exc:
            if not st.is_busy(exc):
                raise
            if not getattr(self._local, "said_busy", False):
                log("the job database is busy (%s); metrics are ingested when it is free" % exc)
                self._local.said_busy = True

    def _finish(self, job, code):
        info = read_runner_status(job["dir"])
        aborted = os.path.exists(os.path.join(job["dir"], ABORT_FLAG))
        if aborted and code != runner_mod.EXIT_DONE:
            code = runner_mod.EXIT_ABORTED  # killed after the grace period: still the user's abort
        if code == runner_mod.EXIT_DONE:
            status, msg = st.DONE, None
        elif code in (runner_mod.EXIT_ABORTED, -signal.SIGTERM):
            status, msg = st.ABORTED, "aborted"
        elif code in (runner_mod.EXIT_NAN, runner_mod.EXIT_ERROR):
            stale = info.get("state") != "error"  # the folder became unwritable: see log.txt
            msg = (runner_error_from_log(job["dir"]) if stale else None) or info.get("message")
            status, msg = st.ERROR, msg or "the runner failed (see log.txt)"
        else:  # killed by a signal, power loss...: can be resumed from the last solverstate
            status, msg = st.INTERRUPTED, "runner stopped (exit %s)" % code
        # Compare-and-set, with the pids in the same transaction: a process that settled the job
        # meanwhile (recover) has recorded (and evaluated) it; it is not recorded twice.
        if not self.store.claim(job["id"], st.RUNNING, status, msg, pid=None, supervisor_pid=None):
            return self.store.get(job["id"])["status"]
        if status == st.DONE and self.on_done is not None and getattr(self._local, "auto_evaluate", True):
            self.on_done(job["id"])
        return status

    def abort(self, job_id):
        """SIGTERM the runner (it stops after the current iteration); Waiting jobs just stop.
        A dataset build runs inside a worker process: it gets the flag and stops at its next record."""
        job = self.store.get(job_id)
        if job["kind"] == "dataset" and job["status"] == st.RUNNING and pid_alive(job["pid"]):
            _write_abort_flag(job["dir"])
            if self.store.get(job_id)["status"] != st.RUNNING:
                # The build ended between the read and the flag: it records its end before it
                # removes a flag, so one written after that is removed here, not left behind.
                _remove_abort_flag(job["dir"])
                return False
            return True
        if job["status"] == st.RUNNING and job.get("host") not in (None, socket.gethostname()):
            # Trained by a worker on another host (container): its pid means nothing here. The
            # runner sees the flag at its next iteration; the worker there records the Abort.
            _write_abort_flag(job["dir"])
            return True
        if job["status"] == st.RUNNING and pid_alive(job["pid"]):
            pid = int(job["pid"])
            _write_abort_flag(job["dir"])
            os.kill(pid, signal.SIGTERM)
            # Abort is immediate for the user: a runner stuck in a long iteration is killed; its
            # job still ends Aborted (the flag) and stays resumable from the last solverstate.
            timer = threading.Timer(ABORT_GRACE_SECONDS, _kill_if_alive, args=(pid,))
            timer.daemon = True
            timer.start()
            return True
        if job["status"] in (st.WAITING, st.INITIALIZED, st.RUNNING, st.INTERRUPTED):
            # Compare-and-set: a worker may claim a Waiting job between the read and this write;
            # then the job is building and gets the flag (read it again).
            if not self.store.claim(job_id, job["status"], st.ABORTED, "aborted"):
                return self.abort(job_id)
        return False

    # -- GPUs (jobs/gpus.py) -----------------------------------------------------------------
    def gpu_holders(self):
        """{gpu: [(job id, shares)]} of the running model jobs of this host on this scheduler's GPUs."""
        here = socket.gethostname()
        holders = {g: [] for g in self.gpus}
        for job in self.store.list("model"):
            if job["status"] != st.RUNNING or job.get("host") not in (None, here):
                continue
            options = job.get("options") or {}
            for g in options.get("assigned_gpus") or []:
                if g in holders:
                    holders[g].append((job["id"], bool(gpu_policy.request_from_options(options).share)))
        return holders

    def free_gpus(self):
        """This scheduler's GPUs that no running job holds."""
        return [g for g, on_it in sorted(self.gpu_holders().items()) if not on_it]

    def gpus_for(self, job):
        """The GPUs ``job`` would get now ([] = the CPU), or None while they are taken (or when the
        request cannot be met by this scheduler, whose GPUs are not the ones it asks for)."""
        try:
            request = gpu_policy.request_from_options(job.get("options"))
            holders = {g: [share for _, share in on_it] for g, on_it in self.gpu_holders().items()}
            return gpu_policy.assign(request, self.gpus, holders)
        except gpu_policy.GpuRequestError:
            return None

    # -- the worker ----------------------------------------------------------------------
    def takes(self, job):
        """Whether this scheduler runs ``job``: a job for ``engine``/``pycaffe`` goes only to a
        scheduler that can run that backend, an ``auto`` job to any; a job without a recorded
        backend to the app's own scheduler (the one that builds datasets) or an engine worker."""
        runnable = self.runnable()
        wanted = job_backend(job)
        if wanted == "auto":
            return True
        if wanted is None:
            return self.build_dataset is not None or "engine" in runnable
        return wanted in runnable

    def runnable(self):
        """The backends this scheduler runs (``runnable_backends`` of its ``--backend``)."""
        if self._runnable is None:
            self._runnable = runnable_backends(self.backend)
        return set(self._runnable)

    def ready_jobs(self):
        """Waiting model jobs this scheduler takes whose dataset is Done, oldest first; fails models
        of bad datasets."""
        ready = []
        for job in reversed(self.store.list("model")):
            if job["status"] != st.WAITING or job["id"] in self._running or not self.takes(job):
                continue
            dataset_status = None
            if job.get("dataset_id"):
                try:
                    dataset_status = self.store.get(job["dataset_id"])["status"]
                except KeyError:
                    dataset_status = st.ERROR
            if dataset_status in (st.ERROR, st.ABORTED):
                self.store.set_status(job["id"], st.ERROR, "its dataset %s failed" % job["dataset_id"])
            elif dataset_status in (None, st.DONE):
                ready.append(job)
        return ready

    def ready_datasets(self):
        """Waiting dataset jobs, oldest first."""
        return [j for j in reversed(self.store.list("dataset"))
                if j["status"] == st.WAITING and j["id"] not in self._building]

    def _start_builds(self):
        started = []
        for tid in [k for k, t in self._building.items() if not t.is_alive()]:
            del self._building[tid]
        if self.build_dataset is None:
            return started
        for job in self.ready_datasets():
            if len(self._building) >= self.dataset_slots:
                break
            # The pid comes with the claim (one transaction): a process starting meanwhile must
            # not see it Running without a pid and mark it Interrupted.
            if not self.store.claim(job["id"], st.WAITING, st.RUNNING, "build started by worker %d" % os.getpid(),
                                    pid=os.getpid()):
                continue  # another worker took it
            t = threading.Thread(target=self._build_in_background, args=(job["id"],), daemon=True,
                                 name="dataset-%s" % job["id"])
            self._building[job["id"]] = t
            t.start()
            started.append(job["id"])
        return started

    def _build_in_background(self, job_id):
        # batch work: the trainings and the web's answers go first when cores are short (jobs.threads)
        threads.lower_this_threads_priority()
        self.build_dataset(job_id)

    def step(self):
        """Start what can start now (in threads); returns the started job ids."""
        started = []
        with self._lock:
            started += self._start_builds()
            for tid in [k for k, t in self._running.items() if not t.is_alive()]:
                del self._running[tid]
            for job in self.ready_jobs():
                gpus = self.gpus_for(job)
                if gpus is None:
                    continue  # its GPUs are taken: it waits
                if not gpus and sum(1 for t in self._running.values() if not getattr(t, "gpus", None)) >= self.cpu_slots:
                    continue
                resume = bool((job.get("options") or {}).get("_resume"))
                options = dict(job["options"] or {})
                options.pop("_resume", None)
                options["assigned_gpus"] = gpus  # what the holders of each GPU are read from
                if not self.store.claim(job["id"], st.WAITING, st.RUNNING,
                                        "started by worker %d%s%s" % (os.getpid(), " (resume)" if resume else "",
                                                                      " on GPU %s" % ",".join(map(str, gpus)) if gpus else ""),
                                        options=options, pid=None, supervisor_pid=os.getpid()):
                    continue  # another worker took it
                t = threading.Thread(target=self._train_claimed, args=(job["id"], resume, gpus), daemon=True)
                t.gpu = gpus[0] if gpus else None
                t.gpus = gpus
                self._running[job["id"]] = t
                t.start()
                started.append(job["id"])
        return started

    def _train_claimed(self, job_id, resume, gpus):
        """``train`` of a job ``step`` claimed. Its supervisor (this process) stays recorded while
        it lives, so an unexpected failure here must end the job, or nobody else would."""
        try:
            return self.train(job_id, resume, None, claimed=True, gpus=gpus)
        except Exception as exc:
            message = "the worker failed supervising this job: %s: %s" % (type(exc).__name__, exc)
            job = patiently(self.store.get, job_id)
            _append_log(job["dir"], "scheduler: " + traceback.format_exc())
            if st.same_process(job.get("pid"), job.get("pid_started")):
                # Its runner trains on: left to recover (adopted, or settled once it ends).
                patiently(self.store.update, job_id, supervisor_pid=None)
                return st.RUNNING
            patiently(self.store.claim, job_id, st.RUNNING, st.ERROR, message, supervisor_pid=None)
            return st.ERROR

    # -- after a restart: runners nobody watches ----------------------------------------------
    def recover(self, adopt=True):
        """Settle the Running jobs of this host whose supervisor is gone (a restarted server/worker).

        A model job whose runner still runs (same pid *and* start time: not a reused pid) is
        adopted when ``adopt``: a thread ingests its metrics and records its outcome when it ends.
        A runner that ended while nobody watched is judged by its runner_status.json: done →
        Done (and evaluated), error → Error with its message, aborted → Aborted; one that stopped
        mid-way → Interrupted (resumable). A dataset job whose building process is gone →
        Interrupted. Only pids recorded on this host (or with no host) are judged: a worker in
        another container sharing the database is left alone. Returns {job id: what was done}."""
        here = socket.gethostname()
        done = {}
        try:
            jobs = self.store.list()
        except sqlite3.OperationalError:  # locked: the worker loop's recover settles them later
            return done
        for job in jobs:
            if job["status"] != st.RUNNING or job.get("host") not in (None, here):
                continue
            try:
                self._recover_one(job, adopt, done)
            except sqlite3.OperationalError as exc:
                if not st.is_busy(exc):
                    raise
                done[job["id"]] = None  # left Running; a later start settles it
        return done

    def _recover_one(self, job, adopt, done):
        alive = st.same_process(job.get("pid"), job.get("pid_started"))
        if job["kind"] != "model":
            if not alive and self.store.claim(job["id"], st.RUNNING, st.INTERRUPTED,
                                              "the process running this job stopped"):
                done[job["id"]] = st.INTERRUPTED
            return
        if st.same_process(job.get("supervisor_pid"), job.get("supervisor_started")):
            # Its worker or server is alive and waits for it (maybe still preparing, before its
            # runner has a pid): not ours to judge or adopt.
            return
        if alive:
            if adopt and job["id"] not in self._running:
                self.store.update(job["id"], supervisor_pid=os.getpid())  # this process watches it now
                t = threading.Thread(target=self._watch, args=(job["id"],), daemon=True,
                                     name="adopted-%s" % job["id"])
                t.gpus = list((job.get("options") or {}).get("assigned_gpus") or [])  # what it was given
                t.gpu = t.gpus[0] if t.gpus else None
                self._running[job["id"]] = t
                t.start()
                done[job["id"]] = "adopted"
            return
        done[job["id"]] = self._settle(job)

    def _watch(self, job_id, poll=0.5):
        """Supervise a runner this process did not start (no exit code: its status file tells)."""
        job = patiently(self.store.get, job_id)
        log = lambda line: _append_log(job["dir"], "scheduler: " + line)  # noqa: E731
        log("adopted runner pid %s after a restart" % job["pid"])
        while st.same_process(job.get("pid"), job.get("pid_started")):
            time.sleep(poll)
            self._ingest_quietly(job, log)
        patiently(ingest_metrics, self.store, job, log=log)
        return patiently(self._settle, job, log=log)

    def _settle(self, job):
        """Record the outcome of a runner that ended unwatched, from its runner_status.json."""
        info = read_runner_status(job["dir"])
        state = info.get("state")
        if state not in ("done", "error") and os.path.exists(os.path.join(job["dir"], ABORT_FLAG)):
            state = "aborted"  # killed after the grace period (as _finish): still the user's abort
        if state == "done" and int(info.get("iter") or 0) >= int(info.get("max_iter") or 0):
            status, msg = st.DONE, "finished while no scheduler watched it"
        elif state == "error":
            status, msg = st.ERROR, info.get("message") or runner_error_from_log(job["dir"]) or "the runner failed"
        elif state == "aborted":
            status, msg = st.ABORTED, "aborted"
        else:
            status, msg = st.INTERRUPTED, "the runner stopped at iteration %s (no exit status: killed?)" % info.get("iter")
        ingest_metrics(self.store, job)
        # Compare-and-set: two processes recovering at once settle (and evaluate) it once.
        if not self.store.claim(job["id"], st.RUNNING, status, msg, pid=None, supervisor_pid=None):
            return None
        if status == st.DONE and self.on_done is not None:
            self.on_done(job["id"])
        return status

    def loop(self, stop_event=None, poll=1.0):
        self.recover(adopt=True)
        stop_event = stop_event or threading.Event()
        while not stop_event.is_set():
            try:
                self.step()
            except sqlite3.OperationalError as exc:  # a locked store: the next step tries again
                if not st.is_busy(exc):
                    raise
            stop_event.wait(poll)
