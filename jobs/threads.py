"""How many CPU threads each caffeseg process computes with, and how its idle threads wait.

Three roles share one machine: ``training`` (a runner process, one per training), ``inference``
(the web server's or the CLI's deploy-net passes, inside that process) and ``dataset`` (a
dataset build, a thread of the worker). Left alone, every one of them starts a torch/OpenMP
pool as wide as the machine, and OpenMP's default wait policy lets an idle pool thread spin at
each barrier for a while (libgomp: ~300 000 spins; Intel's: 200 ms) before it sleeps. On two cores a training with two threads
and a web answer with two more then fight for cores that the spinning threads hold; the
training's step time collapses (issue 20: 1.0 s with one thread, 1.9-4.6 s with two under load).

The policy (``plan``), from the usable cores C and the training slots T:

* every role waits passively (``OMP_WAIT_POLICY=PASSIVE``, Intel's ``KMP_BLOCKTIME=0``, and
  OpenBLAS' ``OPENBLAS_THREAD_TIMEOUT=4``): an idle thread sleeps at once and hands its core to
  whoever needs it. OpenBLAS' own pthread pool (numpy's, which the engine's fc6/fc7 GEMMs use,
  and real Caffe's) otherwise keeps each idle worker polling with ``sched_yield`` for 2^28 CPU
  cycles (about 0.1 s) after every call, so between two GEMMs it sat on the core that torch's
  threads were computing on; 4 is OpenBLAS' minimum, 2^4 cycles. FCN-AlexNet with 2 threads on 2
  cores: 0.89-0.90× the forward+backward time, 16-20 % less CPU time (bench/RESULTS.md);
* inference gets ``max(1, C // 4)`` threads (1 on a 2-4 core machine): a single record is small,
  and the web must not take the training's cores;
* a dataset build gets 1 thread (its work is DICOM decoding and LMDB writes, one record at a time)
  and runs at a lower priority (``DATASET_NICENESS``): it is batch work that can wait a moment,
  while the training and the web's answers cannot, and on a machine with fewer cores than the
  three roles' threads the build would otherwise take an equal share from each;
* each training gets ``max(1, (C - R) // T)`` threads, R being the inference threads reserved for the
  web (R = 0 when ``reserve_inference`` is false, e.g. a worker with no web server beside it).

The threads are given to a runner through its environment (``runner_environment``), because
OpenMP reads ``OMP_NUM_THREADS``/``OMP_WAIT_POLICY`` once, when torch (or OpenBLAS under real
Caffe) is loaded. A process that computes itself (the web server) calls
``apply_to_this_process`` before it first imports torch. The measured effect is in
``bench/thread_policy.py`` and ``bench/RESULTS.md``.

Python 3.9 and the standard library only (the scheduler imports it beside the runner).
"""
import os
import sys

ROLES = ("training", "inference", "dataset")
# Every BLAS/OpenMP runtime the backends load: torch's OpenMP and MKL, real Caffe's OpenBLAS.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0", "OPENBLAS_THREAD_TIMEOUT": "4"}
OVERRIDE_ENV = "CAFFESEG_THREADS"  # "training=2,inference=1": the operator's own counts win


DATASET_NICENESS = 10  # added to a dataset build thread's niceness (Linux: per thread)


def lower_this_threads_priority(by=DATASET_NICENESS):
    """Lower the priority of the calling thread by ``by`` niceness steps, and of the threads and
    processes it starts afterwards (Linux keeps a niceness per thread, and a new thread or a
    forked process inherits its creator's). Returns the thread's new niceness, or None where the
    system has no per-thread niceness (then nothing changes: the rest of the process keeps its
    priority). Niceness only matters when the cores are contended: a build alone runs at full
    speed."""
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return None
    import threading
    tid = threading.get_native_id()
    niceness = os.getpriority(os.PRIO_PROCESS, tid) + int(by)
    os.setpriority(os.PRIO_PROCESS, tid, min(niceness, 19))
    return os.getpriority(os.PRIO_PROCESS, tid)


