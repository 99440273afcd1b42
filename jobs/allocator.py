"""How a runner's C allocator treats freed memory: kept for reuse, not handed back each step.

The engine allocates every top, diff and scratch tensor of a step afresh, where Caffe allocates
its blobs once. glibc serves a block of 32 MiB or more (and smaller ones until its adaptive
threshold has grown) from a fresh ``mmap`` and unmaps it on ``free``, so each step faults all
those pages in again, zero-filled, 4 KiB at a time: FCN-8s at 256² touches about 1 GB of new
pages per training step (~210 000 minor faults), FCN-AlexNet at batch 4 about 40 MB
(bench/memory_reuse.py). Under ``RETAIN_FREED_MEMORY`` glibc takes every block from the heap and
never trims it, so a step mostly reuses the pages the previous step freed (FCN-8s: ~10 000
faults per step instead of ~190 000), and its resident size is its peak, which each step reaches anyway.

glibc reads these variables once, when a process starts, so they travel in the runner's
environment (``runner_environment``) like the thread variables (``jobs.threads``). Other C
libraries ignore them. Variables the operator has set (any ``MALLOC_*_`` or glibc's
``GLIBC_TUNABLES``) are left as they are. Long-lived processes with an uneven load, such as the
web server, keep glibc's default, which returns memory after a burst.

Python 3.9 and the standard library only (the scheduler imports it beside the runner).
"""

#: no mmap for large blocks (``M_MMAP_MAX`` 0) and no trimming of the heap's top (64 GiB)
RETAIN_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}


def operator_has_chosen(env):
    """Whether ``env`` already sets glibc's allocator (then caffeseg adds nothing)."""
    return any(k.startswith("MALLOC_") and k.endswith("_") for k in env) or "glibc.malloc" in env.get(
        "GLIBC_TUNABLES", "")


def runner_environment(env):
    """``env`` (a dict, changed and returned) with ``RETAIN_FREED_MEMORY`` unless the operator
    chose otherwise: what the scheduler hands each runner process."""
    if not operator_has_chosen(env):
        env.update(RETAIN_FREED_MEMORY)
    return env
