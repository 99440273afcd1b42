"""Finding real Caffe for the pycaffe backend (jobs/real_caffe.py) and launching runners with it:
fake build folders and fake interpreters, no real Caffe needed."""
import json
import os
import stat
import subprocess
import sys

import pytest

from caffeseg.jobs import real_caffe as rc
from caffeseg.jobs import resources
from caffeseg.jobs import scheduler as sched
from caffeseg.jobs import store as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPORT_ROOT = resources.import_root()
SHORT = rc.CAFFE_COMMIT[:8]


def fake_build(cache, tag="py311", python=sys.executable, complete=True, commit=rc.CAFFE_COMMIT,
               recipe=rc.CAFFE_BUILD_RECIPE):
    prefix = os.path.join(str(cache), "caffe-%s-%s" % (SHORT, tag))
    os.makedirs(os.path.join(prefix, "python", "caffe"))
    with open(os.path.join(prefix, "python", "caffe", "__init__.py"), "w") as f:
        f.write("__version__ = 'fake'\n")
    if complete:
        with open(os.path.join(prefix, rc.STAMP_NAME), "w") as f:
            f.write("commit=%s\n%spython=%s\nbuilt=2026-01-01T00:00:00Z\n"
                    % (commit, "" if recipe is None else "recipe=%s\n" % recipe, python))
    return prefix


