"""Where the real BVLC Caffe for the ``pycaffe`` backend is, and how to launch a runner on it.

Real pycaffe is a compiled module tied to one interpreter (Boost.Python and numpy's C API are
built for it), so a runner for a ``pycaffe`` job may need another Python than the app's and a
PYTHONPATH. ``find_real_caffe()`` looks, in this order, for:

1. ``CAFFESEG_CAFFE_ROOT``: a user's own build, a folder holding ``python/caffe/`` (an install
   or a source tree after ``make pycaffe``) or ``caffe/`` itself; the interpreter is
   ``CAFFESEG_CAFFE_PYTHON``, else the one recorded by ``make caffe`` in that folder, else the
   runner's usual one;
2. a ``caffe`` the runner's usual interpreter already finds, one not the engine: a folder of the
   environment's PYTHONPATH holding ``caffe/``, or a module this interpreter imports (the pycaffe
   Docker image's Debian ``python3-caffe``);
3. the build of ``make caffe`` (``docker/build_caffe.sh``) in the cache,
   ``$CAFFESEG_CACHE`` or ``${XDG_CACHE_HOME:-~/.cache}/caffeseg``, ``caffe-<commit>-py<XY>/``,
   taken only when its completed-build stamp is there, with the interpreter it was built for.

Only runners of ``pycaffe`` jobs are launched this way; ``auto`` keeps meaning "real pycaffe if the
runner's interpreter imports it, else the engine", so building Caffe does not move the default
app's jobs off the engine.

``runner_launch(python, env)`` gives the interpreter and environment for a pycaffe runner;
``caffe_info()`` is what ``caffeseg --version`` and the web's info show. Standard library only,
Python 3.9 (the stand-alone worker imports it in the pycaffe image).
"""
import glob
import importlib.util
import json
import os
import subprocess
import sys

from caffeseg.jobs import resources

CAFFE_COMMIT = "9b891540183ddc834a02b2bd81b31afae71b2153"  # BVLC master's last commit; what CI tests
ROOT_ENV = "CAFFESEG_CAFFE_ROOT"
PYTHON_ENV = "CAFFESEG_CAFFE_PYTHON"
CACHE_ENV = "CAFFESEG_CACHE"
STAMP_NAME = ".caffeseg-build-complete"  # written last by docker/build_caffe.sh
# docker/build_caffe.sh's RECIPE (its fixes, CMake flags, kept files): a build stamped with another
# one is out of date. The script keeps its own copy, as it is copied alone into the pycaffe-bvlc
# image before jobs/; tests/test_real_caffe_locate.py checks the two agree.
CAFFE_BUILD_RECIPE = "2"
BUILD_HINT = "run `make caffe` (builds BVLC Caffe into %s), or set %s to your own build" % (
    "~/.cache/caffeseg", ROOT_ENV)


class RealCaffeError(ValueError):
    """Real Caffe was asked for and cannot be used (the message says what to do)."""


class RealCaffe(object):
    """A located real Caffe: ``python`` runs it with ``pythonpath`` (a folder to prepend, or None
    when the interpreter imports it as is); ``source`` says how it was found; ``build`` is the
    stamp of a ``make caffe`` build ({} otherwise)."""

    def __init__(self, python, pythonpath, source, build=None):
        self.python = python
        self.pythonpath = pythonpath
        self.source = source
        self.build = dict(build or {})
        # `make caffe` builds with CPU_ONLY; of other builds we do not know
        self.cpu_only = True if self.build.get("commit") else None

    def environment(self, env=None):
        """``env`` (default os.environ) with this Caffe, then the project, first on PYTHONPATH.

        This Caffe comes first: in a wheel install the project's import root is site-packages,
        which also holds the ``caffe`` proxy that stands for the engine; were it first, the
        runner of a pycaffe job would import the engine."""
        env = dict(os.environ if env is None else env)
        parts = ([self.pythonpath] if self.pythonpath else []) + [resources.import_root()]
        parts += [p for p in (env.get("PYTHONPATH") or "").split(os.pathsep) if p and p not in parts]
        env["PYTHONPATH"] = os.pathsep.join(parts)
        return env

    def as_dict(self):
        info = {"found": True, "python": self.python or sys.executable, "pythonpath": self.pythonpath,
                "source": self.source, "cpu_only": self.cpu_only}
        for key in ("commit", "python_version", "numpy_version", "built", "build_seconds"):
            if key in self.build:
                info[key] = self.build[key]
        return info

    def __repr__(self):
        return "RealCaffe(python=%r, pythonpath=%r, source=%r)" % (self.python, self.pythonpath, self.source)


