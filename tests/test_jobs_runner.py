"""The runner drives a backend only through the pycaffe API: checked with a recording fake
``caffe`` module, under this Python and under Python 3.9 (the pycaffe Docker path)."""
import json
import os
import subprocess
import sys

import pytest

from caffeseg.jobs import runner
from tests.jobs_fixtures import install_fake_caffe

PY39 = "/root/.pyenv/versions/3.9.18/bin/python3.9"

SOLVER = """net: "train_val.prototxt"
test_iter: 2
test_interval: 4
base_lr: 0.1
display: 1
max_iter: 10
lr_policy: "step"
gamma: 0.5
stepsize: 4
snapshot: 4
snapshot_prefix: "snapshot"
train_state { stage: "train" }
test_state { stage: "val" }
"""


def make_job(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / "solver.prototxt").write_text(SOLVER)
    (job / "job.json").write_text(json.dumps({"epochs": 5}))
    return job


def run(python, tmp_path, job, *args, env=None):
    fake = install_fake_caffe(str(tmp_path / "fake"))
    full_env = dict(os.environ, PYTHONPATH=fake, FAKE_CAFFE_CALLS=str(tmp_path / "calls.jsonl"), **(env or {}))
    return subprocess.run([python, runner.__file__, str(job), "--backend", "pycaffe"] + list(args),
                          env=full_env, capture_output=True, text=True, timeout=60)


def read_lines(path):
    return [json.loads(l) for l in open(path)]


@pytest.mark.parametrize("python", [sys.executable, PY39])
def test_runner_trains_validates_snapshots(tmp_path, python):
    if not os.path.exists(python):
        pytest.skip("no Python 3.9 on this machine")
    job = make_job(tmp_path)
    proc = run(python, tmp_path, job)
    assert proc.returncode == 0, proc.stderr
    calls = [c[0] for c in read_lines(tmp_path / "calls.jsonl")]
    assert calls[:2] == ["set_mode_cpu", "get_solver"] and calls.count("step") == 10
    run_text = (job / "solver_run.prototxt").read_text()
    assert "test_interval: 11" in run_text and "snapshot: 0" in run_text and "test_interval: 4" not in run_text
    lines = read_lines(job / "metrics.jsonl")
    train = [l for l in lines if l["phase"] == "train"]
    val = [l for l in lines if l["phase"] == "val"]
    assert [l["iter"] for l in train] == list(range(1, 11))
    assert train[0]["values"]["loss"] == pytest.approx(1.0) and train[0]["epoch"] == pytest.approx(0.5)
    # step policy: lr for iterations 0..3 is 0.1, 4..7 is 0.05, 8.. is 0.025
    assert [l["lr"] for l in train][3:5] == [pytest.approx(0.1), pytest.approx(0.05)]
    assert [l["iter"] for l in val] == [4, 8, 10]
    assert val[0]["values"] == {"loss": pytest.approx(1.0), "accuracy": pytest.approx(0.5)}
    assert calls.count("test_forward") == 6 and "share_with" in calls
    models = sorted(p.name for p in job.glob("*.caffemodel"))
    assert models == ["snapshot_iter_10.caffemodel", "snapshot_iter_4.caffemodel", "snapshot_iter_8.caffemodel"]
    assert [p.name for p in job.glob("*.solverstate")] == ["snapshot_iter_10.solverstate"]
    assert json.loads((job / "runner_status.json").read_text())["state"] == "done"


def test_runner_stops_on_nan_with_advice(tmp_path):
    job = make_job(tmp_path)
    proc = run(sys.executable, tmp_path, job, env={"FAKE_NAN_AT": "3"})
    assert proc.returncode == runner.EXIT_NAN
    status = json.loads((job / "runner_status.json").read_text())
    assert status["state"] == "error" and "try a lower learning rate" in status["message"]
    assert "iteration 3" in status["message"]


def test_resume_restores_and_truncates_metrics(tmp_path):
    job = make_job(tmp_path)
    (job / "snapshot_iter_4.solverstate").write_text("4")
    with open(job / "metrics.jsonl", "w") as f:
        for it in range(1, 7):
            f.write(json.dumps({"iter": it, "phase": "train", "values": {"loss": 1}}) + "\n")
        f.write('{"iter": 7, "pha')  # torn line of a killed run
    proc = run(sys.executable, tmp_path, job, "--resume")
    assert proc.returncode == 0, proc.stderr
    iters = [l["iter"] for l in read_lines(job / "metrics.jsonl") if l["phase"] == "train"]
    assert iters == list(range(1, 11))
    assert ["restore", "snapshot_iter_4.solverstate"] in read_lines(tmp_path / "calls.jsonl")


def test_weights_loaded_and_bad_backend_reported(tmp_path):
    job = make_job(tmp_path)
    proc = run(sys.executable, tmp_path, job, "--weights", "/x/a.caffemodel,/x/b.caffemodel")
    assert proc.returncode == 0
    calls = read_lines(tmp_path / "calls.jsonl")
    assert ["copy_from", "/x/a.caffemodel"] in calls and ["copy_from", "/x/b.caffemodel"] in calls
    missing = subprocess.run([sys.executable, runner.__file__, str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == runner.EXIT_ERROR and "error:" in missing.stderr


def test_learning_rate_formulas():
    f = runner.read_solver_fields('base_lr: 0.1\nlr_policy: "multistep"\ngamma: 0.1\nstepvalue: 5\nstepvalue: 8\n')
    assert runner.learning_rate(f, 4) == pytest.approx(0.1)
    assert runner.learning_rate(f, 5) == pytest.approx(0.01)
    assert runner.learning_rate(f, 9) == pytest.approx(0.001)
    f = runner.read_solver_fields("base_lr: 1\nlr_policy: \"poly\"\npower: 2\nmax_iter: 10\n")
    assert runner.learning_rate(f, 5) == pytest.approx(0.25)


def test_runner_is_python39_clean():
    """vermin: nothing in the runner needs a Python newer than 3.9."""
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    if not os.path.exists(vermin):
        pytest.skip("vermin not installed")
    proc = subprocess.run([vermin, "--no-tips", "-t=3.9-", "--violations", runner.__file__],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_runner_stops_when_the_abort_flag_appears(tmp_path):
    """A scheduler on another host cannot signal the runner: it writes the flag file instead."""
    job = make_job(tmp_path)
    (job / runner.ABORT_FLAG).write_text("0")
    proc = run(sys.executable, tmp_path, job)
    assert proc.returncode == runner.EXIT_ABORTED, proc.stderr
    calls = [c[0] for c in read_lines(tmp_path / "calls.jsonl")]
    assert "step" not in calls
    assert json.loads((job / "runner_status.json").read_text())["state"] == "aborted"
