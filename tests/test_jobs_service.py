"""The jobs service end to end on a fake pycaffe: create, train, metrics, kill + resume, abort,
sweeps, clone, rename, delete rules, interrupted-on-restart."""
import json
import os
import signal
import threading
import time

import pytest

from caffeseg.jobs import store as st
from caffeseg.jobs.service import JobService, ServiceError
from tests.jobs_fixtures import TINY_NET, fake_pycaffe_service, make_dataset_dir


@pytest.fixture
def svc(tmp_path, monkeypatch):
    return fake_pycaffe_service(tmp_path, monkeypatch)


@pytest.fixture
def dataset(svc, tmp_path):
    return svc.import_dataset(make_dataset_dir(str(tmp_path / "built")), "phantom")


def model(svc, dataset, **kw):
    options = dict(dataset_id=dataset["id"], network_text=TINY_NET, epochs=4, name="tiny")
    options.update(kw)
    return svc.create_model(options)


def test_model_job_files_and_training(svc, dataset):
    [job] = model(svc, dataset)
    for name in ("original.prototxt", "train_val.prototxt", "deploy.prototxt", "solver.prototxt", "job.json"):
        assert os.path.isfile(os.path.join(job["dir"], name))
    assert "max_iter: 20" in open(os.path.join(job["dir"], "solver.prototxt")).read()  # 10/2 = 5 × 4 epochs
    assert svc.train(job["id"]) == st.DONE
    m = svc.metrics(job["id"], since=0)
    losses = [r for r in m["series"] if r[1] == "loss" and r[3] == "train"]
    assert [r[0] for r in losses] == list(range(1, 21))
    assert [r[0] for r in m["series"] if r[1] == "accuracy" and r[3] == "val"] == [5, 10, 15, 20]
    assert any(r[1] == "lr" and r[3] is None for r in m["series"])
    assert [r[0] for r in svc.metrics(job["id"], since=19)["series"] if r[1] == "loss" and r[3] == "train"] == [19, 20]
    shown = svc.show(job["id"])
    assert [h[0] for h in shown["history"]] == ["Initialized", "Running", "Done"]
    assert [s[0] for s in shown["snapshots"]] == [5, 10, 15, 20]


def test_sigkill_then_resume_has_no_gap_or_duplicate(svc, dataset, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.05")
    [job] = model(svc, dataset)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("status", svc.train(job["id"])))
    t.start()
    metrics = os.path.join(job["dir"], "metrics.jsonl")
    deadline = time.time() + 30
    while time.time() < deadline:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 9:
            break
        time.sleep(0.02)
    os.kill(svc.store.get(job["id"])["pid"], signal.SIGKILL)
    t.join(30)
    assert result["status"] == st.INTERRUPTED
    assert svc.show(job["id"])["status"] == st.INTERRUPTED
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0")
    assert svc.resume(job["id"], wait=True) == st.DONE
    rows = [r for r in svc.metrics(job["id"])["series"] if r[1] == "loss" and r[3] == "train"]
    assert [r[0] for r in rows] == list(range(1, 21))
    calls = [json.loads(l) for l in open(os.environ["FAKE_CAFFE_CALLS"])]
    assert ["restore", "snapshot_iter_5.solverstate"] in calls


def test_abort_stops_runner_and_leaves_consistent_job(svc, dataset, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.05")
    [job] = model(svc, dataset)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("status", svc.train(job["id"])))
    t.start()
    deadline = time.time() + 30
    while svc.store.get(job["id"])["status"] != st.RUNNING and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert svc.abort(job["id"]) is True
    t.join(30)
    assert result["status"] == st.ABORTED


def test_running_job_of_dead_process_is_interrupted_on_restart(svc, dataset, tmp_path):
    [job] = model(svc, dataset)
    svc.store.set_status(job["id"], st.RUNNING)
    svc.store.update(job["id"], pid=2 ** 22 + 12345)  # no such process
    again = JobService(svc.root)
    assert again.show(job["id"])["status"] == st.INTERRUPTED


