"""Training runner: one process per training job, driving a backend through the pycaffe API.

Runs under Python 3.9 with numpy and real pycaffe only (no torch, no protobuf; of the project
only ``jobs.ranks``, standard library only, on the pycaffe path), so the same file works in a
BVLC Caffe Docker image.

    python runner.py JOB_DIR [--backend engine|pycaffe|auto] [--resume] [--weights A,B] [--gpu N]
                             [--gpus 0,1 | --cpu-ranks N]

``--gpus``/``--cpu-ranks``: one job on several devices, one process per device (``jobs/ranks.py``:
this process is rank 0 and starts the others; engine backend only). Each rank trains on its shard
of the data, gradients are averaged over the ranks before every update (Caffe's multi-GPU rules),
and only rank 0 writes the files below.

Files it reads in JOB_DIR: ``solver.prototxt`` (as derived), ``train_val.prototxt``, optional
``job.json`` (``{"epochs": E}``). Files it writes:

* ``solver_run.prototxt``: the derived solver with ``test_interval: max_iter + 1`` (Caffe requires
  test_interval > 0 when test nets exist; this value never fires during ``step``, and
  ``test_initialization: false`` skips iteration 0), ``snapshot: 0``, ``snapshot_after_train:
  false`` and ``display: 0``: validation and snapshots are done here, the same way on both
  backends (Caffe's own test loop would run on top of ours otherwise);
* ``metrics.jsonl``: one JSON object per line; train lines after every iteration, val lines
  after every validation: ``{"iter", "phase", "epoch", "lr", "values": {blob: mean}, ...}``.
  The jobs service ingests this file into SQLite (the runner never needs the database). On
  resume, lines past the restored iteration are dropped first, so series have no gap or dup;
* ``snapshot_iter_<N>.caffemodel`` (every one kept) and the newest ``snapshot_iter_<N>.solverstate``;
* ``runner_status.json``: state (running, done, error, aborted), iteration, max_iter, message,
  start time, ETA and the backend that trains (``backend_used``); rewritten while training (every
  ``STATUS_EVERY_S`` and at each snapshot), so ``iter / max_iter`` is the live progress the
  service and the pages report.

Exit codes: 0 done, 2 bad job / backend error, 3 NaN or inf loss, 143 aborted (SIGTERM).
"""
import argparse
import glob
import json
import math
import os
import re
import signal
import sys
import time

if __package__ in (None, ""):  # run as a script: put the folder holding the caffeseg package on the path
    _up = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # a checkout, or site-packages/caffeseg
    sys.path.insert(1, _up if os.path.isdir(os.path.join(_up, "caffeseg")) else os.path.dirname(_up))
from caffeseg.jobs import ranks as ranks_mod  # noqa: E402

EXIT_DONE, EXIT_ERROR, EXIT_NAN, EXIT_ABORTED = 0, 2, 3, 143
RUN_SOLVER = "solver_run.prototxt"
METRICS = "metrics.jsonl"
STATUS = "runner_status.json"
STATUS_EVERY_S = 0.5  # runner_status.json (the progress the pages poll) is rewritten at most this often
_OVERRIDDEN = ("test_interval", "snapshot", "snapshot_after_train", "display", "test_initialization")


class RunnerError(Exception):
    pass


# -- small helpers -----------------------------------------------------------------------------

def write_json_atomic(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_solver_fields(text):
    """Top-level scalar fields of a solver prototxt → {name: [values...]} (strings)."""
    fields = {}
    depth = 0
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if depth == 0:
            m = re.match(r"^([A-Za-z_]\w*)\s*:\s*(.+)$", line)
            if m and "{" not in m.group(2):
                fields.setdefault(m.group(1), []).append(m.group(2).strip().strip('"').strip("'"))
        depth += line.count("{") - line.count("}")
    return fields


def run_solver_text(text):
    """The derived solver with our overrides (validation and snapshots are done by the runner)."""
    fields = read_solver_fields(text)
    never = int(fields.get("max_iter", ["0"])[0]) + 1
    kept, depth = [], 0
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"^([A-Za-z_]\w*)\s*:", line)
        if not (depth == 0 and m and m.group(1) in _OVERRIDDEN):
            kept.append(raw)
        depth += line.count("{") - line.count("}")
    kept += ["test_interval: %d" % never, "snapshot: 0", "snapshot_after_train: false", "display: 0",
             "test_initialization: false"]
    return "\n".join(kept) + "\n"


