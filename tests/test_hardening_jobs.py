"""Honest job states (issue 16 items 8–11), with the recording fake ``caffe`` of the jobs tests:
runners adopted after a restart, a locked database waited out, an unwritable job folder reported,
a diverging validation reported."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from caffeseg.jobs import runner as runner_mod
from caffeseg.jobs import store as st
from caffeseg.jobs.scheduler import IMPORT_ROOT, Scheduler
from caffeseg.jobs.service import JobService
from tests.jobs_fixtures import TINY_NET, fake_pycaffe_service, install_fake_caffe, make_dataset_dir


@pytest.fixture
def svc(tmp_path, monkeypatch):
    return fake_pycaffe_service(tmp_path, monkeypatch)


def _model(svc, tmp_path, **kw):
    dataset = svc.import_dataset(make_dataset_dir(str(tmp_path / "built")), "phantom")
    options = dict(dataset_id=dataset["id"], network_text=TINY_NET, epochs=4, name="tiny")
    options.update(kw)
    [job] = svc.create_model(options)
    return job


def _start_unsupervised(svc, job, step_seconds="0"):
    """Start a job's runner as a scheduler would, then 'lose' the scheduler (a killed server):
    the job is Running with the runner's pid, and nobody waits for the process."""
    command = svc.scheduler.runner_command(job)
    env = dict(os.environ, PYTHONPATH=svc.fake_path + os.pathsep + IMPORT_ROOT, FAKE_STEP_SECONDS=step_seconds)
    with open(os.path.join(job["dir"], "log.txt"), "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=job["dir"])
    svc.store.update(job["id"], pid=proc.pid)
    svc.store.set_status(job["id"], st.RUNNING)
    return proc


def _history(svc, job_id):
    return [(h["status"], h["message"]) for h in svc.store.history(job_id)]


# -- item 8 --------------------------------------------------------------------------------------

def test_a_runner_that_finished_while_nobody_watched_is_done_not_interrupted(svc, tmp_path):
    job = _model(svc, tmp_path)
    proc = _start_unsupervised(svc, job)
    assert proc.wait(timeout=60) == runner_mod.EXIT_DONE
    restarted = JobService(str(tmp_path / "jobs"), backend="pycaffe")  # the next server start
    assert restarted.store.get(job["id"])["status"] == st.DONE
    assert ("Done", "finished while no scheduler watched it") in _history(restarted, job["id"])
    # its metrics were ingested although nobody watched the run
    train = [r for r in restarted.metrics(job["id"])["series"] if r[1] == "loss" and r[3] == "train"]
    assert [r[0] for r in train] == list(range(1, 21))


def test_a_finished_unwatched_run_is_evaluated_once(svc, tmp_path):
    job = _model(svc, tmp_path)
    assert _start_unsupervised(svc, job).wait(timeout=60) == 0
    calls = []
    scheduler = Scheduler(svc.store, backend="pycaffe")
    scheduler.on_done = calls.append
    assert scheduler.recover() == {job["id"]: st.DONE}
    assert Scheduler(svc.store, backend="pycaffe").recover() == {}  # a second process finds it settled
    assert calls == [job["id"]]


def test_a_restarted_worker_adopts_a_live_runner_and_finishes_it(svc, tmp_path):
    job = _model(svc, tmp_path)
    proc = _start_unsupervised(svc, job, step_seconds="0.1")  # 20 iterations: about 2 s
    scheduler = Scheduler(svc.store, backend="pycaffe")
    done = []
    scheduler.on_done = done.append
    assert scheduler.recover(adopt=True) == {job["id"]: "adopted"}
    assert svc.store.get(job["id"])["status"] == st.RUNNING
    scheduler._running[job["id"]].join(60)
    proc.wait(5)
    assert svc.store.get(job["id"])["status"] == st.DONE
    assert done == [job["id"]]
    train = [r for r in svc.metrics(job["id"])["series"] if r[1] == "loss" and r[3] == "train"]
    assert [r[0] for r in train] == list(range(1, 21))


def test_a_reused_pid_is_not_taken_for_the_runner(svc, tmp_path):
    """The recorded pid is alive but belongs to a process started at another time (the pid was
    given to someone else after a reboot): the job is not adopted, it is Interrupted."""
    job = _model(svc, tmp_path)
    svc.store.update(job["id"], pid=os.getpid(), pid_started=123.0)  # this test process, not a runner
    svc.store.set_status(job["id"], st.RUNNING)
    assert Scheduler(svc.store, backend="pycaffe").recover(adopt=True) == {job["id"]: st.INTERRUPTED}
    assert svc.store.get(job["id"])["status"] == st.INTERRUPTED


def test_the_store_records_the_process_start_time_with_the_pid(tmp_path):
    store = st.JobStore(str(tmp_path))
    store.add_job("20260101-000000-abcd", "model", "m", str(tmp_path))
    store.update("20260101-000000-abcd", pid=os.getpid())
    row = store.get("20260101-000000-abcd")
    assert abs(row["pid_started"] - st.process_start_time(os.getpid())) < 1e-6
    assert st.same_process(os.getpid(), row["pid_started"])
    assert not st.same_process(os.getpid(), row["pid_started"] - 3600)


# -- item 9 --------------------------------------------------------------------------------------

def _lock_database(path, seconds):
    """Another process's write lock on the job database for ``seconds`` (in a thread here)."""
    ready = threading.Event()

    def hold():
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        con.execute("UPDATE jobs SET notes=notes")
        ready.set()
        time.sleep(seconds)
        con.execute("COMMIT")
        con.close()
    t = threading.Thread(target=hold, daemon=True)
    t.start()
    ready.wait(5)
    return t


def test_supervision_survives_a_locked_database(svc, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.05")
    job = _model(svc, tmp_path)
    svc.store.busy_timeout = 0.2  # the supervising thread's connection waits 0.2 s, then StoreBusy
    result = {}
    trainer = threading.Thread(target=lambda: result.setdefault("status", svc.train(job["id"])))
    trainer.start()
    deadline = time.time() + 30
    while svc.store.get(job["id"])["status"] != st.RUNNING and time.time() < deadline:
        time.sleep(0.05)
    holder = _lock_database(svc.store.path, 3.0)  # longer than the whole training
    holder.join()
    trainer.join(60)
    assert result.get("status") == st.DONE
    assert svc.store.get(job["id"])["status"] == st.DONE
    train = [r for r in svc.metrics(job["id"])["series"] if r[1] == "loss" and r[3] == "train"]
    assert [r[0] for r in train] == list(range(1, 21))
    assert "job database is busy" in open(os.path.join(job["dir"], "log.txt")).read()


def test_a_locked_database_is_a_message_not_a_500(tmp_path, monkeypatch):
    """Pages that write (ingesting a running job's metrics) while another process holds the
    database's write lock answer 503 with a message, not 500."""
    monkeypatch.setenv("CAFFESEG_DB_BUSY_TIMEOUT", "0.2")
    from caffeseg.web import create_app
    app = create_app({"DATA_DIR": str(tmp_path), "START_WORKER": False, "WTF_CSRF_ENABLED": False})
    client = app.test_client()
    store = app.extensions["caffeseg_backend"].service.store
    job_dir = tmp_path / "jobs" / "20260101-000000-abcd"
    job_dir.mkdir(parents=True)
    store.add_job("20260101-000000-abcd", "model", "m", str(job_dir), status=st.RUNNING)
    (job_dir / "metrics.jsonl").write_text(json.dumps({"iter": 1, "phase": "train", "values": {"loss": 1.0}}) + "\n")
    holder = _lock_database(store.path, 3.0)
    try:
        api = client.get("/api/jobs/20260101-000000-abcd/metrics")
        assert api.status_code == 503, api.data[:300]
        assert "job database is busy" in api.get_json()["error"]
        page = client.get("/models/20260101-000000-abcd")
        assert page.status_code == 503, page.data[:300]
        assert b"job database is busy" in page.data
    finally:
        holder.join()
    assert client.get("/api/jobs/20260101-000000-abcd/metrics").status_code == 200


# -- item 10 -------------------------------------------------------------------------------------

def _as_nobody():
    """Run the child as an unprivileged user when the tests run as root (root ignores modes)."""
    if os.geteuid() != 0:
        return None
    def drop():
        os.setgid(65534)
        os.setuid(65534)
    return drop


def test_an_unwritable_job_folder_is_an_error_with_the_reason(tmp_path):
    base = tempfile.mkdtemp(prefix="caffeseg-unwritable-")
    try:
        os.chmod(base, 0o755)
        job = os.path.join(base, "job")
        os.mkdir(job)
        with open(os.path.join(job, "solver.prototxt"), "w") as f:
            f.write('net: "train_val.prototxt"\ntest_iter: 1\ntest_interval: 5\nbase_lr: 0.1\n'
                    'max_iter: 40\nlr_policy: "fixed"\nsnapshot: 5\nsnapshot_prefix: "snapshot"\n')
        fake = install_fake_caffe(os.path.join(base, "fake"))
        for root, dirs, files in os.walk(base):
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o755)
        if os.geteuid() == 0:
            os.chown(job, 65534, 65534)
        env = dict(os.environ, PYTHONPATH=fake, FAKE_STEP_SECONDS="0.05",
                   FAKE_CAFFE_CALLS=os.path.join(job, "calls.jsonl"))
        # As root the runner runs as nobody, with a system Python nobody may execute (the runner
        # needs the standard library and the fake caffe only).
        python = sys.executable if os.geteuid() != 0 else (shutil.which("python3", path="/usr/bin:/bin")
                                                           or pytest.skip("no system python3 for nobody"))
        proc = subprocess.Popen([python, runner_mod.__file__, job, "--backend", "pycaffe"], env=env,
                                cwd=job, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=_as_nobody())
        deadline = time.time() + 30
        while not os.path.exists(os.path.join(job, "snapshot_iter_5.caffemodel")) and time.time() < deadline:
            time.sleep(0.05)
        os.chmod(job, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)  # 0o550: no more files
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == runner_mod.EXIT_ERROR, out  # not a traceback (exit 1, "Interrupted")
        assert "Traceback" not in out, out
        error = [l for l in out.splitlines() if l.startswith("error: ")]
        assert error and "cannot write" in error[0] and "permission denied" in error[0], out
        assert os.path.exists(os.path.join(job, "snapshot_iter_5.caffemodel"))  # what was written stays
    finally:
        os.chmod(os.path.join(base, "job"), 0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_the_scheduler_reports_the_runner_error_when_its_status_file_is_stale(tmp_path):
    store = st.JobStore(str(tmp_path / "jobs"))
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    store.add_job("20260101-000000-abcd", "model", "m", str(job_dir), status=st.RUNNING)
    (job_dir / runner_mod.STATUS).write_text(json.dumps({"state": "running", "iter": 5}))
    (job_dir / "log.txt").write_text("training iterations 1 to 40\nsnapshot at iteration 5\n"
                                     "error: cannot write snapshot_iter_10.caffemodel: permission denied "
                                     "(the job folder must stay writable while the job trains)\n")
    scheduler = Scheduler(store, backend="pycaffe")
    status = scheduler._finish(store.get("20260101-000000-abcd"), runner_mod.EXIT_ERROR)
    assert status == st.ERROR
    assert store.get("20260101-000000-abcd")["error"].startswith(
        "cannot write snapshot_iter_10.caffemodel: permission denied")


# -- item 11 -------------------------------------------------------------------------------------

def test_a_diverging_validation_is_an_error_with_advice_and_keeps_its_point(svc, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VAL_NAN", "1")
    job = _model(svc, tmp_path)
    assert svc.train(job["id"]) == st.ERROR
    row = svc.store.get(job["id"])
    assert "validation loss is nan" in row["error"] and "lower learning rate" in row["error"]
    series = svc.metrics(job["id"])["series"]
    val_loss = [r for r in series if r[1] == "loss" and r[3] == "val"]
    assert val_loss == [(5, "loss", None, "val")]  # the point is there, as a gap (null)
    assert [r[0] for r in series if r[1] == "loss" and r[3] == "train"] == [1, 2, 3, 4, 5]


def test_a_dataset_build_ending_while_the_database_is_locked_is_still_done(tmp_path, phantom_release, monkeypatch):
    images, contours_dir = phantom_release
    monkeypatch.setenv("CAFFESEG_DB_BUSY_TIMEOUT", "0.2")  # each statement gives up after 0.2 s
    service = JobService(str(tmp_path / "jobs"))
    holder = {}

    def on_progress(event):  # lock the database while the build runs, longer than the build
        if "thread" not in holder and event.get("done_all"):
            holder["thread"] = _lock_database(service.store.path, 3.0)
    job = service.create_dataset("sunnybrook", {"image_folder": str(images), "contour_folder": str(contours_dir),
                                                "split_by": "slice"}, "ds", progress=on_progress)
    holder["thread"].join()
    assert job["status"] == st.DONE
    assert "job database is busy" in open(os.path.join(job["dir"], "log.txt")).read()
