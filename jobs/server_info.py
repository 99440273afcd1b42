"""What this installation is and runs on: ``caffeseg info`` / ``--version`` and the web's Info menu.

``server_info(service=None, check_caffe=True)`` → {"server" (host name), "caffeseg" (package
version or None in a plain checkout), "python", "python_executable", "torch", "cuda",
"engine" (its folder), "engine_version" (the pycaffe ``__version__`` it answers), "real_caffe"
(``jobs.real_caffe.caffe_info``), "plugins", "broken_plugins", "cpu" {"model", "cores",
"usable_cores"}, "memory_total", "gpus" (NVML rows: index, name, memory, utilisation) and, with a
``service``, "gpu_jobs" (``JobService.gpu_summary``: total, free, jobs per GPU)}.
``server_info_text(info)`` is the same for a person, one fact per line.
"""
import importlib.metadata
import os
import platform
import socket
import sys


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _nvml_gpus():
    """Every GPU NVML lists (jobs.hardware.gpu_usage over all indices); [] without NVML."""
    from caffeseg.jobs import hardware
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no pynvml, no driver: no GPU to report
        return []
    return hardware.gpu_usage(list(range(count)))


def server_info(service=None, check_caffe=True):
    """The facts above; ``check_caffe``: the real Caffe's interpreter imports it once (about a
    second), else only where it is is reported."""
    from caffeseg import engine
    import torch
    from caffeseg.jobs import hardware, real_caffe
    from caffeseg.plugin.base import discover_plugins
    try:
        version = importlib.metadata.version("caffeseg")
    except importlib.metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, never pip-installed
        version = None
    plugins = discover_plugins()
    system = hardware.system_usage()
    info = {"server": socket.gethostname(), "caffeseg": version, "python": platform.python_version(),
            "python_executable": sys.executable, "torch": torch.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "engine": os.path.dirname(os.path.abspath(engine.__file__)),
            "engine_version": getattr(engine, "__version__", None),
            "real_caffe": real_caffe.caffe_info(check_import=check_caffe),
            "plugins": sorted(plugins.plugins),
            "broken_plugins": [{"name": b.name, "source": b.source, "error": b.error} for b in plugins.broken],
            "cpu": {"model": _cpu_model(), "cores": os.cpu_count(), "usable_cores": system["cores"]},
            "memory_total": system["memory_total"], "gpus": _nvml_gpus()}
    if service is not None:
        info["gpu_jobs"] = service.gpu_summary()
    return info


def _bytes(n):
    return "-" if n is None else "%.1f GiB" % (n / float(1 << 30))


def server_info_text(info):
    from caffeseg.jobs import real_caffe
    cpu = info.get("cpu") or {}
    lines = ["caffeseg %s on %s" % (info["caffeseg"] or "(not installed: no package metadata)", info["server"]),
             "Python %s (%s)" % (info["python"], info["python_executable"]),
             "torch %s (%s)" % (info["torch"], "CUDA %s" % info["cuda"] if info["cuda"] else "CPU only"),
             "engine backend: %s (pycaffe %s)" % (info["engine"], info.get("engine_version") or "?"),
             real_caffe.describe(info["real_caffe"]),
             "data plugins: %s" % (", ".join(info["plugins"]) or "none"),
             "CPU: %s, %s cores (%s usable), memory %s" % (cpu.get("model") or "unknown", cpu.get("cores"),
                                                           cpu.get("usable_cores"), _bytes(info.get("memory_total")))]
    gpus = info.get("gpus") or []
    lines.append("GPUs: " + ("; ".join("%d %s (%s)" % (g["index"], g["name"], _bytes(g["memory_total"]))
                                       for g in gpus) if gpus else "none found (NVML)"))
    if info.get("gpu_jobs") and info["gpu_jobs"]["total"]:
        lines.append("GPUs free for jobs: %s" % (", ".join(map(str, info["gpu_jobs"]["free"])) or "none"))
    lines += ["broken data plugin %s (%s): %s" % (b["name"], b["source"], b["error"]) for b in info["broken_plugins"]]
    return "\n".join(lines)