def learning_rate(f, it):
    """Caffe's SGDSolver::GetLearningRate for iteration ``it`` (0-based)."""
    def num(name, default=0.0):
        return float(f.get(name, [default])[0])
    base, policy = num("base_lr"), f.get("lr_policy", ["fixed"])[0]
    gamma, power = num("gamma"), num("power")
    if policy == "fixed":
        return base
    if policy == "step":
        return base * math.pow(gamma, math.floor(it / num("stepsize", 1)))
    if policy == "exp":
        return base * math.pow(gamma, it)
    if policy == "inv":
        return base * math.pow(1.0 + gamma * it, -power)
    if policy == "multistep":
        steps = sum(1 for v in f.get("stepvalue", []) if it >= int(v))
        return base * math.pow(gamma, steps)
    if policy == "poly":
        return base * math.pow(1.0 - float(it) / num("max_iter", 1), power)
    if policy == "sigmoid":
        return base * (1.0 / (1.0 + math.exp(-gamma * (it - num("stepsize")))))
    return float("nan")


def snapshot_iteration(path):
    m = re.search(r"_iter_(\d+)\.(caffemodel|solverstate)(\.h5)?$", path)
    return int(m.group(1)) if m else -1


def latest_solverstate(job_dir):
    states = glob.glob(os.path.join(job_dir, "*_iter_*.solverstate"))
    return max(states, key=snapshot_iteration) if states else None


