"""GPU choice as DIGITS offers it (jobs/gpus.py) and the scheduler's assignment, on a faked GPU
list: next available / given / several, never one GPU to two jobs unless both allow it, the
free-GPU count, the hardware panel's readers."""
import os
import threading

import pytest

from caffeseg.jobs import gpus as gpu_policy
from caffeseg.jobs import hardware
from caffeseg.jobs import scheduler as sched
from caffeseg.jobs import store as st
from caffeseg.jobs.service import JobService, ServiceError

R = gpu_policy.GpuRequest


# -- the policy -------------------------------------------------------------------------------------

def test_requests_from_options():
    assert gpu_policy.request_from_options({}) == R(None, None, False)
    assert gpu_policy.request_from_options({"gpu_count": "2"}) == R(2, None, False)
    assert gpu_policy.request_from_options({"gpus": "3, 1", "share_gpus": "true"}) == R(None, [1, 3], True)
    assert gpu_policy.request_from_options({"gpus": [0]}) == R(None, [0], False)
    assert gpu_policy.request_from_options({"gpu_count": 0}) == R(0, None, False)


@pytest.mark.parametrize("options, field, words", [
    ({"gpus": "0,x"}, "gpus", "'x' is not a GPU index"),
    ({"gpus": "1,1"}, "gpus", "listed twice"),
    ({"gpu_count": "many"}, "gpu_count", "not a whole number"),
    ({"gpu_count": -1}, "gpu_count", "0 (CPU) or more"),
    ({"gpu_count": 1, "gpus": [0]}, "gpus", "not both"),
])
def test_bad_requests_name_their_field(options, field, words):
    with pytest.raises(gpu_policy.GpuRequestError) as err:
        gpu_policy.request_from_options(options)
    assert err.value.field == field and words in str(err.value)


def test_next_available_takes_the_lowest_free_gpus_or_waits():
    holders = {0: [False], 1: [], 2: [], 3: [False]}
    assert gpu_policy.assign(R(None, None, False), [0, 1, 2, 3], holders) == [1]
    assert gpu_policy.assign(R(2, None, False), [0, 1, 2, 3], holders) == [1, 2]
    assert gpu_policy.assign(R(3, None, False), [0, 1, 2, 3], holders) is None  # waits
    assert gpu_policy.assign(R(0, None, False), [0, 1, 2, 3], holders) == []  # the CPU


def test_given_gpus_wait_until_every_one_is_free():
    assert gpu_policy.assign(R(None, [1, 2], False), [0, 1, 2], {1: [], 2: []}) == [1, 2]
    assert gpu_policy.assign(R(None, [1, 2], False), [0, 1, 2], {1: [], 2: [False]}) is None


def test_sharing_needs_every_job_on_the_gpu_to_allow_it():
    sharing, exclusive = {0: [True]}, {0: [False]}
    assert gpu_policy.assign(R(None, [0], True), [0], sharing) == [0]
    assert gpu_policy.assign(R(None, [0], True), [0], exclusive) is None  # the other did not ask
    assert gpu_policy.assign(R(None, [0], False), [0], sharing) is None  # this one did not ask


def test_without_gpus_a_default_job_trains_on_the_cpu_and_a_gpu_request_is_refused():
    assert gpu_policy.assign(R(None, None, False), [], {}) == []
    with pytest.raises(gpu_policy.GpuRequestError, match="this machine has 0"):
        gpu_policy.assign(R(1, None, False), [], {})
    with pytest.raises(gpu_policy.GpuRequestError, match="GPU 2 is not one of this machine's"):
        gpu_policy.check_request(R(None, [2], False), [0, 1])


def test_pycaffe_takes_one_gpu_only():
    gpu_policy.check_request(R(1, None, False), [0, 1], "pycaffe")
    with pytest.raises(gpu_policy.GpuRequestError, match="real-pycaffe backend trains a job on one GPU"):
        gpu_policy.check_request(R(2, None, False), [0, 1], "pycaffe")