def env_for(tmp_path, **extra):
    env = {"CAFFESEG_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def nothing_importable(monkeypatch):
    monkeypatch.setattr(rc, "importable_real_pycaffe", lambda: False)


def test_nothing_built_is_none_and_says_how(tmp_path):
    env = env_for(tmp_path)
    assert rc.find_real_caffe(env) is None
    info = rc.caffe_info(env=env)
    assert info["found"] is False and "make caffe" in info["hint"]
    assert "not found" in rc.describe(info)
    with pytest.raises(rc.RealCaffeError, match="make caffe"):
        rc.runner_launch(sys.executable, env)


def test_a_half_finished_build_is_not_taken(tmp_path):
    fake_build(tmp_path / "cache", complete=False)
    assert rc.find_real_caffe(env_for(tmp_path)) is None


def test_a_build_of_another_commit_or_for_a_missing_python_is_not_taken(tmp_path):
    fake_build(tmp_path / "cache", tag="py311", commit="0" * 40)
    fake_build(tmp_path / "cache", tag="py312", python=str(tmp_path / "gone" / "python3"))
    assert rc.find_real_caffe(env_for(tmp_path)) is None


def test_the_cache_build_gives_its_interpreter_and_path(tmp_path):
    prefix = fake_build(tmp_path / "cache")
    found = rc.find_real_caffe(env_for(tmp_path, PYTHONPATH="/elsewhere"))
    assert found.python == sys.executable and found.pythonpath == os.path.join(prefix, "python")
    assert prefix in found.source
    python, env = rc.runner_launch("/not/used", env_for(tmp_path, PYTHONPATH="/elsewhere"))
    assert python == sys.executable
    # the build first (before a wheel install's caffe proxy), then the project, then what the user had
    assert env["PYTHONPATH"].split(os.pathsep) == [os.path.join(prefix, "python"), IMPORT_ROOT, "/elsewhere"]


def test_a_make_caffe_build_refuses_gpu_jobs(tmp_path):
    fake_build(tmp_path / "cache")
    assert rc.find_real_caffe(env_for(tmp_path)).cpu_only is True
    assert rc.caffe_info(check_import=False, env=env_for(tmp_path))["cpu_only"] is True
    with pytest.raises(rc.RealCaffeError, match="asks for a GPU.*CPU-only build"):
        rc.runner_launch(sys.executable, env_for(tmp_path), gpu=True)
    own = tmp_path / "own"
    (own / "python" / "caffe").mkdir(parents=True)
    (own / "python" / "caffe" / "__init__.py").write_text("")
    python, _ = rc.runner_launch("/usr/bin/mine", env_for(tmp_path, CAFFESEG_CAFFE_ROOT=str(own)), gpu=True)
    assert python == "/usr/bin/mine"  # a user's build may have CUDA: its runner decides


def test_default_cache_is_under_xdg_or_home():
    assert rc.cache_root({}) == os.path.join(os.path.expanduser("~"), ".cache", "caffeseg")
    assert rc.cache_root({"XDG_CACHE_HOME": "/x"}) == "/x/caffeseg"
    assert rc.cache_root({"CAFFESEG_CACHE": "/c", "XDG_CACHE_HOME": "/x"}) == "/c"


def test_build_script_prefix_matches_what_the_locator_looks_for(tmp_path):
    out = subprocess.run([os.path.join(ROOT, "docker", "build_caffe.sh"), "--prefix"], capture_output=True,
                         text=True, env=dict(os.environ, CAFFESEG_CACHE=str(tmp_path)), timeout=60)
    assert out.returncode == 0, out.stderr
    prefix = out.stdout.strip()
    assert os.path.dirname(prefix) == str(tmp_path)
    assert os.path.basename(prefix).startswith("caffe-%s-py3" % SHORT)


def test_caffeseg_caffe_root_wins_and_bad_values_are_named(tmp_path):
    own = tmp_path / "mycaffe"
    (own / "python" / "caffe").mkdir(parents=True)
    (own / "python" / "caffe" / "__init__.py").write_text("")
    fake_build(tmp_path / "cache")
    found = rc.find_real_caffe(env_for(tmp_path, CAFFESEG_CAFFE_ROOT=str(own)))
    assert found.pythonpath == str(own / "python") and found.python is None  # the runner's own python
    python, _ = rc.runner_launch("/usr/bin/mine", env_for(tmp_path, CAFFESEG_CAFFE_ROOT=str(own)))
    assert python == "/usr/bin/mine"
    found = rc.find_real_caffe(env_for(tmp_path, CAFFESEG_CAFFE_ROOT=str(own),
                                       CAFFESEG_CAFFE_PYTHON=sys.executable))
    assert found.python == sys.executable
    with pytest.raises(rc.RealCaffeError, match="CAFFESEG_CAFFE_ROOT=.*is not a folder"):
        rc.find_real_caffe(env_for(tmp_path, CAFFESEG_CAFFE_ROOT=str(tmp_path / "nope")))
    with pytest.raises(rc.RealCaffeError, match="neither python/caffe/ nor caffe/"):
        rc.find_real_caffe(env_for(tmp_path, CAFFESEG_CAFFE_ROOT=str(tmp_path)))
    info = rc.caffe_info(env=env_for(tmp_path, CAFFESEG_CAFFE_ROOT=str(tmp_path / "nope")))
    assert info["found"] is False and "is not a folder" in info["error"]


def test_a_caffe_on_pythonpath_is_the_users_choice(tmp_path):
    fake_build(tmp_path / "cache")
    mine = tmp_path / "fake"
    (mine / "caffe").mkdir(parents=True)
    (mine / "caffe" / "__init__.py").write_text("")
    found = rc.find_real_caffe(env_for(tmp_path, PYTHONPATH=str(mine)))
    assert found.pythonpath == str(mine) and str(mine) in found.source
    proxy = tmp_path / "proxy"
    (proxy / "caffe").mkdir(parents=True)
    (proxy / "caffe" / "__init__.py").write_text("# caffeseg-engine-proxy\n")
    assert rc.find_real_caffe(env_for(tmp_path, PYTHONPATH=str(proxy))).source.startswith("make caffe build")
    python, env = rc.runner_launch("/usr/bin/mine", env_for(tmp_path, PYTHONPATH=str(mine)))
    assert python == "/usr/bin/mine" and env["PYTHONPATH"].split(os.pathsep) == [str(mine), IMPORT_ROOT]


def test_probe_imports_with_the_interpreter_and_rejects_the_engine(tmp_path):
    prefix = fake_build(tmp_path / "cache")
    info = rc.caffe_info(env=env_for(tmp_path))
    assert info["found"] and info["version"] == "fake" and info["module"] == os.path.join(prefix, "python", "caffe")
    assert info["commit"] == rc.CAFFE_COMMIT and "fake" in rc.describe(info)
    with open(os.path.join(prefix, "python", "caffe", "__init__.py"), "w") as f:
        f.write("__caffeseg_engine__ = True\n")
    info = rc.caffe_info(env=env_for(tmp_path))
    assert "engine" in info["error"] and "NOT USABLE" in rc.describe(info)
    with open(os.path.join(prefix, "python", "caffe", "__init__.py"), "w") as f:
        f.write("raise ImportError('libcaffe.so.1.0.0: cannot open shared object file')\n")
    info = rc.caffe_info(env=env_for(tmp_path))
    assert "libcaffe.so" in info["error"]


# -- the scheduler launches pycaffe runners with the located Caffe ------------------------------
def _waiting_model(store, backend):
    job_dir = os.path.join(store.root, "m1")
    os.makedirs(job_dir)
    return store.add_job("m1", "model", "m1", job_dir, options={"backend": backend}, status=st.WAITING)


def _recording_python(tmp_path):
    """An 'interpreter' that records its argv and PYTHONPATH, then exits 2 (bad job)."""
    path = tmp_path / "python-recorder"
    path.write_text("#!/bin/sh\nprintf '%%s\\n' \"$0\" \"$@\" \"PYTHONPATH=$PYTHONPATH\" > %s\nexit 2\n"
                    % (tmp_path / "argv.txt"))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _only_the_cache_has_caffe(tmp_path, monkeypatch):
    """The environment of env_for(tmp_path), with no real Caffe on PYTHONPATH or CAFFESEG_CAFFE_ROOT:
    the fake build in the cache is the one the locator finds."""
    for key, value in env_for(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.delenv("CAFFESEG_CAFFE_ROOT", raising=False)


def test_scheduler_runs_a_pycaffe_job_with_the_builds_interpreter(tmp_path, monkeypatch):
    recorder = _recording_python(tmp_path)
    prefix = fake_build(tmp_path / "cache", python=recorder)
    _only_the_cache_has_caffe(tmp_path, monkeypatch)
    store = st.JobStore(str(tmp_path / "jobs"))
    _waiting_model(store, "pycaffe")
    assert sched.Scheduler(store, backend="pycaffe").train("m1", poll=0.05) == st.ERROR
    lines = (tmp_path / "argv.txt").read_text().splitlines()
    assert lines[0] == recorder and lines[1] == sched.RUNNER_PATH and "pycaffe" in lines
    assert lines[-1] == "PYTHONPATH=" + os.pathsep.join([os.path.join(prefix, "python"), IMPORT_ROOT])


def test_scheduler_errors_a_pycaffe_job_when_no_caffe_is_found(tmp_path, monkeypatch):
    _only_the_cache_has_caffe(tmp_path, monkeypatch)
    store = st.JobStore(str(tmp_path / "jobs"))
    _waiting_model(store, "pycaffe")
    assert sched.Scheduler(store, backend="pycaffe").train("m1") == st.ERROR
    assert "make caffe" in store.get("m1")["error"]


def test_engine_jobs_keep_the_apps_interpreter(tmp_path, monkeypatch):
    recorder = _recording_python(tmp_path)
    fake_build(tmp_path / "cache", python=sys.executable)
    for key, value in env_for(tmp_path).items():
        monkeypatch.setenv(key, value)
    store = st.JobStore(str(tmp_path / "jobs"))
    _waiting_model(store, "engine")
    sched.Scheduler(store, python=recorder, backend="engine").train("m1", poll=0.05)
    lines = (tmp_path / "argv.txt").read_text().splitlines()
    assert lines[0] == recorder and "engine" in lines


def test_runner_records_the_backend_it_used(tmp_path):
    from caffeseg.jobs import runner
    fake = tmp_path / "caffe"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '1.0.0'\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib
        module = importlib.util.module_from_spec(importlib.util.spec_from_file_location("caffe", str(fake / "__init__.py")))
        module.__spec__.loader.exec_module(module)
    finally:
        sys.path.remove(str(tmp_path))
    used = runner.backend_used(module)
    assert used == {"name": "pycaffe", "version": "1.0.0", "module": str(fake), "python": sys.executable,
                    "device": "cpu"}
    assert runner.backend_used(module, gpu=1)["device"] == "gpu:1"
    from caffeseg import engine
    import torch
    assert runner.backend_used(engine)["name"] == "engine"
    assert runner.backend_used(engine)["torch"] == torch.__version__
    json.dumps(used)


def test_the_engine_and_its_installed_proxy_are_not_real_pycaffe(monkeypatch):
    monkeypatch.undo()  # the real importable_real_pycaffe, not the fixture's stand-in
    from caffeseg.engine import caffe_shim
    assert rc.importable_real_pycaffe() == caffe_shim.real_pycaffe_available()
    monkeypatch.delitem(sys.modules, "caffe", raising=False)
    assert rc.importable_real_pycaffe() is False  # the venv's `caffe` is the project's proxy
    engine = caffe_shim.install()
    assert sys.modules["caffe"] is engine and rc.importable_real_pycaffe() is False


def test_scheduler_errors_a_gpu_pycaffe_job_on_a_cpu_only_build(tmp_path, monkeypatch):
    recorder = _recording_python(tmp_path)
    fake_build(tmp_path / "cache", python=recorder)
    _only_the_cache_has_caffe(tmp_path, monkeypatch)
    store = st.JobStore(str(tmp_path / "jobs"))
    _waiting_model(store, "pycaffe")
    assert sched.Scheduler(store, backend="pycaffe").train("m1", gpu=0) == st.ERROR
    assert "CPU-only build" in store.get("m1")["error"]
    assert not (tmp_path / "argv.txt").exists()  # no runner was started


def _wheel_install(tmp_path, monkeypatch):
    """A wheel install's import root: site-packages holding jobs/ and the engine's ``caffe`` proxy."""
    site = tmp_path / "site-packages"
    (site / "caffe").mkdir(parents=True)
    (site / "caffe" / "__init__.py").write_text("# caffeseg-engine-proxy\n__version__ = 'the engine proxy'\n")
    monkeypatch.setattr(rc.resources, "import_root", lambda: str(site))
    return site


def _imported_caffe_version(python, env):
    out = subprocess.run([python, "-c", "import caffe; print(caffe.__version__)"], env=env,
                         capture_output=True, universal_newlines=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("how", ["make caffe", "CAFFESEG_CAFFE_ROOT", "PYTHONPATH"])
def test_in_a_wheel_install_the_runner_imports_real_caffe_not_the_engine_proxy(tmp_path, monkeypatch, how):
    """Review finding 5: the import root (site-packages) holds the ``caffe`` proxy; the launcher's
    PYTHONPATH must give the located real Caffe first, and a runner with it imports that one."""
    site = _wheel_install(tmp_path, monkeypatch)
    prefix = fake_build(tmp_path / "cache")
    extra = {"CAFFESEG_CAFFE_ROOT": {"CAFFESEG_CAFFE_ROOT": prefix},
             "PYTHONPATH": {"PYTHONPATH": os.path.join(prefix, "python")}}.get(how, {})
    python, env = rc.runner_launch(sys.executable, dict(env_for(tmp_path, **extra), PATH=os.environ["PATH"]))
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts[:2] == [os.path.join(prefix, "python"), str(site)]
    assert _imported_caffe_version(python, env) == "fake"  # fake_build's __init__, not the proxy


def test_an_importable_real_caffe_comes_before_a_proxy_in_the_import_root(tmp_path, monkeypatch):
    """Real pycaffe importable by the interpreter itself (e.g. Debian's python3-caffe) while the
    import root holds the proxy: its folder is put before the import root."""
    site = _wheel_install(tmp_path, monkeypatch)
    system = tmp_path / "dist-packages"
    (system / "caffe").mkdir(parents=True)
    (system / "caffe" / "__init__.py").write_text("__version__ = 'debian'\n")
    monkeypatch.setattr(rc, "importable_real_pycaffe", lambda: True)
    monkeypatch.syspath_prepend(str(system))
    monkeypatch.delitem(sys.modules, "caffe", raising=False)
    python, env = rc.runner_launch(sys.executable, dict(env_for(tmp_path), PATH=os.environ["PATH"]))
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(system), str(site)]
    assert _imported_caffe_version(python, env) == "debian"


@pytest.mark.parametrize("recipe", ["1", None])
def test_a_build_stamped_with_another_recipe_is_not_taken(tmp_path, recipe):
    """Review finding 13: `make caffe` rebuilds a build of an older recipe (or none recorded);
    the locator must not use it meanwhile as a finished build."""
    fake_build(tmp_path / "cache", recipe=recipe)
    assert rc.find_real_caffe(env_for(tmp_path)) is None
    assert rc.cached_builds(env_for(tmp_path)) == []
    fake_build(tmp_path / "cache", tag="py312")  # the current recipe beside it is taken
    assert rc.find_real_caffe(env_for(tmp_path)).build["recipe"] == rc.CAFFE_BUILD_RECIPE


def test_the_build_script_and_the_locator_share_commit_and_recipe():
    import re
    script = open(os.path.join(ROOT, "docker", "build_caffe.sh")).read()
    assert re.findall(r"^RECIPE=(\S+)$", script, re.M) == [rc.CAFFE_BUILD_RECIPE]
    assert re.findall(r"^CAFFE_COMMIT=(\S+)$", script, re.M) == [rc.CAFFE_COMMIT]
    assert 'grep -qx "recipe=$RECIPE"' in script  # what its stamp_is_current checks