def test_sweep_group_clone_rename_delete(svc, dataset, tmp_path):
    jobs = model(svc, dataset, base_lr="0.01,0.001", batch_size="2,5")
    assert len(jobs) == 4 and {j["group_name"] for j in jobs} == {"tiny"}
    assert sorted(j["name"] for j in jobs)[0] == "tiny lr=0.001 bs=2"
    assert "max_iter: 8" in open(os.path.join(jobs[-1]["dir"], "solver.prototxt")).read()  # 10/5 × 4
    layer_file = tmp_path / "my_layer.py"
    layer_file.write_text("# python layer\n")
    [one] = model(svc, dataset, python_layer_files=[str(layer_file)])
    [copy] = svc.clone(one["id"])
    assert os.path.isfile(os.path.join(copy["dir"], "my_layer.py"))
    assert copy["name"] == "tiny (clone)"
    svc.rename(copy["id"], "renamed")
    assert svc.show(copy["id"])["name"] == "renamed"
    with pytest.raises(ServiceError, match="used by model"):
        svc.delete(dataset["id"])
    for j in svc.list_jobs("model"):
        svc.delete(j["id"])
    svc.delete(dataset["id"])
    assert svc.list_jobs() == []


def test_bad_network_is_refused_with_layer_and_blob(svc, dataset):
    bad = TINY_NET.replace('bottom: "conv1" top: "score"', 'bottom: "conv2" top: "score"')
    with pytest.raises(ServiceError, match="layer 'score' needs blob 'conv2'"):
        model(svc, dataset, network_text=bad)
    assert svc.list_jobs("model") == []
    with pytest.raises(ServiceError, match="unknown dataset"):
        svc.create_model({"dataset_id": "nope", "network_text": TINY_NET})


def _caffemodel(path, name, shape):
    """A caffemodel holding one convolution ``name`` of weight ``shape`` (zeros) and its bias."""
    import numpy as np
    from tests.web_helpers import write_weights
    write_weights(path, {name: [np.zeros(shape, np.float32), np.zeros(shape[0], np.float32)]})
    return str(path)


def test_pretrained_mismatch_offers_channel_surgery(svc, dataset, tmp_path):
    rgb = _caffemodel(tmp_path / "rgb.caffemodel", "conv1", (4, 3, 3, 3))
    with pytest.raises(ServiceError, match="rgb-to-gray"):
        model(svc, dataset, pretrained=[rgb])
    gray = _caffemodel(tmp_path / "gray.caffemodel", "conv1", (4, 1, 3, 3))
    [job] = model(svc, dataset, pretrained=[gray])
    report = json.load(open(os.path.join(job["dir"], "pretrained_report.json")))
    assert report["matched"] == ["conv1"] and report["mismatches"] == []
    assert svc.train(job["id"]) == st.DONE
    calls = [json.loads(l) for l in open(os.environ["FAKE_CAFFE_CALLS"])]
    assert ["copy_from", gray] in calls


def test_bundled_python_layer_is_copied(svc, dataset):
    net = TINY_NET + ('layer { name: "dice" type: "Python" bottom: "score" bottom: "label" top: "dice"'
                      ' python_param { module: "digits_python_layers" layer: "Dice" } exclude { stage: "deploy" } }\n')
    [job] = model(svc, dataset, network_text=net)
    assert os.path.isfile(os.path.join(job["dir"], "digits_python_layers.py"))


def wait_status(svc, job_id, wanted, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = svc.show(job_id)["status"]
        if status in wanted:
            return status
        time.sleep(0.05)
    return svc.show(job_id)["status"]


def test_worker_runs_queued_jobs_and_fails_models_of_errored_datasets(svc, dataset):
    [job] = model(svc, dataset)
    svc.submit(job["id"])
    bad_ds = svc.import_dataset(dataset["dir"], "broken")
    [orphan] = model(svc, bad_ds)
    svc.store.set_status(bad_ds["id"], st.ERROR, "build failed")
    svc.submit(orphan["id"])
    svc.start_worker()
    try:
        assert wait_status(svc, job["id"], (st.DONE, st.ERROR)) == st.DONE
        assert wait_status(svc, orphan["id"], (st.ERROR,)) == st.ERROR
        assert "dataset" in svc.show(orphan["id"])["error"]
    finally:
        svc._stop.set()


def test_abort_kills_a_runner_stuck_in_a_long_iteration(svc, dataset, monkeypatch):
    from caffeseg.jobs import scheduler
    monkeypatch.setattr(scheduler, "ABORT_GRACE_SECONDS", 0.5)
    monkeypatch.setenv("FAKE_STEP_SECONDS", "20")
    [job] = model(svc, dataset)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("status", svc.train(job["id"])))
    t.start()
    deadline = time.time() + 30
    while not os.path.exists(os.path.join(job["dir"], "runner_status.json")) and time.time() < deadline:
        time.sleep(0.02)
    started = time.time()
    assert svc.abort(job["id"]) is True
    t.join(15)
    assert result["status"] == st.ABORTED and time.time() - started < 10


