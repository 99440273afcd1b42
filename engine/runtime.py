"""pycaffe's process-wide helpers that are not about devices: logging, the multi-solver
counters, ``Timer`` and NCCL.

* ``init_log()``, ``init_log(level)``, ``init_log(level, stderr)``: glog's minimum level
  (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL) applied to the engine's ``logging`` loggers; with
  ``stderr`` (or no handler configured) the records go to standard error. ``log(text)`` writes
  an INFO record.
* ``solver_count``/``solver_rank``/``set_multiprocess``: the counters Caffe's multi-GPU
  training reads: set them before ``get_solver`` (the solver builds test nets on rank 0 only,
  Data layers shard their records by rank).
* ``has_nccl()`` is True where ``torch.distributed`` exists: ``NCCL(solver, uid)``,
  ``NCCL.new_uid()``, ``bcast()`` and ``solver.add_callback(nccl)`` train one net on several
  processes (NCCL between GPUs, gloo on the CPU) with Caffe's semantics; see ``engine.parallel``.
"""
from __future__ import annotations

import logging
import sys
import time

_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}
_LOGGER = logging.getLogger("caffeseg.engine")
_stderr_handler: logging.Handler | None = None

_solver_count = 1
_solver_rank = 0
_multiprocess = False


def init_log(level: int = 0, stderr: bool = False) -> None:
    """Start logging at glog level ``level`` (default 0, INFO)."""
    global _stderr_handler
    level = int(level)
    if level not in _GLOG_LEVELS:
        raise ValueError(f"init_log level must be 0 (INFO), 1 (WARNING), 2 (ERROR) or 3 (FATAL), got {level}")
    _LOGGER.setLevel(_GLOG_LEVELS[level])
    if (stderr or not logging.getLogger().handlers) and _stderr_handler is None:
        _stderr_handler = logging.StreamHandler(sys.stderr)
        _stderr_handler.setFormatter(logging.Formatter("%(levelname).1s%(asctime)s %(name)s] %(message)s"))
        _LOGGER.addHandler(_stderr_handler)


def log(text: str) -> None:
    """``LOG(INFO) << text``."""
    _LOGGER.info("%s", text)


def solver_count() -> int:
    return _solver_count


def set_solver_count(count: int) -> None:
    global _solver_count
    count = int(count)
    if count < 1:
        raise ValueError(f"solver count must be at least 1, got {count}")
    _solver_count = count


def solver_rank() -> int:
    return _solver_rank


def set_solver_rank(rank: int) -> None:
    global _solver_rank
    rank = int(rank)
    if rank < 0:
        raise ValueError(f"solver rank must be non-negative, got {rank}")
    _solver_rank = rank


def multiprocess() -> bool:
    return _multiprocess


def set_multiprocess(value: bool) -> None:
    global _multiprocess
    _multiprocess = bool(value)


def has_nccl() -> bool:
    from caffeseg.engine import parallel
    return parallel.available()


class NCCL:
    """``caffe.NCCL(solver, uid)``: the gradient exchange of one rank (``engine.parallel.GradientSync``,
    made on first use, so constructing it joins nothing). ``uid`` is rank 0's ``new_uid()``, or
    empty to rendezvous through ``MASTER_ADDR``/``MASTER_PORT`` as torchrun sets them."""

    def __init__(self, solver, uid):
        self.solver = solver
        self.uid = uid
        self._sync = None

    @staticmethod
    def new_uid() -> bytes:
        from caffeseg.engine import parallel
        return parallel.new_uid()

    def _impl(self):
        if self._sync is None:
            from caffeseg.engine import parallel
            self._sync = parallel.GradientSync(self.solver, self.uid)
        return self._sync

    def bcast(self) -> None:
        self._impl().bcast()

    def on_start(self) -> None:
        self._impl().on_start()

    def on_gradients_ready(self) -> None:
        self._impl().on_gradients_ready()

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (the engine's addition: a common stop)."""
        return self._impl().any_rank(flag)


class Timer:
    """Wall-clock timer: ``start()``, ``stop()``, ``ms`` (milliseconds between them; while
    running, up to now)."""

    def __init__(self):
        self._start: float | None = None
        self._stop: float | None = None

    def start(self) -> None:
        self._start, self._stop = time.perf_counter(), None

    def stop(self) -> None:
        if self._start is not None and self._stop is None:
            self._stop = time.perf_counter()

    @property
    def ms(self) -> float:
        if self._start is None:
            return 0.0
        end = self._stop if self._stop is not None else time.perf_counter()
        return (end - self._start) * 1000.0

    @property
    def seconds(self) -> float:
        return self.ms / 1000.0