def test_detect_without_a_driver_is_empty():
    assert gpu_policy.detect() == []  # this machine has no NVIDIA driver


# -- the scheduler on faked GPUs --------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    return st.JobStore(str(tmp_path / "jobs"))


def _model(store, job_id, **options):
    folder = os.path.join(store.root, job_id)
    os.makedirs(folder, exist_ok=True)
    return store.add_job(job_id, "model", job_id, folder, options=dict(options, backend="engine"),
                         status=st.WAITING)


class FakeTrainings:
    """Stands in for Scheduler.train: records each start and holds it 'running' until released."""

    def __init__(self, monkeypatch):
        self.started = {}
        self.release = threading.Event()
        fake = self

        def train(scheduler, job_id, resume=False, gpu=None, claimed=False, gpus=None, **kwargs):
            fake.started[job_id] = gpus
            fake.release.wait(30)
            scheduler.store.set_status(job_id, st.DONE)
        monkeypatch.setattr(sched.Scheduler, "train", train)


def test_scheduler_gives_each_gpu_to_one_job(store, monkeypatch):
    trainings = FakeTrainings(monkeypatch)
    _model(store, "a-next")
    _model(store, "b-two", gpu_count=2)
    _model(store, "c-given", gpus=[0])
    _model(store, "d-cpu", gpu_count=0)
    scheduler = sched.Scheduler(store, backend="engine", gpus=[0, 1, 2])
    try:
        started = scheduler.step()
        # oldest first: a gets GPU 0, b the next two; c (GPU 0) waits; d runs on the CPU
        assert sorted(started) == ["a-next", "b-two", "d-cpu"]
        assert trainings.started == {"a-next": [0], "b-two": [1, 2], "d-cpu": []}
        assert store.get("b-two")["options"]["assigned_gpus"] == [1, 2]
        assert scheduler.free_gpus() == []
        assert scheduler.step() == []  # c still waits for GPU 0
        assert store.get("c-given")["status"] == st.WAITING
    finally:
        trainings.release.set()
    for t in list(scheduler._running.values()):
        t.join(10)
    assert scheduler.step() == ["c-given"]  # GPU 0 is free again
    trainings.release.set()


def test_sharing_jobs_may_share_a_gpu(store, monkeypatch):
    trainings = FakeTrainings(monkeypatch)
    _model(store, "a", gpus=[0], share_gpus=True)
    _model(store, "b", gpus=[0], share_gpus=True)
    _model(store, "c", gpus=[0])
    scheduler = sched.Scheduler(store, backend="engine", gpus=[0])
    try:
        assert sorted(scheduler.step()) == ["a", "b"]
        assert scheduler.step() == []  # c did not ask to share
        assert sorted(j for j, _ in scheduler.gpu_holders()[0]) == ["a", "b"]
    finally:
        trainings.release.set()


def test_cpu_jobs_keep_to_the_cpu_slots(store, monkeypatch):
    trainings = FakeTrainings(monkeypatch)
    for name in ("a", "b", "c"):
        _model(store, name)
    scheduler = sched.Scheduler(store, backend="engine", cpu_slots=2)
    try:
        assert sorted(scheduler.step()) == ["a", "b"]
        assert trainings.started == {"a": [], "b": []}
    finally:
        trainings.release.set()


def test_runner_command_for_one_and_several_gpus(store):
    job = _model(store, "m")
    scheduler = sched.Scheduler(store, backend="engine", gpus=[0, 1])
    assert scheduler.runner_command(job, gpus=[1])[-2:] == ["--gpu", "1"]
    assert scheduler.runner_command(job, gpus=[0, 1])[-2:] == ["--gpus", "0,1"]
    assert "--gpu" not in scheduler.runner_command(job, gpus=[])