class ThreadPlan(object):
    """``threads`` for one process of ``role``; ``environment()`` gives the variables a child
    process needs to start its pools that way."""

    def __init__(self, role, threads, cores):
        self.role = role
        self.threads = int(threads)
        self.cores = int(cores)

    def environment(self):
        env = dict((name, str(self.threads)) for name in THREAD_VARIABLES)
        env.update(PASSIVE_WAIT)
        return env

    def as_dict(self):
        return {"role": self.role, "threads": self.threads, "cores": self.cores,
                "environment": self.environment()}

    def __repr__(self):
        return "ThreadPlan(%r, threads=%d, cores=%d)" % (self.role, self.threads, self.cores)


def usable_cores():
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset), not the
    machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_override(text):
    """``CAFFESEG_THREADS`` ("training=2,inference=1,dataset=1") → {role: threads}; ValueError
    naming the bad part."""
    counts = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        role, sep, value = part.partition("=")
        role = role.strip()
        if not sep or role not in ROLES:
            raise ValueError("%s: '%s' is not ROLE=THREADS with ROLE one of %s"
                             % (OVERRIDE_ENV, part, ", ".join(ROLES)))
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError("%s: '%s' needs a whole number of threads >= 1" % (OVERRIDE_ENV, part))
        counts[role] = threads
    return counts


def inference_threads(cores):
    return max(1, cores // 4)


def plan(role, cores=None, trainings=1, reserve_inference=True, env=None):
    """The ``ThreadPlan`` of one ``role`` process on ``cores`` usable cores (default: this
    process's) with ``trainings`` training slots; ``CAFFESEG_THREADS`` in ``env`` (default
    os.environ) overrides the count of the roles it names."""
    if role not in ROLES:
        raise ValueError("thread role must be one of %s, got %r" % (", ".join(ROLES), role))
    cores = usable_cores() if cores is None else max(1, int(cores))
    trainings = max(1, int(trainings))
    override = parse_override((os.environ if env is None else env).get(OVERRIDE_ENV))
    if role in override:
        return ThreadPlan(role, override[role], cores)
    if role == "inference":
        threads = inference_threads(cores)
    elif role == "dataset":
        threads = 1
    else:
        reserved = inference_threads(cores) if reserve_inference else 0
        threads = max(1, (cores - reserved) // trainings)
    return ThreadPlan(role, threads, cores)


def inference_threads_now(others_computing, cores=None, env=None):
    """Threads for one inference pass started now: the inference plan's share while a training or
    a dataset build computes on this machine (``others_computing``), else every usable core; a
    share would leave the others idle (FCN-AlexNet's single-record forward on 2 cores: 0.21-0.24 s
    with both against 0.27-0.28 s with one). ``CAFFESEG_THREADS``' inference count always wins."""
    cores = usable_cores() if cores is None else max(1, int(cores))
    override = parse_override((os.environ if env is None else env).get(OVERRIDE_ENV))
    if "inference" in override or others_computing:
        return plan("inference", cores=cores, env=env).threads
    return cores


def runner_environment(env, trainings=1, reserve_inference=True, cores=None):
    """``env`` (a dict, changed and returned) with the training plan's variables: what the
    scheduler hands each runner process."""
    env.update(plan("training", cores=cores, trainings=trainings, reserve_inference=reserve_inference,
                    env=env).environment())
    return env


def apply_to_this_process(role, cores=None, trainings=1):
    """Set this process's own threads for ``role``: the OpenMP variables (effective only when
    torch is not loaded yet: call it first thing) and, when torch is loaded, its pool size.
    Returns the plan and whether the wait policy could still take effect."""
    chosen = plan(role, cores=cores, trainings=trainings)
    torch_loaded = "torch" in sys.modules
    os.environ.update(chosen.environment())
    if torch_loaded:
        sys.modules["torch"].set_num_threads(chosen.threads)
    return chosen, not torch_loaded