def test_previous_job_snapshot_as_pretrained_weights(svc, dataset):
    [first] = model(svc, dataset)
    assert svc.train(first["id"]) == st.DONE
    # the fake backend writes placeholder snapshots: put a real caffemodel in place
    _caffemodel(os.path.join(first["dir"], "snapshot_iter_20.caffemodel"), "conv1", (4, 1, 3, 3))
    [second] = model(svc, dataset, pretrained_job_id=first["id"])
    weights = svc.show(second["id"])["options"]["pretrained"]
    assert weights == [os.path.join(first["dir"], "snapshot_iter_20.caffemodel")]


def test_model_on_a_dataset_still_building_waits_then_derives(svc, dataset):
    svc.store.set_status(dataset["id"], st.RUNNING)
    [job] = model(svc, dataset)
    assert not os.path.exists(os.path.join(job["dir"], "solver.prototxt"))
    svc.submit(job["id"])
    assert svc.scheduler.step() == []  # waits for its dataset
    svc.store.set_status(dataset["id"], st.DONE)
    svc.start_worker()
    try:
        assert wait_status(svc, job["id"], (st.DONE, st.ERROR)) == st.DONE
    finally:
        svc._stop.set()
    assert "max_iter: 20" in open(os.path.join(job["dir"], "solver.prototxt")).read()


# -- dataset jobs go through the queue like models --------------------------------------------
def _sunnybrook_values(image_folder, contour_folder, **extra):
    values = {"image_folder": str(image_folder), "contour_folder": str(contour_folder), "val_percent": 25}
    values.update(extra)
    return values


def _finish_builds(svc, timeout=60):
    for thread in list(svc.scheduler._building.values()):
        thread.join(timeout)
        assert not thread.is_alive(), "the dataset build did not finish"


def test_submitted_dataset_is_queued_then_built_by_the_worker(svc, phantom_release):
    job = svc.submit_dataset("sunnybrook", _sunnybrook_values(*phantom_release), "queued ds", group_name="g")
    assert job["status"] == st.WAITING  # returned at once; nothing built yet
    assert not os.path.exists(os.path.join(job["dir"], "dataset.json"))
    assert "queued" in open(os.path.join(job["dir"], "log.txt")).read()
    stop = threading.Event()
    worker = threading.Thread(target=svc.scheduler.loop, args=(stop,), kwargs={"poll": 0.05}, daemon=True)
    worker.start()
    try:
        deadline = time.time() + 60
        while svc.show(job["id"])["status"] in (st.WAITING, st.RUNNING) and time.time() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(10)
    shown = svc.show(job["id"])
    assert shown["status"] == st.DONE, shown["error"]
    assert [h[0] for h in shown["history"]] == ["Initialized", "Waiting", "Running", "Done"]
    assert shown["pid"] is None and shown["group_name"] == "g"
    info = json.load(open(os.path.join(job["dir"], "dataset.json")))
    assert info["stages"]["train"]["count"] > 0
    log = open(os.path.join(job["dir"], "log.txt")).read()
    assert "building: sunnybrook" in log and "entries to encode" in log and log.rstrip().endswith("done")
    progress = json.load(open(os.path.join(job["dir"], "build_status.json")))
    assert progress["phase"] == "finish" and progress["done_all"] == progress["total_all"] > 0
    # A model on it derives at once from the finished dataset.
    [m] = model(svc, shown)
    assert os.path.isfile(os.path.join(m["dir"], "train_val.prototxt"))


