"""What a training runs on and how hard it works: the model page's hardware panel.

* ``system_usage()``: the machine's usable cores, load average and memory (``/proc/meminfo``);
* ``process_usage(pid)``: a runner's resident memory, CPU time and threads, with its child
  processes (the other ranks of a multi-GPU job) added in (``/proc/<pid>/...``; None when the
  process is gone);
* ``gpu_usage(ids)``: per GPU its name, memory used/total and utilisation, through NVML
  (``nvidia-ml-py``); [] where there is no NVML (no driver, no GPU).

Linux ``/proc`` only; every reader returns what it could read and never raises for a process
that ended meanwhile.
"""
import os

from caffeseg.jobs import threads

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _meminfo():
    values = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    values[name] = int(parts[0]) * 1024
    except OSError:
        pass
    return values


def system_usage():
    """{"cores", "load_average" [1, 5, 15 min], "memory_total", "memory_available", "memory_used_fraction"}."""
    info = _meminfo()
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"cores": threads.usable_cores(), "load_average": load, "memory_total": total,
            "memory_available": available,
            "memory_used_fraction": (1.0 - float(available) / total) if total and available is not None else None}


def _stat(pid):
    """(ppid, utime+stime ticks, threads, start ticks) from /proc/<pid>/stat, or None."""
    try:
        with open("/proc/%d/stat" % int(pid)) as f:
            text = f.read()
    except (OSError, ValueError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state is fields[0]
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[17]), int(fields[19])


def _rss(pid):
    try:
        with open("/proc/%d/statm" % int(pid)) as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _children(pid):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat and stat[0] == int(pid):
                found.append(int(name))
    return found


def _uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def process_usage(pid):
    """{"pid", "processes", "rss_bytes", "cpu_seconds", "threads", "cpu_percent"} of a runner and
    its child processes (cpu_percent: CPU time over wall time since it started, 100 = one core),
    or None when ``pid`` is not running."""
    if not pid:
        return None
    own = _stat(pid)
    if own is None:
        return None
    pids = [int(pid)] + _children(pid)
    ticks = threads_total = rss = 0
    for p in pids:
        stat = _stat(p)
        if stat is None:
            continue
        ticks += stat[1]
        threads_total += stat[2]
        rss += _rss(p) or 0
    try:
        alive_s = _uptime() - own[3] / float(_CLOCK_TICKS)
    except (OSError, ValueError):
        alive_s = None
    cpu_s = ticks / float(_CLOCK_TICKS)
    return {"pid": int(pid), "processes": len(pids), "rss_bytes": rss, "cpu_seconds": cpu_s,
            "threads": threads_total,
            "cpu_percent": 100.0 * cpu_s / alive_s if alive_s and alive_s > 0 else None}


def gpu_usage(ids):
    """[{"index", "name", "memory_used", "memory_total", "utilization_percent"}] for the GPU
    indices ``ids`` NVML knows; [] without NVML."""
    if not ids:
        return []
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError: no driver
        return []
    rows = []
    try:
        count = pynvml.nvmlDeviceGetCount()
        for index in ids:
            if not 0 <= int(index) < count:
                continue
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(index))
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
            rows.append({"index": int(index), "name": name.decode() if isinstance(name, bytes) else name,
                         "memory_used": int(memory.used), "memory_total": int(memory.total),
                         "utilization_percent": int(rates.gpu)})
    finally:
        pynvml.nvmlShutdown()
    return rows
