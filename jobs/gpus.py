"""Which GPUs a model job trains on, as DIGITS offers it: the next available one(s), given ones, or
none (the CPU).

A job's options may hold

* ``gpu_count``: N >= 1 → the N lowest-numbered free GPUs when it starts (DIGITS' "use this many
  GPUs, next available"); 0 → the CPU;
* ``gpus``: a list (or "0,2") of GPU indices → exactly those (DIGITS' "select GPUs");
* ``share_gpus``: true → it may share its GPUs with other jobs that allow sharing too.

Neither given: one GPU (next available) where the scheduler has GPUs, else the CPU. A GPU
serves one job at a time: a GPU is free for a job when no running job holds it, or when it and
every job holding it allow sharing. Several GPUs train the job with one process each
(``jobs/ranks.py``), on the engine backend only; the real-pycaffe backend takes one GPU.

``detect()`` lists the machine's GPUs through NVML (``nvidia-ml-py``); none without a driver.

Python 3.9 and the standard library (+ the optional ``pynvml`` module) only.
"""
import collections


class GpuRequestError(ValueError):
    """A job's GPU options cannot be met; ``field`` names the option at fault."""

    def __init__(self, message, field):
        ValueError.__init__(self, message)
        self.field = field


GpuRequest = collections.namedtuple("GpuRequest", "count ids share")
GpuRequest.__doc__ = """``count`` GPUs (next available) or exactly ``ids``; both None/0 → CPU."""


def _as_bool(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def parse_ids(value, field="gpus"):
    """A GPU list option ([0, 2], "0,2", 1) → sorted unique ints; GpuRequestError naming the entry."""
    if value is None or value == "" or value == []:
        return []
    parts = value.split(",") if isinstance(value, str) else (value if isinstance(value, (list, tuple)) else [value])
    ids = []
    for part in parts:
        text = str(part).strip()
        if not text.isdigit():
            raise GpuRequestError("%s: '%s' is not a GPU index (a whole number >= 0)" % (field, part), field)
        if int(text) in ids:
            raise GpuRequestError("%s: GPU %s is listed twice" % (field, text), field)
        ids.append(int(text))
    return sorted(ids)


def request_from_options(options):
    """The ``GpuRequest`` of a job's options (see the module docstring)."""
    options = options or {}
    ids = parse_ids(options.get("gpus"))
    count = options.get("gpu_count")
    if count not in (None, ""):
        try:
            count = int(count)
        except (TypeError, ValueError):
            raise GpuRequestError("gpu_count: %r is not a whole number" % (count,), "gpu_count")
        if count < 0:
            raise GpuRequestError("gpu_count must be 0 (CPU) or more, got %d" % count, "gpu_count")
        if ids:
            raise GpuRequestError("give either gpus (these GPUs) or gpu_count (next available), not both", "gpus")
    else:
        count = None
    return GpuRequest(count, ids or None, _as_bool(options.get("share_gpus")))


def check_request(request, available, backend=None):
    """Errors that no wait can fix, for the form: GPUs this machine does not have, more than it
    has, several GPUs on the real-pycaffe backend. Raises GpuRequestError."""
    available = list(available)
    if request.ids:
        missing = [g for g in request.ids if g not in available]
        if missing:
            raise GpuRequestError("gpus: GPU %s is not one of this machine's (%s)" % (
                ",".join(map(str, missing)), ",".join(map(str, available)) or "none"), "gpus")
    if request.count and request.count > len(available):
        raise GpuRequestError("gpu_count: %d GPUs asked for, this machine has %d" % (request.count, len(available)),
                              "gpu_count")
    wanted = len(request.ids) if request.ids else (request.count or 0)
    if backend == "pycaffe" and wanted > 1:
        raise GpuRequestError("the real-pycaffe backend trains a job on one GPU; choose one GPU or the "
                              "engine backend for several", "gpus" if request.ids else "gpu_count")


def assign(request, available, holders):
    """The GPUs the job gets now: a sorted list ([] = the CPU), or None when it must wait.

    ``available``: the scheduler's GPU indices; ``holders``: {gpu: [share flag of each running job
    on it]}. Raises GpuRequestError when the request can never be met here."""
    available = sorted(available)
    if request.count == 0 or (not available and request.count is None and not request.ids):
        return []
    check_request(request, available)

    def usable(gpu):
        on_it = holders.get(gpu) or []
        return not on_it or (request.share and all(on_it))

    if request.ids:
        return list(request.ids) if all(usable(g) for g in request.ids) else None
    free = [g for g in available if usable(g)]
    count = request.count or 1
    return free[:count] if len(free) >= count else None


def detect():
    """The GPU indices NVML reports on this machine ([] without nvidia-ml-py or a driver)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError: no driver / no device
        return []
    try:
        return list(range(pynvml.nvmlDeviceGetCount()))
    finally:
        pynvml.nvmlShutdown()


def devices_of(options):
    """How many devices (ranks) a job's options ask for: len(gpus), gpu_count, else 1. A job on
    N devices reads N batches per iteration, so its derivation divides an epoch by N."""
    request = request_from_options(options)
    return len(request.ids) if request.ids else max(1, request.count or 1)
