"""python_layers must run under Python 3.9 with numpy only (users drop it next to real pycaffe),
and so must the job worker of the pycaffe image (``python3 -m caffeseg.jobs.worker`` and what it imports).

Two checks: vermin's static minimum-version analysis, and a real import + Dice forward under a
Python 3.9 interpreter with a stub `caffe` module. The 3.9 venv is cached in the temp dir.
"""
import ast
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY39 = "/root/.pyenv/versions/3.9.18/bin/python3.9"
VENV_DIR = os.path.join(tempfile.gettempdir(), "caffeseg-py39-numpy-venv")


def _worker_modules():
    """The in-repo modules ``python3 -m caffeseg.jobs.worker`` imports (the pycaffe image runs it under
    Python 3.9), followed statically from jobs/worker.py; the engine is not in that image (the
    runner imports it only for the engine backend)."""
    todo, seen = [os.path.join("jobs", "worker.py")], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        with open(os.path.join(ROOT, path)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + ["%s.%s" % (node.module, a.name) for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[:2] != ["caffeseg", "jobs"]:
                    continue
                module = os.path.join(*parts[1:]) + ".py"  # caffeseg.jobs.x is jobs/x.py
                if os.path.isfile(os.path.join(ROOT, module)):
                    todo.append(module)
    return sorted(seen)


def _vermin_targets():
    return [os.path.join(ROOT, "python_layers"), os.path.join(ROOT, "caffeseg", "__init__.py")] + \
        [os.path.join(ROOT, m) for m in _worker_modules()]


def test_the_worker_closure_is_followed():
    modules = _worker_modules()
    assert {os.path.join("jobs", n) for n in ("worker.py", "scheduler.py", "runner.py", "store.py",
                                                "resources.py")} <= set(modules), modules


def test_vermin_reports_no_violations_for_3_9():
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    command = [vermin, "-t=3.9-", "--no-tips", "--violations", "--eval-annotations"] + _vermin_targets()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, "vermin found code needing Python > 3.9:\n" + result.stdout + result.stderr


def _py39_with_numpy():
    if not os.path.exists(PY39):
        pytest.skip("Python 3.9 interpreter not found at %s" % PY39)
    python = os.path.join(VENV_DIR, "bin", "python")
    ready = os.path.join(VENV_DIR, ".numpy-installed")
    if not os.path.exists(ready):
        subprocess.run([PY39, "-m", "venv", "--clear", VENV_DIR], check=True, timeout=300)
        install = subprocess.run([python, "-m", "pip", "install", "-q", "numpy"],
                                 capture_output=True, text=True, timeout=600)
        if install.returncode != 0:
            pytest.skip("could not install numpy into a Python 3.9 venv (offline?): "
                        + install.stderr.strip()[-300:])
        open(ready, "w").close()
    return python


CHECK_SCRIPT = r'''
import sys, types
import numpy as np
stub = types.ModuleType("caffe")
class Layer(object):
    pass
stub.Layer = Layer
sys.modules["caffe"] = stub
sys.path.insert(0, sys.argv[1])
import digits_python_layers as dpl

class Blob(object):
    def __init__(self, a=None):
        self.data = np.zeros(0, np.float32) if a is None else np.asarray(a, np.float32)
        self.diff = np.zeros_like(self.data)
    def reshape(self, *shape):
        self.data = np.zeros(shape, np.float32)
        self.diff = np.zeros(shape, np.float32)

pred = np.array([[[1, 1, 0], [0, 0, 0]]])
label = np.array([[[[1, 0, 0], [0, 0, 1]]]], np.float32)
score = np.stack([(pred == 0) * 1.0, (pred == 1) * 1.0], axis=1)
for cls in (dpl.Dice, dpl.DiceLoss, dpl.SegmentationMetrics):
    layer = cls.__new__(cls)
    layer.param_str = ""
    bottom, top = [Blob(score), Blob(label)], [Blob()]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    print(cls.__name__, float(top[0].data[0]))
print(sys.version_info[:2])
'''


def test_python_layers_run_under_python_3_9(tmp_path):
    python = _py39_with_numpy()
    script = tmp_path / "check.py"
    script.write_text(CHECK_SCRIPT)
    result = subprocess.run([python, str(script), os.path.join(ROOT, "python_layers")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Dice 0.5"  # |P|=2, |L|=2, |P∩L|=1
    assert lines[-1] == "(3, 9)"


def test_the_worker_starts_under_python_3_9():
    """``python3 -m caffeseg.jobs.worker`` imports under 3.9 with the standard library only (-S:
    no site-packages), from a checkout's root as the image starts it from its WORKDIR."""
    if not os.path.exists(PY39):
        pytest.skip("Python 3.9 interpreter not found at %s" % PY39)
    result = subprocess.run([PY39, "-S", "-m", "caffeseg.jobs.worker", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--backend" in result.stdout
