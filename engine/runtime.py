"""pycaffe's process-wide helpers that are not about devices: logging, the multi-solver
counters, ``Timer`` and NCCL.

* ``init_log()``, ``init_log(level)``, ``init_log(level, stderr)``: glog's minimum level
  (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL) applied to the engine's ``logging`` loggers; with
  ``stderr`` (or no handler configured) the records go to standard error. ``log(text)`` writes
  an INFO record.
* ``solver_count``/``solver_rank``/``set_multiprocess``: the counters Caffe's multi-GPU
  training reads. The engine trains on one device, so they are plain values kept for scripts
  that set and read them.
* ``has_nccl()`` is False: the engine is built without NCCL; ``NCCL(solver, uid)`` can be
  constructed (as in a Caffe built without NCCL) but has no ``new_uid``/``bcast``.
"""
from __future__ import annotations

import logging
import sys
import time

_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}
_LOGGER = logging.getLogger("engine")
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
    return False


class NCCL:
    """``caffe.NCCL(solver, uid)`` of a Caffe built without NCCL: constructible, no methods."""

    def __init__(self, solver, uid):
        self.solver = solver
        self.uid = uid


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