def test_dataset_form_errors_raise_before_anything_is_queued(svc, tmp_path):
    with pytest.raises(ServiceError) as info:
        svc.submit_dataset("sunnybrook", _sunnybrook_values(tmp_path / "nope", tmp_path / "nope2"), "bad")
    assert set(info.value.field_errors) >= {"image_folder", "contour_folder"}
    with pytest.raises(ServiceError, match="unknown dataset build option"):
        svc.submit_dataset("sunnybrook", {}, "bad", threads=2)
    with pytest.raises(ServiceError, match="no data plugin"):
        svc.submit_dataset("no-such-plugin", {}, "bad")
    assert svc.list_jobs("dataset") == []


def test_a_failing_build_records_its_message_and_log(svc, tmp_path):
    from tests.jobs_fixtures import contours_without_images
    job = svc.submit_dataset("sunnybrook", _sunnybrook_values(*contours_without_images(tmp_path)), "no images")
    assert svc.scheduler.step() == [job["id"]]
    _finish_builds(svc)
    shown = svc.show(job["id"])
    assert shown["status"] == st.ERROR and "no usable contoured image" in shown["error"]
    assert "error: " in open(os.path.join(job["dir"], "log.txt")).read()
    assert sorted(os.listdir(job["dir"])) == ["build_status.json", "log.txt"]  # nothing half-built


def test_abort_stops_a_running_build_and_resume_builds_it_again(svc, phantom_release, monkeypatch):
    from caffeseg.plugin.sunnybrook import SunnybrookPlugin
    encode = SunnybrookPlugin.encode
    gate = threading.Event()

    def slow_encode(self, entry, values):
        gate.wait(10)
        return encode(self, entry, values)
    monkeypatch.setattr(SunnybrookPlugin, "encode", slow_encode)
    job = svc.submit_dataset("sunnybrook", _sunnybrook_values(*phantom_release), "slow")
    svc.scheduler.step()
    deadline = time.time() + 30
    while svc.store.get(job["id"])["pid"] is None and time.time() < deadline:
        time.sleep(0.02)
    assert svc.show(job["id"])["status"] == st.RUNNING
    assert svc.abort(job["id"]) is True  # the flag; the build stops at its next record
    gate.set()
    _finish_builds(svc)
    shown = svc.show(job["id"])
    assert shown["status"] == st.ABORTED
    assert not os.path.exists(os.path.join(job["dir"], "dataset.json"))
    assert svc.resume(job["id"]) == st.WAITING
    assert svc.scheduler.step() == [job["id"]]
    _finish_builds(svc)
    assert svc.show(job["id"])["status"] == st.DONE
    assert not os.path.exists(os.path.join(job["dir"], "abort_requested"))


def test_create_dataset_still_builds_in_the_foreground(svc, phantom_release, tmp_path):
    events = []
    job = svc.create_dataset("sunnybrook", _sunnybrook_values(*phantom_release), "cli ds", progress=events.append)
    assert job["status"] == st.DONE and events[-1]["phase"] == "finish"
    assert svc.scheduler.step() == []  # nothing left for the worker
    (tmp_path / "e1").mkdir()
    (tmp_path / "e2").mkdir()
    with pytest.raises(ServiceError, match="is empty"):
        svc.create_dataset("sunnybrook", _sunnybrook_values(tmp_path / "e1", tmp_path / "e2"), "empty")


# -- dataset job lifecycle races (abort near the end, rebuilds, claims) -------------------------
def _run_worker_build(svc, job_id):
    assert svc.scheduler.step() == [job_id]
    _finish_builds(svc)
    return svc.show(job_id)


def test_an_abort_after_the_files_are_in_place_leaves_the_dataset_done(svc, phantom_release, monkeypatch):
    from caffeseg.jobs import dataset as builder
    write = builder._write_atomic

    def status_then_abort(path, text):  # the user clicks Abort just as the build completes
        write(path, text)
        open(os.path.join(os.path.dirname(path), "abort_requested"), "w").close()
    monkeypatch.setattr(builder, "_write_atomic", status_then_abort)
    job = svc.submit_dataset("sunnybrook", _sunnybrook_values(*phantom_release), "late abort")
    shown = _run_worker_build(svc, job["id"])
    assert shown["status"] == st.DONE, shown["error"]
    assert os.path.isfile(os.path.join(job["dir"], "dataset.json"))
    assert not os.path.exists(os.path.join(job["dir"], "abort_requested"))