def cache_root(env=None):
    env = os.environ if env is None else env
    if env.get(CACHE_ENV):
        return env[CACHE_ENV]
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "caffeseg")


def read_stamp(prefix):
    """The ``key=value`` lines of a build's completed stamp, or None when the build is not complete.
    (Whether it is current, of CAFFE_COMMIT and CAFFE_BUILD_RECIPE, is ``cached_builds``' question.)"""
    try:
        with open(os.path.join(prefix, STAMP_NAME)) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    stamp = dict(line.split("=", 1) for line in lines if "=" in line)
    return stamp if stamp.get("commit") and stamp.get("python") else None


def cached_builds(env=None):
    """Complete ``make caffe`` builds of CAFFE_COMMIT and CAFFE_BUILD_RECIPE in the cache whose
    interpreter still exists, the system python3's first: [(prefix, stamp)]. The same test as
    docker/build_caffe.sh's ``stamp_is_current``: what the script would rebuild is not used."""
    found = []
    for prefix in sorted(glob.glob(os.path.join(cache_root(env), "caffe-%s-py*" % CAFFE_COMMIT[:8]))):
        stamp = read_stamp(prefix)
        if (stamp and stamp["commit"] == CAFFE_COMMIT and stamp.get("recipe") == CAFFE_BUILD_RECIPE
                and os.path.isfile(stamp["python"])
                and os.path.isfile(os.path.join(prefix, "python", "caffe", "__init__.py"))):
            found.append((prefix, stamp))
    system = os.path.realpath("/usr/bin/python3")
    found.sort(key=lambda item: item[1]["python"] != system)
    return found


def _is_engine_proxy(path):
    # The project's installed ``caffe`` package that stands for the engine starts with this line
    # (engine/caffe_shim.PROXY_MARKER; repeated: the pycaffe image ships jobs/ without engine/).
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().strip() == "# caffeseg-engine-proxy"
    except OSError:
        return False


def importable_real_pycaffe():
    """Whether ``import caffe`` in this interpreter gives a real pycaffe: not the engine, not the
    project's proxy for it (the same answer as engine.caffe_shim.real_pycaffe_available)."""
    module = sys.modules.get("caffe")
    if module is not None:
        return not (getattr(module, "__caffeseg_engine__", False) or getattr(module, "__caffeseg_proxy__", False))
    try:
        spec = importlib.util.find_spec("caffe")
    except (ImportError, ValueError):
        return False
    return spec is not None and not _is_engine_proxy(spec.origin or "")


def _folder_before_a_proxy():
    """The folder of the ``caffe`` this interpreter imports, when the project's import root holds
    the engine's proxy (a wheel install: both in site-packages paths), else None: a runner with
    the import root first on PYTHONPATH would import the proxy instead."""
    if not _is_engine_proxy(os.path.join(resources.import_root(), "caffe", "__init__.py")):
        return None
    try:
        spec = importlib.util.find_spec("caffe")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    package = os.path.dirname(spec.origin)
    return os.path.dirname(package) if os.path.basename(spec.origin) == "__init__.py" else package


def _from_root(root, env):
    if not os.path.isdir(root):
        raise RealCaffeError("%s=%s is not a folder" % (ROOT_ENV, root))
    for folder in (os.path.join(root, "python"), root):
        if os.path.isfile(os.path.join(folder, "caffe", "__init__.py")):
            stamp = read_stamp(root) or {}
            python = env.get(PYTHON_ENV) or stamp.get("python")
            if python and not os.path.isfile(python):
                raise RealCaffeError("%s: interpreter %s not found" % (ROOT_ENV, python))
            return RealCaffe(python, folder, "%s=%s" % (ROOT_ENV, root), stamp)
    raise RealCaffeError("%s=%s holds neither python/caffe/ nor caffe/ (a pycaffe build or "
                         "install: its python folder)" % (ROOT_ENV, root))


def _on_pythonpath(env):
    for folder in (env.get("PYTHONPATH") or "").split(os.pathsep):
        for path in (os.path.join(folder, "caffe", "__init__.py"), os.path.join(folder, "caffe.py")):
            if folder and os.path.isfile(path) and not _is_engine_proxy(path):
                return folder
    return None


