"""Who supervises a Running model job (review findings 1, 9, 16), with the recording fake
``caffe`` of the jobs tests: a job a worker claimed is not taken for an orphan by a process that
starts meanwhile, and a finished job is recorded (and evaluated) once."""
from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from caffeseg.jobs import store as st
from caffeseg.jobs.scheduler import Scheduler, patiently, read_runner_status
from caffeseg.jobs.service import JobService, ServiceError
from tests.jobs_fixtures import TINY_NET, install_fake_caffe, make_dataset_dir


@pytest.fixture
def svc(tmp_path, monkeypatch):
    fake = install_fake_caffe(str(tmp_path / "fake"))
    monkeypatch.setenv("PYTHONPATH", fake)
    monkeypatch.setenv("FAKE_CAFFE_CALLS", str(tmp_path / "calls.jsonl"))
    return JobService(str(tmp_path / "jobs"), backend="pycaffe")


def _model(svc, tmp_path):
    dataset = svc.import_dataset(make_dataset_dir(str(tmp_path / "built")), "phantom")
    [job] = svc.create_model(dict(dataset_id=dataset["id"], network_text=TINY_NET, epochs=4, name="tiny"))
    return job


def _history(store, job_id):
    return [h["status"] for h in store.history(job_id)]


def _claimed_and_held_in_prepare(svc, tmp_path):
    """A queued model job that the worker's step() has claimed Running and holds inside prepare()
    (before its runner, so before any runner pid) until the returned event is set."""
    job = _model(svc, tmp_path)
    svc.submit(job["id"])
    preparing, go_on = threading.Event(), threading.Event()
    prepare = svc.scheduler.prepare

    def slow_prepare(j):
        preparing.set()
        assert go_on.wait(30)
        return prepare(j)
    svc.scheduler.prepare = slow_prepare
    assert svc.scheduler.step() == [job["id"]]
    assert preparing.wait(30)
    return job, go_on


# -- finding 1 -----------------------------------------------------------------------------------

def test_a_job_claimed_by_the_worker_survives_a_service_start_before_its_runner_has_a_pid(svc, tmp_path):
    """step() claims the job Running, then prepares it and starts the runner in a thread; a CLI
    command or web start meanwhile builds a JobService (recover) — the job must stay Running, and
    end Done once its runner has trained."""
    job, go_on = _claimed_and_held_in_prepare(svc, tmp_path)
    row = svc.store.get(job["id"])
    assert row["status"] == st.RUNNING and row["pid"] is None

    JobService(str(tmp_path / "jobs"), backend="pycaffe")  # any CLI command / web start on this host
    assert svc.store.get(job["id"])["status"] == st.RUNNING
    assert Scheduler(svc.store, backend="pycaffe").recover(adopt=True) == {}  # a second worker's start
    assert svc.store.get(job["id"])["status"] == st.RUNNING
    assert svc.store.get(job["id"])["supervisor_pid"] == os.getpid()
    with pytest.raises(ServiceError, match="already running"):
        svc.train(job["id"])  # a foreground training of the same job is refused meanwhile
    with pytest.raises(ServiceError, match="running; abort it first"):
        svc.delete(job["id"])

    go_on.set()
    svc.scheduler._running[job["id"]].join(60)
    row = svc.store.get(job["id"])
    assert row["status"] == st.DONE
    assert row["pid"] is None and row["supervisor_pid"] is None
    assert _history(svc.store, job["id"]).count(st.INTERRUPTED) == 0


def test_a_job_aborted_while_the_worker_prepares_it_does_not_train(svc, tmp_path, monkeypatch):
    """Abort before the runner has a pid: the claim moves it to Aborted; the runner started
    afterwards is stopped at once, and the job stays Aborted."""
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.2")
    job, go_on = _claimed_and_held_in_prepare(svc, tmp_path)
    svc.abort(job["id"])
    assert svc.store.get(job["id"])["status"] == st.ABORTED
    go_on.set()
    svc.scheduler._running[job["id"]].join(60)
    assert svc.store.get(job["id"])["status"] == st.ABORTED
    assert read_runner_status(job["dir"]).get("state") != "done"
    assert st.DONE not in _history(svc.store, job["id"])