def test_an_abort_before_the_move_keeps_the_log_and_completes(svc, phantom_release, monkeypatch):
    from caffeseg.jobs import dataset as builder
    move = builder._move_into_place

    def abort_then_move(tmp, out_dir, *args, **kw):  # the flag lands after the last record
        open(os.path.join(out_dir, "abort_requested"), "w").close()
        return move(tmp, out_dir, *args, **kw)
    monkeypatch.setattr(builder, "_move_into_place", abort_then_move)
    job = svc.submit_dataset("sunnybrook", _sunnybrook_values(*phantom_release), "abort at move")
    shown = _run_worker_build(svc, job["id"])
    assert shown["status"] == st.DONE, shown["error"]
    log = open(os.path.join(job["dir"], "log.txt")).read()
    assert "queued" in log and "building: sunnybrook" in log and log.rstrip().endswith("done")
    assert not os.path.exists(os.path.join(job["dir"], "abort_requested"))


def test_a_dataset_with_its_files_in_place_but_not_done_builds_again(svc, phantom_release):
    job = svc.submit_dataset("sunnybrook", _sunnybrook_values(*phantom_release), "rebuilt")
    assert _run_worker_build(svc, job["id"])["status"] == st.DONE
    # The worker died between moving the files into place and recording Done.
    svc.store.set_status(job["id"], st.INTERRUPTED, "the process running this job stopped")
    assert svc.resume(job["id"]) == st.WAITING
    shown = _run_worker_build(svc, job["id"])
    assert shown["status"] == st.DONE, shown["error"]
    log = open(os.path.join(job["dir"], "log.txt")).read()
    assert log.count("building: sunnybrook") == 2  # the log of both builds is kept
    svc.store.set_status(job["id"], st.ABORTED, "aborted")
    assert svc.resume(job["id"], wait=True) == st.DONE  # the foreground rebuild too
    assert svc.show(job["id"])["pid"] is None


def test_the_job_log_is_the_only_dataset_log(svc, phantom_release):
    job = svc.submit_dataset("sunnybrook", _sunnybrook_values(*phantom_release), "one log")
    assert _run_worker_build(svc, job["id"])["status"] == st.DONE
    assert not os.path.exists(os.path.join(job["dir"], "build.log"))
    assert open(os.path.join(job["dir"], "log.txt")).read().count("entries to encode") == 1


def test_abort_of_a_waiting_dataset_does_not_undo_a_workers_claim(svc, monkeypatch):
    job = svc._new_job("dataset", "raced", options={"plugin": "sunnybrook"})
    svc.store.set_status(job["id"], st.WAITING)
    get = svc.store.get

    def get_then_claimed(job_id):  # a worker claims the job right after abort read it Waiting
        found = get(job_id)
        if found["status"] == st.WAITING:
            svc.store.claim(job_id, st.WAITING, st.RUNNING, "worker", pid=os.getpid())
        return found
    monkeypatch.setattr(svc.store, "get", get_then_claimed)
    assert svc.abort(job["id"]) is True  # it is building now: the flag stops it
    monkeypatch.setattr(svc.store, "get", get)
    assert svc.show(job["id"])["status"] == st.RUNNING
    assert os.path.exists(os.path.join(job["dir"], "abort_requested"))
    waiting = svc._new_job("dataset", "still waiting", options={"plugin": "sunnybrook"})
    svc.store.set_status(waiting["id"], st.WAITING)
    assert svc.abort(waiting["id"]) is False and svc.show(waiting["id"])["status"] == st.ABORTED


def test_a_claimed_build_has_its_pid_from_the_claim_on(svc, monkeypatch):
    from caffeseg.jobs.scheduler import pid_alive
    job = svc._new_job("dataset", "claimed", options={"plugin": "sunnybrook"})
    svc.store.set_status(job["id"], st.WAITING)
    claim, update, pids, in_claim = svc.store.claim, svc.store.update, [], []

    def claim_then_restart(*args, **kw):  # another process opens the service right after the claim
        in_claim.append(True)
        try:
            ok = claim(*args, **kw)
        finally:
            in_claim.pop()
        svc.store.mark_running_interrupted(pid_alive)
        return ok

    def update_spy(job_id, **fields):
        if fields.get("pid") and not in_claim:
            pids.append(fields["pid"])
        return update(job_id, **fields)
    monkeypatch.setattr(svc.store, "claim", claim_then_restart)
    monkeypatch.setattr(svc.store, "update", update_spy)
    seen = []
    build = svc.build_dataset_job
    svc.scheduler.build_dataset = lambda job_id: seen.append(svc.store.get(job_id)["status"]) or build(job_id)
    assert svc.scheduler.step() == [job["id"]]
    _finish_builds(svc)
    assert seen == [st.RUNNING]  # not marked Interrupted under the worker
    assert pids == []  # the pid is written once, with the claim


