"""The thread policy (jobs/threads.py): counts per role from the cores and training slots, the
passive OpenMP wait, the operator's override, and that a runner the scheduler starts carries it
in its environment."""
import os
import stat
import textwrap
import subprocess
import sys

import pytest

from caffeseg.jobs import scheduler as sched
from caffeseg.jobs import store as st
from caffeseg.jobs import threads


@pytest.mark.parametrize("cores, trainings, expected", [
    (1, 1, 1),    # nothing to reserve on one core: the training still gets a thread
    (2, 1, 1),    # one core for the training, one for the web's answers
    (2, 2, 1),
    (4, 1, 3),
    (4, 2, 1),    # (4 - 1) // 2
    (16, 1, 12),  # 4 threads reserved for inference
    (16, 3, 4),
    (16, 20, 1),  # more slots than cores: one thread each, never zero
])
def test_training_threads_leave_the_inference_share_and_split_the_rest(cores, trainings, expected):
    assert threads.plan("training", cores=cores, trainings=trainings, env={}).threads == expected


def test_inference_and_dataset_threads():
    for cores, expected in ((1, 1), (2, 1), (4, 1), (8, 2), (16, 4), (64, 16)):
        assert threads.plan("inference", cores=cores, env={}).threads == expected
    assert threads.plan("dataset", cores=64, env={}).threads == 1


def test_the_roles_together_do_not_oversubscribe_the_cores():
    for cores in range(2, 65):
        for trainings in range(1, cores):
            train = threads.plan("training", cores=cores, trainings=trainings, env={}).threads
            infer = threads.plan("inference", cores=cores, env={}).threads
            if (cores - infer) >= trainings:  # enough cores for one thread each
                assert train * trainings + infer <= cores, (cores, trainings)


def test_without_the_inference_reserve_the_trainings_share_every_core():
    assert threads.plan("training", cores=2, reserve_inference=False, env={}).threads == 2
    assert threads.plan("training", cores=16, trainings=3, reserve_inference=False, env={}).threads == 5


def test_environment_sets_every_pool_and_the_passive_wait():
    env = threads.plan("training", cores=8, env={}).environment()
    assert env == {"OMP_NUM_THREADS": "6", "MKL_NUM_THREADS": "6", "OPENBLAS_NUM_THREADS": "6",
                   "OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0", "OPENBLAS_THREAD_TIMEOUT": "4"}


_IDLE_CPU_AFTER_A_GEMM = textwrap.dedent("""
    import time
    import numpy as np
    a = np.ones((600, 600), np.float32)
    a @ a  # starts OpenBLAS' pool; its worker then waits for the next call
    start = time.process_time()
    time.sleep(0.3)  # this thread sleeps: what the process burns now is the idle worker's waiting
    print(time.process_time() - start)
""")


def _idle_cpu_seconds(extra_env):
    env = {k: v for k, v in os.environ.items() if k not in threads.THREAD_VARIABLES + tuple(threads.PASSIVE_WAIT)}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", _IDLE_CPU_AFTER_A_GEMM], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(threads.usable_cores() < 2, reason="OpenBLAS starts no worker thread on one core")
def test_the_passive_wait_also_puts_openblas_idle_workers_to_sleep():
    """numpy's OpenBLAS (the engine's fc6/fc7 GEMMs; real Caffe's is the same code) keeps an idle
    worker polling for ~0.1 s after each call unless OPENBLAS_THREAD_TIMEOUT is small: with the
    plan's variables the process burns next to nothing while its only thread sleeps."""
    two_threads = {name: "2" for name in threads.THREAD_VARIABLES}
    spinning = _idle_cpu_seconds(two_threads)
    if spinning < 0.03:
        pytest.skip(f"this OpenBLAS's idle worker did not poll ({spinning:.3f} CPU s): nothing to put to sleep")
    env = threads.ThreadPlan("training", 2, 2).environment()
    assert env["OPENBLAS_THREAD_TIMEOUT"] == "4"
    assert _idle_cpu_seconds(env) < 0.02 < spinning


def test_the_operators_override_wins_for_the_roles_it_names():
    env = {"CAFFESEG_THREADS": "training=2, inference=3"}
    assert threads.plan("training", cores=16, env=env).threads == 2
    assert threads.plan("inference", cores=16, env=env).threads == 3
    assert threads.plan("dataset", cores=16, env=env).threads == 1


@pytest.mark.parametrize("text, words", [
    ("training", "not ROLE=THREADS"),
    ("gpu=2", "not ROLE=THREADS"),
    ("training=0", "whole number"),
    ("training=two", "whole number"),
])
def test_a_bad_override_is_named(text, words):
    with pytest.raises(ValueError) as err:
        threads.plan("training", cores=4, env={"CAFFESEG_THREADS": text})
    assert words in str(err.value) and "CAFFESEG_THREADS" in str(err.value)


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="role"):
        threads.plan("web", cores=2, env={})


def test_usable_cores_follow_the_affinity():
    assert threads.usable_cores() == len(os.sched_getaffinity(0))