def find_real_caffe(env=None):
    """The real Caffe the pycaffe backend uses here, or None when there is none (see the module
    doc for the order). ``python`` is None when the runner's usual interpreter runs it. Raises
    RealCaffeError when CAFFESEG_CAFFE_ROOT names no pycaffe."""
    env = os.environ if env is None else env
    if env.get(ROOT_ENV):
        return _from_root(env[ROOT_ENV], env)
    folder = _on_pythonpath(env)
    if folder:  # put first again by environment(): before the import root and its caffe proxy
        return RealCaffe(env.get(PYTHON_ENV), folder, "PYTHONPATH entry %s" % folder)
    if importable_real_pycaffe():
        return RealCaffe(env.get(PYTHON_ENV), _folder_before_a_proxy(), "importable by %s" % sys.executable)
    builds = cached_builds(env)
    if builds:
        prefix, stamp = builds[0]
        return RealCaffe(env.get(PYTHON_ENV) or stamp["python"], os.path.join(prefix, "python"),
                         "make caffe build at %s" % prefix, stamp)
    return None


def runner_launch(python, env=None, gpu=False):
    """(interpreter, environment) for the runner of a ``pycaffe`` job, ``python`` being the one it
    would use otherwise: the located Caffe's, or RealCaffeError saying how to get one. ``gpu``: the
    job is to train on a GPU, which a `make caffe` build (CPU_ONLY) cannot do (Caffe would abort)."""
    env = os.environ if env is None else env
    found = find_real_caffe(env)
    if found is None:
        raise RealCaffeError("the job needs real Caffe (backend pycaffe) and none is found: " + BUILD_HINT)
    if gpu and found.cpu_only:
        raise RealCaffeError("the job asks for a GPU, but the real Caffe found (%s) is a CPU-only build; "
                             "train it on the CPU, or on the engine backend for a GPU" % found.source)
    return found.python or python, found.environment(env)


PROBE = ("import json, os, caffe; print(json.dumps({'version': getattr(caffe, '__version__', None), "
         "'module': os.path.dirname(os.path.abspath(caffe.__file__)), "
         "'engine': bool(getattr(caffe, '__caffeseg_engine__', False))}))")


def probe(found, timeout=120):
    """Import the located Caffe with its interpreter in a subprocess; {"version", "module"} or
    RealCaffeError with the interpreter's error."""
    python = found.python or sys.executable
    proc = subprocess.run([python, "-c", PROBE], env=found.environment(), capture_output=True,
                          universal_newlines=True, timeout=timeout)
    if proc.returncode != 0:
        raise RealCaffeError("%s cannot import caffe from %s: %s" % (
            python, found.pythonpath or "its own path", proc.stderr.strip().splitlines()[-1:]))
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if info["engine"]:
        raise RealCaffeError("%s imports caffeseg's engine as caffe, not BVLC Caffe" % python)
    return info


def caffe_info(check_import=True, env=None):
    """The pycaffe backend's Caffe for ``caffeseg --version`` and the web's info: {"found": False,
    "hint"} or {"found": True, "python", "pythonpath", "source", "commit"?, "version"?, "module"?};
    with ``check_import`` its interpreter imports it once (about a second) and "error" says why not."""
    try:
        found = find_real_caffe(env)
    except RealCaffeError as exc:
        return {"found": False, "error": str(exc), "hint": BUILD_HINT}
    if found is None:
        return {"found": False, "hint": BUILD_HINT}
    info = found.as_dict()
    if check_import:
        try:
            info.update(probe(found))
            info.pop("engine", None)
        except (RealCaffeError, OSError, subprocess.TimeoutExpired) as exc:
            info["error"] = str(exc)
    return info


def describe(info):
    """One line for humans from ``caffe_info()``."""
    if not info.get("found"):
        return "real Caffe: not found (%s)%s" % (info["hint"], "; " + info["error"] if info.get("error") else "")
    text = "real Caffe%s: %s with %s" % (
        " " + info["version"] if info.get("version") else "",
        info.get("module") or info.get("pythonpath") or "importable", info["python"])
    if info.get("commit"):
        text += " (BVLC %s, built %s)" % (info["commit"][:8], info.get("built", "?"))
    if info.get("error"):
        text += "; NOT USABLE: " + info["error"]
    return text
