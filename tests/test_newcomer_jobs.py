"""Issue 21 (the lab walked as a newcomer), jobs side: aborting a runner adopted after a server
restart is fast and ends Aborted (item 6)."""
from __future__ import annotations

import os
import subprocess
import time
import types

import pytest

from caffeseg.jobs import runner as runner_mod
from caffeseg.jobs import scheduler as scheduler_mod
from caffeseg.jobs import store as st
from caffeseg.jobs.scheduler import IMPORT_ROOT, Scheduler
from tests.jobs_fixtures import TINY_NET, fake_pycaffe_service, make_dataset_dir


@pytest.fixture
def svc(tmp_path, monkeypatch):
    return fake_pycaffe_service(tmp_path, monkeypatch)


def _start_unsupervised(svc, tmp_path, **env):
    """A Running job whose runner was started by a server that is gone (nobody waits for it)."""
    dataset = svc.import_dataset(make_dataset_dir(str(tmp_path / "built")), "phantom")
    [job] = svc.create_model(dict(dataset_id=dataset["id"], network_text=TINY_NET, epochs=4, name="tiny"))
    command = svc.scheduler.runner_command(job)
    full_env = dict(os.environ, PYTHONPATH=svc.fake_path + os.pathsep + IMPORT_ROOT, **env)
    with open(os.path.join(job["dir"], "log.txt"), "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=job["dir"])
    svc.store.update(job["id"], pid=proc.pid)
    svc.store.set_status(job["id"], st.RUNNING)
    return job, proc


def _wait_for(predicate, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_abort_of_an_adopted_runner_stuck_in_validation_ends_aborted_within_the_grace(svc, tmp_path, monkeypatch):
    """The runner sits in one validation forward far longer than the grace: it is killed, and the
    adopting scheduler (no exit code, runner_status.json still 'running') records Aborted — the
    user's abort — not Interrupted, within the grace period plus a poll."""
    monkeypatch.setattr(scheduler_mod, "ABORT_GRACE_SECONDS", 1.0)
    job, proc = _start_unsupervised(svc, tmp_path, FAKE_TEST_SECONDS="120")
    calls = str(tmp_path / "calls.jsonl")
    assert _wait_for(lambda: os.path.exists(calls) and "test_forward" in open(calls).read(), 30)
    restarted = Scheduler(svc.store, backend="pycaffe")
    assert restarted.recover(adopt=True) == {job["id"]: "adopted"}
    asked = time.time()
    assert restarted.abort(job["id"]) is True
    assert _wait_for(lambda: svc.store.get(job["id"])["status"] != st.RUNNING, 15)
    took = time.time() - asked
    proc.wait(5)
    assert svc.store.get(job["id"])["status"] == st.ABORTED
    assert took < 6, took
    assert [h["message"] for h in svc.store.history(job["id"])][-1] == "aborted"


def test_abort_of_an_adopted_runner_between_validation_passes_is_its_own_abort(svc, tmp_path):
    """SIGTERM during a validation of several passes: the runner stops at the next pass (no val
    row for the cut validation) and writes 'aborted'; the adopter records Aborted well before
    the grace period would kill it."""
    job, proc = _start_unsupervised(svc, tmp_path, FAKE_TEST_SECONDS="0.3")
    calls = str(tmp_path / "calls.jsonl")
    assert _wait_for(lambda: os.path.exists(calls) and "test_forward" in open(calls).read(), 30)
    restarted = Scheduler(svc.store, backend="pycaffe")
    assert restarted.recover(adopt=True) == {job["id"]: "adopted"}
    asked = time.time()
    restarted.abort(job["id"])
    assert proc.wait(scheduler_mod.ABORT_GRACE_SECONDS) == runner_mod.EXIT_ABORTED  # not killed
    assert _wait_for(lambda: svc.store.get(job["id"])["status"] == st.ABORTED, 10)
    assert time.time() - asked < scheduler_mod.ABORT_GRACE_SECONDS
    assert scheduler_mod.read_runner_status(job["dir"])["state"] == "aborted"


def test_validation_stops_between_passes_when_an_abort_is_asked():
    """Runner.validate checks the abort request before every test forward: with 5 passes and an
    abort asked during the second, only 2 forwards run and no (partial) result is returned."""
    forwards = []
    runner = types.SimpleNamespace(test_iter=5, stop_requested=False, stop_at=2)

    class Net:
        outputs = ["loss"]
        blobs = {"loss": types.SimpleNamespace(data=types.SimpleNamespace(mean=lambda: 1.0, size=1))}

        def forward(self):
            forwards.append(1)
            if len(forwards) == runner.stop_at:
                runner.stop_requested = True

    runner.abort_asked = lambda: runner.stop_requested
    solver = types.SimpleNamespace(test_nets=[Net()])
    assert runner_mod.Runner.validate(runner, solver) is None
    assert len(forwards) == 2
    runner.stop_requested, runner.stop_at, forwards[:] = False, None, []
    assert runner_mod.Runner.validate(runner, solver) == {"loss": 1.0}
    assert len(forwards) == 5


# -- item 11: the model page's Settings come from the job's own files ------------------------------

def test_settings_read_back_what_the_training_uses(svc, tmp_path):
    """The tiny net's own batch (2) with batch accumulation 3, a step policy, 3 epochs over the
    fixture's training records; backend and device from the runner's backend_used."""
    dataset = svc.import_dataset(make_dataset_dir(str(tmp_path / "built")), "phantom")
    [job] = svc.create_model(dict(dataset_id=dataset["id"], network_text=TINY_NET, epochs=3, name="s", base_lr=0.02,
                                  iter_size=3, backend="pycaffe"))
    rows = dict(svc.show(job["id"])["settings"])
    assert rows["Network"] == "custom network"
    assert rows["Batch size"] == "2 (the network's own), accumulated over 3: 6 per update"
    assert rows["Base learning rate"] == "0.02"
    assert rows["Solver"] == "SGD" and rows["Pretrained weights"] == "none (from the fillers)"
    assert rows["Backend"] == "pycaffe"
    epochs = rows["Epochs"]
    assert epochs.startswith("3 (") and "iterations" in epochs
    from caffeseg.jobs.job_settings import training_settings
    used = dict(training_settings(job["dir"], {"name": "engine", "version": "1.0", "device": "gpu:1", "torch": "2.13.0"}))
    assert used["Backend"] == "pycaffe; ran on engine 1.0 (torch 2.13.0)" and used["Device"] == "gpu:1"
    import json
    max_iter = json.load(open(os.path.join(job["dir"], "job.json")))["max_iter"]
    assert epochs == "3 (%d iterations, %g per epoch)" % (max_iter, max_iter / 3)


# -- item 12: the cost hint's figure ----------------------------------------------------------------

def _ended_job(store, root, job_id, network, batch, iter_size, iterations, running, status=st.DONE):
    """A model job of ``network`` that ran ``iterations`` iterations in ``running`` (start, end) pairs."""
    import json
    folder = os.path.join(root, job_id)
    os.makedirs(folder)
    with open(os.path.join(folder, "train_val.prototxt"), "w") as f:
        f.write('layer { name: "d" type: "Data" top: "data" include { stage: "train" } data_param { batch_size: %d } }\n'
                'layer { name: "v" type: "Data" top: "data" include { stage: "val" } data_param { batch_size: 7 } }\n' % batch)
    with open(os.path.join(folder, "solver.prototxt"), "w") as f:
        f.write('base_lr: 0.01\niter_size: %d\n' % iter_size)
    with open(os.path.join(folder, runner_mod.STATUS), "w") as f:
        json.dump({"state": "done", "iter": iterations, "max_iter": iterations}, f)
    store.add_job(job_id, "model", "m-" + network, folder, options={"standard_network": network})
    db = store._db()
    db.execute("DELETE FROM status_history WHERE job_id=?", (job_id,))
    for start, end in running:
        db.execute("INSERT INTO status_history (job_id, status, time, message) VALUES (?,?,?,NULL)", (job_id, st.RUNNING, start))
        db.execute("INSERT INTO status_history (job_id, status, time, message) VALUES (?,?,?,NULL)", (job_id, st.INTERRUPTED, end))
    db.commit()
    store.set_status(job_id, status)


def test_epoch_cost_is_time_running_per_training_image_of_the_latest_ended_job(tmp_path):
    from caffeseg.jobs import cost
    store = st.JobStore(str(tmp_path))
    # older fcn_alexnet job: 100 s for 10 images; newer one: ran 300 s + 100 s (resumed) for
    # 20 iterations × batch 2 × iter_size 5 = 200 images -> 2 s per image
    _ended_job(store, str(tmp_path), "20260101-000000-0001", "fcn_alexnet", 1, 1, 10, [(1000, 1100)])
    time.sleep(0.01)
    _ended_job(store, str(tmp_path), "20260101-000000-0002", "fcn_alexnet.prototxt", 2, 5, 20,
               [(2000, 2300), (5000, 5100)], status=st.ABORTED)
    _ended_job(store, str(tmp_path), "20260101-000000-0003", "unet", 4, 1, 0, [(10, 20)])  # no iteration: no figure
    costs = cost.epoch_costs(store)
    assert set(costs) == {"fcn_alexnet"}
    c = costs["fcn_alexnet"]
    assert c["job_id"] == "20260101-000000-0002" and c["images"] == 200 and c["seconds"] == 400
    assert c["seconds_per_image"] == pytest.approx(2.0)


def test_the_estimate_is_measured_once_in_the_background_and_kept(tmp_path):
    import threading
    from caffeseg.jobs import cost
    release, calls = threading.Event(), []

    def measure(network, dataset_dir):
        calls.append(network)
        release.wait(10)
        if network == "broken":
            raise ValueError("kernel larger than the input")
        return 0.25, 4
    estimator = cost.Estimator(str(tmp_path), measure=measure)
    assert estimator.estimate("unet", "/ds", [1, 64, 64]) == {"state": "measuring"}  # answers at once
    assert estimator.estimate("unet", "/ds", [1, 64, 64]) == {"state": "measuring"}
    release.set()
    assert _wait_for(lambda: estimator.estimate("unet", "/ds", [1, 64, 64])["state"] == "done", 10)
    done = estimator.estimate("unet", "/ds", [1, 64, 64])
    assert done["seconds_per_image"] == 0.25 and done["batch"] == 4
    assert calls == ["unet"]  # measured once
    # kept in the jobs folder: another process (a restarted server) does not measure again
    again = cost.Estimator(str(tmp_path), measure=lambda *a: pytest.fail("measured twice"))
    assert again.estimate("unet", "/ds", [1, 64, 64])["seconds_per_image"] == 0.25
    # another image size is another measurement; a failure is kept with its message
    estimator.estimate("broken", "/ds", [1, 8, 8])
    assert _wait_for(lambda: estimator.estimate("broken", "/ds", [1, 8, 8])["state"] == "error", 10)
    assert "kernel larger than the input" in estimator.estimate("broken", "/ds", [1, 8, 8])["message"]


def test_a_training_step_is_measured_on_the_engine(tmp_path):
    from caffeseg.jobs import cost
    from caffeseg.jobs.model_job import network_text
    folder = make_dataset_dir(str(tmp_path / "built"))
    per_image, batch = cost.measure_seconds_per_image("lab_cnn", folder)
    text, _ = network_text({"standard_network": "lab_cnn"})
    from caffeseg.engine.prototxt import parse_net
    from caffeseg.jobs import derive
    assert batch == derive.data_batch_size(parse_net(text), derive.TRAIN_STATE)
    assert 0 < per_image < 60


def test_the_service_estimates_only_standard_networks_on_built_datasets(svc, tmp_path):
    from caffeseg.jobs.service import ServiceError
    dataset = svc.import_dataset(make_dataset_dir(str(tmp_path / "built")), "phantom")
    with pytest.raises(ServiceError, match="no standard network"):
        svc.cost_estimate("../../etc/passwd", dataset["id"])
    first = svc.cost_estimate("lab_cnn", dataset["id"])
    assert first["state"] in ("measuring", "done")
    assert _wait_for(lambda: svc.cost_estimate("lab_cnn", dataset["id"])["state"] == "done", 60)
