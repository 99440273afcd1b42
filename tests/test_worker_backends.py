"""Which scheduler/worker takes which model job (the job's recorded backend), and liveness of
pids recorded in another container sharing the jobs database (docker/compose.yaml)."""
import os
import socket
import threading

import pytest

from caffeseg import cli
from caffeseg.jobs import scheduler as sched
from caffeseg.jobs import store as st


@pytest.fixture
def store(tmp_path):
    return st.JobStore(str(tmp_path / "jobs"))


@pytest.fixture(autouse=True)
def no_real_pycaffe(monkeypatch):
    monkeypatch.setattr(sched, "_real_pycaffe_importable", lambda: False, raising=False)


def _model(store, job_id, backend=None):
    options = {"backend": backend} if backend else {}
    d = os.path.join(store.root, job_id)
    os.makedirs(d, exist_ok=True)
    return store.add_job(job_id, "model", job_id, d, options=options, status=st.WAITING)


def _jobs(store):
    _model(store, "m-none")
    _model(store, "m-engine", "engine")
    _model(store, "m-pycaffe", "pycaffe")
    _model(store, "m-auto", "auto")


def _ready(scheduler):
    return sorted(j["id"] for j in scheduler.ready_jobs())


def test_pycaffe_worker_takes_only_pycaffe_and_auto_jobs(store):
    _jobs(store)
    worker = sched.Scheduler(store, backend="pycaffe")  # python3 -m caffeseg.jobs.worker --backend pycaffe
    assert _ready(worker) == ["m-auto", "m-pycaffe"]


def test_engine_worker_takes_engine_and_unrecorded_jobs(store):
    _jobs(store)
    worker = sched.Scheduler(store, backend="engine")
    assert _ready(worker) == ["m-auto", "m-engine", "m-none"]


def test_auto_worker_takes_what_is_importable_here(store, monkeypatch):
    _jobs(store)
    assert _ready(sched.Scheduler(store, backend="auto")) == ["m-auto", "m-engine", "m-none"]
    monkeypatch.setattr(sched, "_real_pycaffe_importable", lambda: True)
    assert _ready(sched.Scheduler(store, backend="auto")) == ["m-auto", "m-engine", "m-none", "m-pycaffe"]
    # the pycaffe image has no engine package: its auto worker is a pycaffe worker
    monkeypatch.setattr(sched, "_engine_importable", lambda: False)
    assert _ready(sched.Scheduler(store, backend="auto")) == ["m-auto", "m-pycaffe"]


def test_app_scheduler_keeps_unrecorded_jobs_on_its_backend(store):
    _jobs(store)
    app = sched.Scheduler(store, backend="pycaffe")  # caffeseg --backend pycaffe serve
    app.build_dataset = lambda job_id: None
    assert _ready(app) == ["m-auto", "m-none", "m-pycaffe"]
    assert app.runner_command(store.get("m-none"))[4] == "pycaffe"


def test_runner_gets_the_jobs_backend(store):
    _jobs(store)
    worker = sched.Scheduler(store, backend="auto")
    args = lambda job_id: worker.runner_command(store.get(job_id))[3:5]
    assert args("m-engine") == ["--backend", "engine"]
    assert args("m-pycaffe") == ["--backend", "pycaffe"]
    assert args("m-auto") == ["--backend", "auto"]
    assert args("m-none") == ["--backend", "engine"]


def test_pid_is_recorded_with_its_host(store):
    _model(store, "m1")
    store.update("m1", pid=1234)
    assert store.get("m1")["host"] == socket.gethostname()
    store.update("m1", pid=None)
    assert store.get("m1")["host"] is None


def test_worker_start_leaves_other_hosts_running_jobs_alone(store):
    for job_id, host in (("here", socket.gethostname()), ("there", "other-container"), ("legacy", None)):
        _model(store, job_id)
        store.claim(job_id, st.WAITING, st.RUNNING)
        store.update(job_id, pid=2 ** 22 + 12345, host=host)  # no such pid here
    stop = threading.Event()
    stop.set()
    sched.Scheduler(store, backend="pycaffe").loop(stop_event=stop)
    assert store.get("here")["status"] == st.INTERRUPTED
    assert store.get("legacy")["status"] == st.INTERRUPTED  # recorded before hosts were
    assert store.get("there")["status"] == st.RUNNING
    # the app's service start (JobService) calls it without a host: this host by default
    store.set_status("here", st.RUNNING)
    assert store.mark_running_interrupted(sched.pid_alive) == ["here"]
    assert store.mark_running_interrupted(lambda pid: False, host=None) == ["there"]


def test_old_database_gains_the_host_column(tmp_path):
    import sqlite3
    root = tmp_path / "jobs"
    root.mkdir()
    db = sqlite3.connect(str(root / "caffeseg.sqlite"))
    db.executescript(st._SCHEMA)  # the schema has no host column: ALTER TABLE adds it
    db.close()
    s = st.JobStore(str(root))
    s.add_job("a1", "model", "a", str(root / "a1"))
    s.update("a1", pid=5)
    assert s.get("a1")["host"] == socket.gethostname()
    st.JobStore(str(root))  # reopening does not add it twice


def test_cli_model_create_records_an_explicit_backend(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "cmd_model_create", lambda args: seen.append(cli._model_options(args)) or 0)
    cli.main(["model", "create", "--dataset", "d1", "--backend", "pycaffe"])
    cli.main(["--backend", "engine", "model", "create", "--dataset", "d1"])
    cli.main(["model", "create", "--dataset", "d1"])
    assert [o.get("backend") for o in seen] == ["pycaffe", "engine", None]


def test_abort_of_a_job_training_on_another_host_writes_the_flag_and_signals_nothing(store, monkeypatch):
    _model(store, "m-remote", "pycaffe")
    store.update("m-remote", pid=os.getpid(), host="worker-container")
    store.set_status("m-remote", st.RUNNING)
    killed = []
    monkeypatch.setattr(sched.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    assert sched.Scheduler(store).abort("m-remote") is True
    assert killed == []  # the pid belongs to the other container's process table
    assert os.path.exists(os.path.join(store.get("m-remote")["dir"], sched.ABORT_FLAG))
    assert store.get("m-remote")["status"] == st.RUNNING  # the worker there records the Abort
