"""Running real BVLC Caffe from the tests: in a subprocess, with the interpreter and path that
jobs.real_caffe finds (the `make caffe` build), never in the pytest process (there ``caffe`` is
the engine).

Tests call ``real_caffe()`` first: it skips them, saying how to build Caffe, when none is found,
unless CAFFESEG_REQUIRE_REAL_CAFFE=1 (CI after `make caffe`), where a missing Caffe fails.
"""
import json
import os
import subprocess

import pytest

from caffeseg.jobs import real_caffe as rc

TASKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "real_caffe", "pycaffe_tasks.py")
_FOUND = {}


def real_caffe():
    """The located, importable real Caffe (jobs.real_caffe.RealCaffe) or a skip/fail saying why."""
    if "found" not in _FOUND:
        problem = None
        try:
            found = rc.find_real_caffe()
        except rc.RealCaffeError as exc:
            found, problem = None, str(exc)
        if found is not None and problem is None:
            try:
                _FOUND["info"] = rc.probe(found)
            except (rc.RealCaffeError, OSError, subprocess.TimeoutExpired) as exc:
                found, problem = None, str(exc)
        _FOUND["found"], _FOUND["problem"] = found, problem or ("real BVLC Caffe is not built: " + rc.BUILD_HINT)
    if _FOUND["found"] is None:
        if os.environ.get("CAFFESEG_REQUIRE_REAL_CAFFE") == "1":
            pytest.fail("CAFFESEG_REQUIRE_REAL_CAFFE=1 but: " + _FOUND["problem"])
        pytest.skip(_FOUND["problem"])
    return _FOUND["found"]


def real_env(**extra):
    env = real_caffe().environment()
    env.setdefault("GLOG_minloglevel", "2")  # Caffe's INFO lines would bury the errors
    env.update(extra)
    return env


def run_python(args, cwd=None, timeout=600, **env):
    """Run ``args`` (a script and its arguments) with real Caffe's interpreter; the completed
    process, or an AssertionError carrying its output."""
    found = real_caffe()
    proc = subprocess.run([found.python or "python3"] + list(args), cwd=cwd, env=real_env(**env),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, "real Caffe run %s failed (exit %s):\n%s\n%s" % (
        args[:2], proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def run_task(*args, cwd=None, timeout=600, **env):
    """``tests/real_caffe/pycaffe_tasks.py ARGS`` under real Caffe; its last stdout line parsed
    as JSON when there is one, else None."""
    proc = run_python([TASKS] + [str(a) for a in args], cwd=cwd, timeout=timeout, **env)
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None