def test_a_claimed_job_whose_supervisor_is_gone_is_interrupted(svc, tmp_path):
    """The other side: the worker that claimed the job died before it started the runner."""
    job = _model(svc, tmp_path)
    svc.submit(job["id"])
    assert svc.store.claim(job["id"], st.WAITING, st.RUNNING, supervisor_pid=os.getpid(), supervisor_started=123.0)
    assert Scheduler(svc.store, backend="pycaffe").recover(adopt=True) == {job["id"]: st.INTERRUPTED}


def test_a_failure_of_the_supervising_thread_ends_the_job(svc, tmp_path):
    job = _model(svc, tmp_path)
    svc.submit(job["id"])

    def broken_prepare(j):
        raise RuntimeError("disk on fire")
    svc.scheduler.prepare = broken_prepare
    assert svc.scheduler.step() == [job["id"]]
    svc.scheduler._running[job["id"]].join(30)
    row = svc.store.get(job["id"])
    assert row["status"] == st.ERROR and "disk on fire" in row["error"] and row["supervisor_pid"] is None


# -- finding 9 -----------------------------------------------------------------------------------

def test_a_job_settled_by_recover_is_not_recorded_or_evaluated_again_by_its_supervisor(svc, tmp_path):
    """The runner ended; before its supervisor records the exit, a process recovering judges it
    from runner_status.json (a record without a live supervisor: made before supervisors were
    recorded). The supervisor's finish must then change nothing and evaluate nothing."""
    job = _model(svc, tmp_path)
    assert svc.train(job["id"]) == st.DONE  # a real finished run: runner_status.json says done
    svc.store.set_status(job["id"], st.RUNNING)  # as it was the moment the runner exited
    evaluated = []
    recovering = Scheduler(svc.store, backend="pycaffe")
    recovering.on_done = evaluated.append
    assert recovering.recover(adopt=False) == {job["id"]: st.DONE}
    before = _history(svc.store, job["id"])

    supervisor = Scheduler(svc.store, backend="pycaffe")
    supervisor.on_done = evaluated.append
    assert supervisor._finish(svc.store.get(job["id"]), 0) == st.DONE
    assert _history(svc.store, job["id"]) == before  # no second Done
    assert evaluated == [job["id"]]  # evaluated once


def test_a_finish_does_not_overwrite_an_abort_recorded_meanwhile(svc, tmp_path):
    job = _model(svc, tmp_path)
    assert svc.train(job["id"]) == st.DONE
    svc.store.set_status(job["id"], st.RUNNING)
    assert svc.store.claim(job["id"], st.RUNNING, st.ABORTED, "aborted")
    evaluated = []
    supervisor = Scheduler(svc.store, backend="pycaffe")
    supervisor.on_done = evaluated.append
    assert supervisor._finish(svc.store.get(job["id"]), 0) == st.ABORTED
    assert svc.store.get(job["id"])["status"] == st.ABORTED and evaluated == []


# -- finding 16 ----------------------------------------------------------------------------------

def test_one_predicate_tells_a_busy_database_from_another_error():
    assert st.is_busy(sqlite3.OperationalError("database is locked"))
    assert st.is_busy(sqlite3.OperationalError("database table is locked: jobs"))
    assert st.is_busy(st.StoreBusy("the job database x is busy"))
    assert not st.is_busy(sqlite3.OperationalError("no such table: jobs"))
    calls = []

    def broken():
        calls.append(1)
        raise sqlite3.OperationalError("no such column: supervisor")
    with pytest.raises(sqlite3.OperationalError, match="no such column"):
        patiently(broken)  # not waited out: raised at once
    assert calls == [1]


def test_clearing_only_the_supervisor_keeps_the_runners_host(tmp_path):
    store = st.JobStore(str(tmp_path))
    store.add_job("20260101-000000-abcd", "model", "m", str(tmp_path))
    store.update("20260101-000000-abcd", pid=os.getpid(), supervisor_pid=os.getpid())
    store.update("20260101-000000-abcd", supervisor_pid=None)
    row = store.get("20260101-000000-abcd")
    assert row["host"] is not None and row["supervisor_started"] is None and row["pid"] == os.getpid()