def test_apply_before_torch_sets_the_wait_policy_of_a_new_process():
    # A fresh interpreter: the policy is applied before torch loads, so torch's pool starts so.
    code = ("import os, sys; sys.path.insert(0, %r); from caffeseg.jobs import threads; "
            "plan, effective = threads.apply_to_this_process('inference', cores=8); "
            "import torch; print(plan.threads, effective, torch.get_num_threads(), "
            "os.environ['OMP_WAIT_POLICY'])" % os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k not in threads.THREAD_VARIABLES}
    env.pop("CAFFESEG_THREADS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "True", "2", "PASSIVE"]


# -- the scheduler hands the plan to each runner ---------------------------------------------------

ENV_DUMP = "#!/bin/sh\n# stands in for the runner's interpreter: $1 is runner.py, $2 the job folder\nenv > \"$2/runner_env.txt\"\n"


def _runner_env(tmp_path, monkeypatch, **scheduler_args):
    fake_python = tmp_path / "python"
    fake_python.write_text(ENV_DUMP)
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
    store = st.JobStore(str(tmp_path / "jobs"))
    folder = os.path.join(store.root, "m1")
    os.makedirs(folder)
    store.add_job("m1", "model", "m1", folder, options={"backend": "engine"}, status=st.WAITING)
    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    monkeypatch.setenv("OMP_NUM_THREADS", "99")  # an inherited value does not leak through
    monkeypatch.delenv("CAFFESEG_THREADS", raising=False)
    scheduler = sched.Scheduler(store, python=str(fake_python), backend="engine", **scheduler_args)
    assert scheduler.train("m1") == st.DONE
    with open(os.path.join(folder, "runner_env.txt")) as f:
        return dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)


def test_a_runner_starts_with_the_training_plan_in_its_environment(tmp_path, monkeypatch):
    env = _runner_env(tmp_path, monkeypatch, cpu_slots=3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "4"  # (16-4)//3
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["KMP_BLOCKTIME"] == "0"
    assert env["OPENBLAS_THREAD_TIMEOUT"] == "4"


def test_a_gpu_scheduler_splits_the_cores_per_gpu_slot(tmp_path, monkeypatch):
    env = _runner_env(tmp_path, monkeypatch, gpus=[0, 1])
    assert env["OMP_NUM_THREADS"] == "6"  # (16 - 4) // 2 trainings at once


def test_caffeseg_serve_sets_the_inference_plan_before_torch_loads(tmp_path):
    # A fresh process, as `caffeseg serve` runs: the fake server reports what the app would compute with.
    code = textwrap.dedent("""
        import os, sys
        from caffeseg import cli
        from caffeseg.web import server
        cli.sample_folder = lambda args, cases=None: None
        def serve(config, dev=False):
            import torch
            print(os.environ["OMP_WAIT_POLICY"], os.environ["OMP_NUM_THREADS"], torch.get_num_threads())
        server.serve = serve
        sys.exit(cli.main(["--data", sys.argv[1], "serve"]))
    """)
    env = {k: v for k, v in os.environ.items() if k not in threads.THREAD_VARIABLES + ("CAFFESEG_THREADS",)}
    wanted = str(threads.plan("inference", env={}).threads)  # fewer than torch's default (the cores) from 2 cores up
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PASSIVE", wanted, wanted]


# -- a dataset build yields to the trainings and the web -------------------------------------------

def _niceness_of_this_thread():
    import threading
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_lowering_a_threads_priority_leaves_the_rest_of_the_process_alone():
    import threading
    seen = {}

    def build():
        seen["before"] = _niceness_of_this_thread()
        seen["after"] = threads.lower_this_threads_priority()
        child = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"],
                               capture_output=True, text=True, timeout=60)
        seen["child"] = int(child.stdout)

    main_before = _niceness_of_this_thread()
    worker = threading.Thread(target=build)
    worker.start()
    worker.join()
    assert seen["after"] == min(seen["before"] + threads.DATASET_NICENESS, 19) > seen["before"]
    assert seen["child"] == seen["after"]  # what the build starts (a process pool) inherits it
    assert _niceness_of_this_thread() == main_before  # the web's threads keep their priority


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_the_scheduler_builds_a_queued_dataset_at_the_lower_priority(tmp_path):
    store = st.JobStore(str(tmp_path / "jobs"))
    folder = os.path.join(store.root, "d1")
    os.makedirs(folder)
    store.add_job("d1", "dataset", "d1", folder, status=st.WAITING)
    scheduler = sched.Scheduler(store, backend="engine")
    seen = {}
    scheduler.build_dataset = lambda job_id: seen.update(job=job_id, niceness=_niceness_of_this_thread())
    assert scheduler.step() == ["d1"]
    scheduler._building["d1"].join(30)
    assert seen["job"] == "d1"
    assert seen["niceness"] == min(_niceness_of_this_thread() + threads.DATASET_NICENESS, 19)


def test_an_inference_takes_every_core_while_nothing_else_computes():
    assert threads.inference_threads_now(others_computing=False, cores=2, env={}) == 2
    assert threads.inference_threads_now(others_computing=True, cores=2, env={}) == 1
    assert threads.inference_threads_now(others_computing=True, cores=16, env={}) == 4
    assert threads.inference_threads_now(others_computing=False, cores=16, env={"CAFFESEG_THREADS": "inference=3"}) == 3


def test_the_service_borrows_cores_only_while_no_job_runs(tmp_path):
    from caffeseg.jobs.service import JobService
    store = st.JobStore(str(tmp_path))
    store.add_job("a1", "model", "m", str(tmp_path / "a1"))

    class Service:
        pass
    service = Service()
    service.store = store
    cores = threads.usable_cores()
    assert store.running_count() == 0
    assert JobService.inference_threads(service) == cores
    store.set_status("a1", st.RUNNING)
    assert store.running_count() == 1
    assert JobService.inference_threads(service) == threads.plan("inference").threads