def test_an_abort_racing_the_end_of_a_build_leaves_no_flag(svc, monkeypatch):
    from caffeseg.jobs import scheduler as scheduler_mod
    job = svc._new_job("dataset", "finishing", options={"plugin": "sunnybrook"})
    svc.store.claim(job["id"], st.INITIALIZED, st.RUNNING, "worker", pid=os.getpid())
    write = scheduler_mod._write_abort_flag

    def flag_after_the_build_ended(job_dir):  # the build records Done and checks for a flag first
        svc.store.set_status(job["id"], st.DONE)
        write(job_dir)
    monkeypatch.setattr(scheduler_mod, "_write_abort_flag", flag_after_the_build_ended)
    assert svc.abort(job["id"]) is False
    assert svc.show(job["id"])["status"] == st.DONE
    assert not os.path.exists(os.path.join(job["dir"], "abort_requested"))


def test_progress_and_eta_are_reported_while_the_runner_trains(svc, dataset, monkeypatch):
    """The metrics the model page polls carry the progress *during* training (it stayed 0.0 until the
    end: the runner wrote runner_status.json only at its start and end)."""
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.1")
    [job] = model(svc, dataset)  # 20 iterations, a snapshot every 5
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("status", svc.train(job["id"])))
    t.start()
    seen, shown = [], []
    while t.is_alive():
        m = svc.metrics(job["id"], since=0)
        if m["status"] == st.RUNNING and m["progress"] is not None:
            seen.append(m["progress"])
            shown.append(svc.show(job["id"])["progress"])
        time.sleep(0.05)
    t.join(30)
    assert result["status"] == st.DONE
    assert any(0 < p < 1 for p in seen), seen
    assert any(0 < p < 1 for p in shown), shown
    assert seen == sorted(seen)
    status = json.load(open(os.path.join(job["dir"], "runner_status.json")))
    assert status["state"] == "done" and status["iter"] == 20 and status["started"] <= status["time"]
    assert svc.metrics(job["id"])["progress"] == 1.0
    assert "training iterations 1 to 20" in open(os.path.join(job["dir"], "log.txt")).read()


def test_resume_cuts_the_metrics_file_before_the_runner_starts(svc, dataset, monkeypatch):
    """Ingestion restarts from offset 0 on resume; the file must already hold only the lines up
    to the restored snapshot then, or the runner's later cut would leave the ingestion offset in
    the middle of a rewritten line (an iteration lost from the charts)."""
    import sys
    [job] = model(svc, dataset)
    lines = [json.dumps({"iter": i, "phase": "train", "values": {"loss": 1.0 / i}}) + "\n" for i in range(1, 37)]
    with open(os.path.join(job["dir"], "metrics.jsonl"), "w") as f:
        f.writelines(lines + ['{"iter": 37, "pha'])  # killed mid-line
    open(os.path.join(job["dir"], "snapshot_iter_32.solverstate"), "wb").close()
    seen = os.path.join(job["dir"], "seen_by_runner.jsonl")
    # the "runner" only records what the metrics file holds when it starts
    monkeypatch.setattr(svc.scheduler, "runner_command", lambda job, resume=False, gpu=None, gpus=None: [
        sys.executable, "-c", "import shutil, sys; shutil.copy('metrics.jsonl', %r); sys.exit(0)" % seen])
    svc.scheduler.train(job["id"], resume=True, auto_evaluate=False)
    assert open(seen).read() == "".join(lines[:32])
    rows = [r[0] for r in svc.metrics(job["id"])["series"] if r[1] == "loss"]
    assert rows == list(range(1, 33))