def test_foreground_training_with_busy_gpus_says_so(store, monkeypatch):
    _model(store, "holder", gpus=[0], assigned_gpus=[0])  # a running job holding GPU 0
    store.set_status("holder", st.RUNNING)
    _model(store, "m", gpus=[0])
    scheduler = sched.Scheduler(store, backend="engine", gpus=[0])
    assert scheduler.train("m") == st.ERROR
    assert "busy" in store.get("m")["error"] and "free: none" in store.get("m")["error"]


# -- the service: form checks, the home page's count, the hardware panel ------------------------------

def test_service_refuses_gpus_the_machine_lacks_naming_the_field(tmp_path):
    from tests.test_jobs_e2e_engine import phantom_dataset
    from tests.jobs_fixtures import TINY_NET
    svc = JobService(str(tmp_path / "jobs"), backend="engine", gpus=[0, 1])
    dataset = svc.import_dataset(phantom_dataset(tmp_path, train=4, val=2), "tiny")
    base = {"dataset_id": dataset["id"], "network_text": TINY_NET, "set_num_output": True}
    with pytest.raises(ServiceError) as err:
        svc.create_model(dict(base, gpus="2"))
    assert err.value.field_errors == {"gpus": "gpus: GPU 2 is not one of this machine's (0,1)"}
    with pytest.raises(ServiceError) as err:
        svc.create_model(dict(base, gpu_count=2, backend="pycaffe"))
    assert "gpu_count" in err.value.field_errors
    [job] = svc.create_model(dict(base, gpu_count=2))
    assert job["options"]["gpu_count"] == 2


def test_gpu_summary_and_hardware_panel(tmp_path):
    svc = JobService(str(tmp_path / "jobs"), backend="engine", gpus=[0, 1])
    folder = os.path.join(svc.root, "m1")
    os.makedirs(folder)
    svc.store.add_job("m1", "model", "m1", folder, options={"assigned_gpus": [1]}, status=st.RUNNING)
    svc.store.update("m1", pid=os.getpid())
    assert svc.gpu_summary() == {"total": 2, "free": [0], "jobs": {0: [], 1: ["m1"]}}
    panel = svc.hardware("m1")
    assert panel["device"] == "GPU 1"
    assert panel["gpus"] == []  # no NVML on this machine
    assert panel["process"]["pid"] == os.getpid() and panel["process"]["rss_bytes"] > 10 * 2 ** 20
    assert panel["system"]["cores"] >= 1 and panel["system"]["memory_total"] > 0


def test_process_usage_counts_child_processes_and_is_none_when_gone():
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        usage = hardware.process_usage(os.getpid())
        assert usage["processes"] >= 2 and usage["threads"] >= 2
    finally:
        child.kill()
        child.wait()
    assert hardware.process_usage(child.pid) is None


def test_an_epoch_of_a_two_gpu_job_has_half_the_iterations():
    from caffeseg.jobs import derive
    one = derive.derive_solver(100, 10, 5, 5, {"epochs": 2})
    two = derive.derive_solver(100, 10, 5, 5, {"epochs": 2, "gpu_count": 2})
    given = derive.derive_solver(100, 10, 5, 5, {"epochs": 2, "gpus": "0,1,2,3"})
    assert (one.max_iter, two.max_iter, given.max_iter) == (40, 20, 10)  # ceil(100 / (5 × N)) × 2


def test_cli_model_create_records_the_gpu_choice():
    from caffeseg import cli
    args = cli.build_parser().parse_args(["model", "create", "--dataset", "x", "--gpu-count", "2", "--share-gpus"])
    options = cli._model_options(args)
    assert (options["gpu_count"], options["share_gpus"]) == (2, True) and "gpus" not in options
    args = cli.build_parser().parse_args(["model", "create", "--dataset", "x", "--use-gpus", "1,3"])
    assert gpu_policy.request_from_options(cli._model_options(args)) == R(None, [1, 3], False)
    args = cli.build_parser().parse_args(["model", "create", "--dataset", "x"])
    assert not {"gpu_count", "gpus", "share_gpus"} & set(cli._model_options(args))