def truncate_metrics(path, last_iter):
    """Keep only metric lines with iter <= last_iter (a resumed run re-creates the rest)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["iter"] <= last_iter:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError):
                continue  # a torn last line from a killed run
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def import_backend(name):
    """The ``caffe`` module for ``engine``, ``pycaffe`` or ``auto``."""
    if name in ("pycaffe", "auto"):
        try:
            import caffe
            if not getattr(caffe, "__caffeseg_engine__", False) or name == "auto":
                return caffe
            if name == "pycaffe":  # the project's installed `caffe` proxy resolved to the engine
                raise RunnerError("backend pycaffe asked for, but 'import caffe' gives the caffeseg "
                                  "engine here (no real pycaffe earlier on the path)")
        except ImportError:
            if name == "pycaffe":
                raise RunnerError("backend pycaffe asked for, but 'import caffe' fails on this Python")
    try:
        from caffeseg.engine import caffe_shim
    except ImportError as exc:  # e.g. the pycaffe image, which has no torch: say so, exit 2
        raise RunnerError("the engine backend cannot be imported (%s)" % exc)
    return caffe_shim.install()


def backend_used(caffe, gpu=None):
    """What trains the job, written in runner_status.json: ``{"name": "engine"|"pycaffe",
    "version", "module" (the caffe package folder), "python", "device" ("cpu" or "gpu:N"),
    "torch" (the engine's torch version)}``."""
    path = getattr(caffe, "__file__", None)
    # The engine is the package ``engine`` (also when registered as ``caffe``).
    engine = getattr(caffe, "__caffeseg_engine__", False) or getattr(caffe, "__name__", "") == "engine"
    used = {"name": "engine" if engine else "pycaffe",
            "version": getattr(caffe, "__version__", None),
            "module": os.path.dirname(os.path.abspath(path)) if path else None,
            "python": sys.executable, "device": "cpu" if gpu is None else "gpu:%d" % int(gpu)}
    if engine and "torch" in sys.modules:
        used["torch"] = getattr(sys.modules["torch"], "__version__", None)
    return used


def blob_mean(blob):
    data = blob.data
    return float(data.mean()) if data.size else float("nan")


# -- the runner ----------------------------------------------------------------------------------

ABORT_FLAG = "abort_requested"  # written by jobs.scheduler.Scheduler.abort in the job folder

class Runner:
    def __init__(self, job_dir, caffe, log=print, ranks=None):
        self.job_dir = os.path.abspath(job_dir)
        self.caffe = caffe
        self.ranks = ranks or ranks_mod.Ranks()
        self.log = log if self.ranks.writes else (lambda message: None)
        self.stop_requested = False
        self.started = None  # wall-clock start of run() (written in runner_status.json)
        self.gpu = None  # the device run() trains on (None: CPU)
        with open(os.path.join(self.job_dir, "solver.prototxt")) as f:
            text = f.read()
        self.fields = read_solver_fields(text)
        if self.ranks.writes:  # rank 0 writes it before it starts the other ranks
            with open(os.path.join(self.job_dir, RUN_SOLVER), "w") as f:
                f.write(run_solver_text(text))
        self.max_iter = int(self.fields.get("max_iter", ["0"])[0])
        self.snapshot_every = int(self.fields.get("snapshot", ["0"])[0])
        self.test_every = int(self.fields.get("test_interval", ["0"])[0])
        self.test_iter = int(self.fields.get("test_iter", ["0"])[0])
        self.iter_size = int(self.fields.get("iter_size", ["1"])[0])
        self.epochs = self._epochs()
        self.metrics_path = os.path.join(self.job_dir, METRICS)

    def _epochs(self):
        try:
            with open(os.path.join(self.job_dir, "job.json")) as f:
                return float(json.load(f).get("epochs") or 0) or None
        except (OSError, ValueError):
            return None

    def status(self, state, iteration, message=None, **extra):
        """``runner_status.json``: rewritten at start, while training (at most every
        ``STATUS_EVERY_S``, and at each validation/snapshot) and at the end; ``iter / max_iter``
        is the progress the pages show, ``started`` the wall-clock start of this run, ``eta``
        the seconds left while running."""
        if not self.ranks.writes:
            return
        info = {"state": state, "iter": iteration, "max_iter": self.max_iter, "message": message,
                "time": time.time(), "pid": os.getpid(), "started": self.started,
                "backend": backend_used(self.caffe, self.gpu)}
        info.update(extra)
        write_json_atomic(os.path.join(self.job_dir, STATUS), info)

    def epoch(self, it):
        return float(it) * self.epochs / self.max_iter if self.epochs and self.max_iter else None

    def record(self, out, it, phase, values, **extra):
        line = {"iter": it, "phase": phase, "epoch": self.epoch(it), "values": values}
        line.update(extra)
        out.write(json.dumps(line) + "\n")
        out.flush()

    def abort_asked(self):
        """SIGTERM (``stop_requested``) or the abort flag file: the flag is how a scheduler that
        cannot signal this process (another host, a restarted server's adopted runner) asks."""
        return self.stop_requested or os.path.exists(os.path.join(self.job_dir, ABORT_FLAG))

    def validate(self, solver):
        nets = getattr(solver, "test_nets", None) or []
        if not nets or self.test_iter < 1:
            return None
        net = nets[0]
        share = getattr(net, "share_with", None)
        if share is not None:
            share(solver.net)  # Caffe's Solver::Test does the same before testing
        sums = {}
        for _ in range(self.test_iter):
            if self.abort_asked():
                return None  # a long validation must not hold up an abort (no partial val row)
            net.forward()
            for name in net.outputs:
                sums[name] = sums.get(name, 0.0) + blob_mean(net.blobs[name])
        return {k: v / self.test_iter for k, v in sums.items()}

    def snapshot(self, solver):
        solver.snapshot()
        states = glob.glob(os.path.join(self.job_dir, "*_iter_*.solverstate"))
        newest = max(states, key=snapshot_iteration) if states else None
        for path in states:
            if path != newest:
                os.unlink(path)  # only the newest solverstate is needed to resume

    def run(self, resume=False, weights=(), gpu=None):
        os.chdir(self.job_dir)
        if self.job_dir not in sys.path:
            sys.path.insert(0, self.job_dir)  # Python layer files live in the job folder
        self.gpu = gpu
        if self.ranks.world > 1:
            gpu = self.ranks.device
            self.ranks.configure(self.caffe)  # before the solver: its Data layers shard by rank
        if gpu is None:
            self.caffe.set_mode_cpu()
        else:
            self.caffe.set_device(int(gpu))
            self.caffe.set_mode_gpu()
        solver = self.caffe.get_solver(RUN_SOLVER)
        if resume:
            state = latest_solverstate(self.job_dir)
            if state is None:
                raise RunnerError("nothing to resume: no .solverstate in %s" % self.job_dir)
            solver.restore(state)
            self.log("resumed from %s at iteration %d" % (os.path.basename(state), solver.iter))
        else:
            for path in weights:
                solver.net.copy_from(path)
                self.log("loaded weights %s" % path)
        nccl = self.ranks.attach(self.caffe, solver)  # every rank starts from rank 0's weights
        if self.ranks.writes:
            truncate_metrics(self.metrics_path, solver.iter)
        first_blob = list(solver.net.blobs.keys())[0] if len(solver.net.blobs) else None
        images_per_iter = ((solver.net.blobs[first_blob].data.shape[0] if first_blob else 1) * self.iter_size
                           * self.ranks.world)

        started, start_iter = time.time(), solver.iter
        self.started = started
        self.status("running", solver.iter)
        self.log("training iterations %d to %d%s" % (solver.iter + 1, self.max_iter,
                 " (%g epoch%s)" % (self.epochs, "" if self.epochs == 1 else "s") if self.epochs else ""))
        status_at = started
        with open(self.metrics_path if self.ranks.writes else os.devnull, "a") as out:
            while solver.iter < self.max_iter:
                stop = self.abort_asked()
                if nccl is not None:
                    stop = nccl.any_rank(stop)  # all ranks stop at the same iteration
                if stop:
                    self.status("aborted", solver.iter, "aborted by the user")
                    self.log("aborted at iteration %d" % solver.iter)
                    return EXIT_ABORTED
                lr = learning_rate(self.fields, solver.iter)
                t0 = time.time()
                solver.step(1)
                it = solver.iter
                values = {name: blob_mean(solver.net.blobs[name]) for name in solver.net.outputs}
                done_per_s = (it - start_iter) / max(time.time() - started, 1e-9)
                eta = (self.max_iter - it) / done_per_s if done_per_s else None
                self.record(out, it, "train", values, lr=lr,
                            throughput=images_per_iter / max(time.time() - t0, 1e-9), eta=eta)
                bad = [k for k, v in values.items() if not math.isfinite(v)]
                if bad:
                    msg = ("%s is %s at iteration %d: training diverged, try a lower learning rate"
                           % (bad[0], values[bad[0]], it))
                    self.status("error", it, msg)
                    self.log(msg)
                    return EXIT_NAN
                last = it >= self.max_iter
                if self.ranks.writes and ((self.test_every and it % self.test_every == 0)
                                          or (last and self.test_every)):
                    val = self.validate(solver)
                    if val is not None:
                        self.record(out, it, "val", val)  # kept: NaN is a gap in the chart
                        self.log("iteration %d val %s" % (it, val))
                        bad = [k for k, v in val.items() if not math.isfinite(v)]
                        if bad:
                            msg = ("validation %s is %s at iteration %d although training is finite: "
                                   "the network diverges on the validation set; try a lower learning "
                                   "rate (or check the validation records)" % (bad[0], val[bad[0]], it))
                            self.status("error", it, msg)
                            self.log(msg)
                            return EXIT_NAN
                marked = False
                if self.ranks.writes and ((self.snapshot_every and it % self.snapshot_every == 0) or last):
                    self.snapshot(solver)
                    self.log("snapshot at iteration %d" % it)
                    marked = True
                # Progress for the pages (iter / max_iter): throttled, and at every snapshot.
                if marked or time.time() - status_at >= STATUS_EVERY_S:
                    self.status("running", it, eta=eta)
                    status_at = time.time()
        self.status("done", solver.iter)
        return EXIT_DONE


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train one caffeseg model job through the pycaffe API.")
    ap.add_argument("job_dir")
    ap.add_argument("--backend", choices=("engine", "pycaffe", "auto"), default="auto")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--weights", default="", help="comma-separated .caffemodel files to load first")
    ap.add_argument("--gpu", type=int, default=None)
    ap.add_argument("--gpus", default="", help="several GPUs for this job, e.g. 0,1 (one process each)")
    ap.add_argument("--cpu-ranks", type=int, default=1, help="this job in N processes on the CPU (gloo)")
    args = ap.parse_args(argv)
    runner = None
    place = ranks_mod.Ranks()
    try:
        place = ranks_mod.from_environment(ranks_mod.parse_gpus(args.gpus), args.cpu_ranks)
        caffe = import_backend(args.backend)
        runner = Runner(args.job_dir, caffe, log=lambda m: print(m, flush=True), ranks=place)
        if place.world > 1 and place.writes:
            place.launch_peers(os.path.abspath(__file__), sys.argv[1:] if argv is None else list(argv))

        def on_term(signum, frame):
            runner.stop_requested = True
            place.signal_peers(signum)
        signal.signal(signal.SIGTERM, on_term)
        weights = [w for w in args.weights.split(",") if w]
        code = runner.run(resume=args.resume, weights=weights, gpu=args.gpu)
        place.finish()
        return code
    except OSError as exc:
        message = os_error_message(exc)
    except (RunnerError, ranks_mod.RanksError) as exc:
        message = str(exc)
    except Exception as exc:  # the backend's own errors: report them, in one line, in the status
        message = "%s: %s" % (type(exc).__name__, exc)
    print("%serror: %s" % ("" if place.writes else "[rank %d] " % place.rank, message), file=sys.stderr, flush=True)
    place.signal_peers(signal.SIGTERM)
    place.finish(timeout=5)
    if not place.writes:
        return EXIT_ERROR
    if runner is not None or os.path.isdir(args.job_dir):
        try:
            write_json_atomic(os.path.join(os.path.abspath(args.job_dir), STATUS),
                              {"state": "error", "message": message, "time": time.time()})
        except OSError as exc:  # the same unwritable folder: the "error:" line above is the record
            print("note: %s could not be written either (%s)" % (STATUS, os_error_message(exc)),
                  file=sys.stderr, flush=True)
    return EXIT_ERROR


def os_error_message(exc):
    """"cannot write snapshot_iter_4.caffemodel: permission denied" rather than an errno dump."""
    import errno
    name = os.path.basename(exc.filename) if getattr(exc, "filename", None) else None
    reason = (exc.strerror or str(exc)).lower() if exc.strerror else str(exc)
    writing = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                            getattr(errno, "EDQUOT", -1))
    if name is None:
        return reason
    if writing:
        return "cannot write %s: %s (the job folder must stay writable while the job trains)" % (name, reason)
    return "%s: %s" % (name, reason)


if __name__ == "__main__":
    sys.exit(main())
