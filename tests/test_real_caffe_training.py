"""One model job, two backends: the engine and real BVLC Caffe (`make caffe`), both through the
jobs service, the scheduler and the runner (the pycaffe runner is launched with the build's
interpreter by jobs.real_caffe, no PYTHONPATH set by hand).

Same dataset (a phantom built by the Sunnybrook plugin, gray 16-bit), same initial weights from
one .caffemodel, no random transforms, the lab's Dice layer in validation: the training curves agree to 1e-3 (relative) over the
first 10 iterations, both end Done with the same snapshots, and each job records the backend
that trained it. The engine's snapshot and its exported archive, loaded by real Caffe, predict
what `caffeseg infer` predicts (max abs difference of probabilities below 1e-4).
"""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from caffeseg import cli
from caffeseg.jobs import store as st
from caffeseg.jobs.dataset import build_dataset
from caffeseg.jobs.infer import latest_snapshot, preprocessing_from_train_val, record_by_key
from caffeseg.jobs.service import JobService
from caffeseg.plugin.sunnybrook import SunnybrookPlugin, phantom
from tests.real_caffe_helpers import real_caffe, run_task
from tests.web_helpers import write_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NET = """
name: "tiny_seg"
layer { name: "train_data" type: "Data" top: "data" include { stage: "train" } data_param { batch_size: 2 } }
layer { name: "train_label" type: "Data" top: "label" include { stage: "train" } data_param { batch_size: 2 } }
layer { name: "val_data" type: "Data" top: "data" include { stage: "val" } data_param { batch_size: 1 } }
layer { name: "val_label" type: "Data" top: "label" include { stage: "val" } data_param { batch_size: 1 } }
layer { name: "scale" type: "Power" bottom: "data" top: "scaled" power_param { scale: 0.002 } }
layer { name: "conv1" type: "Convolution" bottom: "scaled" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "score_low" type: "Convolution" bottom: "conv2" top: "score_low" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "upscore" type: "Deconvolution" bottom: "score_low" top: "score"
        param { lr_mult: 0 } convolution_param { num_output: 2 group: 2 kernel_size: 2 stride: 2 bias_term: false } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" exclude { stage: "deploy" } }
layer { name: "accuracy" type: "Accuracy" bottom: "score" bottom: "label" top: "accuracy" include { stage: "val" } }
layer { name: "dice" type: "Python" bottom: "score" bottom: "label" top: "dice" include { stage: "val" }
        python_param { module: "digits_python_layers" layer: "Dice" } }
"""


def initial_weights(path):
    rng = np.random.RandomState(7)
    write_weights(path, {
        "conv1": [rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), np.full(4, 0.05, np.float32)],
        "conv2": [rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), np.zeros(4, np.float32)],
        "score_low": [rng.normal(0, 0.3, (2, 4, 1, 1)).astype(np.float32), np.array([0.5, -0.5], np.float32)],
        "upscore": [np.ones((2, 1, 2, 2), np.float32)],
    })
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both jobs trained: (service, {backend: job}, dataset folder, data root, weights)."""
    real_caffe()
    tmp = tmp_path_factory.mktemp("cross")
    release = str(tmp / "release")
    phantom.generate(release, cases=2, seed=3, slices=3)
    built = str(tmp / "built")
    build_dataset(SunnybrookPlugin(), {"image_folder": os.path.join(release, "challenge_training"),
                                      "contour_folder": os.path.join(release, "TrainingDataContours"),
                                      "val_percent": 25, "split_by": "slice", "channel_conversion": "L"}, built,
                  encoding="none")
    data_root = str(tmp / "data")
    svc = JobService(os.path.join(data_root, "jobs"), backend="auto")
    dataset = svc.import_dataset(built, "phantom gray")
    weights = initial_weights(tmp / "init.caffemodel")
    jobs = {}
    for backend in ("engine", "pycaffe"):
        [job] = svc.create_model({"dataset_id": dataset["id"], "network_text": NET, "name": "on " + backend,
                                  "epochs": 4, "base_lr": 0.05, "snapshot_interval": 1, "val_interval": 1,
                                  "pretrained": [weights], "backend": backend, "random_seed": 1, "mean": "image"})
        status = svc.train(job["id"])
        log = open(os.path.join(job["dir"], "log.txt")).read()
        assert status == st.DONE, "%s job failed:\n%s" % (backend, log[-3000:])
        jobs[backend] = svc.show(job["id"])
    return svc, jobs, svc.show(dataset["id"])["dir"], data_root


def _series(svc, job, phase):
    rows = {}
    for iteration, name, value, row_phase in svc.metrics(job["id"])["series"]:
        if row_phase == phase:
            rows.setdefault(name, {})[iteration] = value
    return rows


@pytest.mark.timeout(900)
def test_engine_and_real_caffe_train_the_same_curve(trained):
    svc, jobs, _, _ = trained
    engine_train, caffe_train = (_series(svc, jobs[b], "train") for b in ("engine", "pycaffe"))
    assert set(engine_train) == set(caffe_train) == {"loss"}
    first = list(range(1, 11))
    assert set(first) <= set(engine_train["loss"]) and set(first) <= set(caffe_train["loss"])
    e = np.array([engine_train["loss"][i] for i in first])
    c = np.array([caffe_train["loss"][i] for i in first])
    assert np.all(np.abs(e - c) / np.abs(c) < 1e-3), "train loss, engine vs real Caffe:\n%s\n%s" % (e, c)
    assert np.ptp(c) > 1e-3, "the loss should move over 10 iterations (it is a training, not a constant)"
    engine_val, caffe_val = (_series(svc, jobs[b], "val") for b in ("engine", "pycaffe"))
    assert set(engine_val) == set(caffe_val) and {"accuracy", "dice"} <= set(caffe_val)  # Dice: python_layers/
    for name in caffe_val:
        for iteration in sorted(i for i in caffe_val[name] if i <= 10):
            a, b = engine_val[name][iteration], caffe_val[name][iteration]
            assert abs(a - b) <= 1e-3 * max(abs(b), 1e-6), "val %s at %d: %s vs %s" % (name, iteration, a, b)


@pytest.mark.timeout(900)
def test_same_status_and_snapshots_and_the_backend_each_job_used(trained):
    svc, jobs, _, _ = trained
    assert jobs["engine"]["status"] == jobs["pycaffe"]["status"] == st.DONE
    shots = {b: [it for it, _ in svc.snapshots(jobs[b]["id"])] for b in jobs}
    max_iter = int(svc.show(jobs["engine"]["id"])["iters_per_epoch"] * 4)
    assert shots["engine"] == shots["pycaffe"] and len(shots["engine"]) == 4 and shots["engine"][-1] == max_iter
    found = real_caffe()
    for backend, job in jobs.items():
        used = svc.show(job["id"])["trained_on"]
        assert used["name"] == backend and used["device"] == "cpu"
        if backend == "pycaffe":
            assert used["module"] == os.path.join(found.pythonpath, "caffe") and used["version"] == "1.0.0"
            assert os.path.realpath(used["python"]) == os.path.realpath(found.python)
        else:
            assert used["module"].endswith("engine")


def _probabilities_from_cli(data_root, job_id, key, out, capsys):
    capsys.readouterr()
    code = cli.main(["--data", data_root, "--json", "--backend", "engine", "infer", job_id,
                     "--record", key, "--out", str(out)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    return np.load([f for f in result["files"] if f.endswith("_probabilities.npy")][0])


@pytest.mark.timeout(900)
def test_real_caffe_predicts_what_caffeseg_infer_predicts(trained, tmp_path, capsys):
    svc, jobs, dataset_dir, data_root = trained
    job = jobs["engine"]
    key = "00000001"
    expected = _probabilities_from_cli(data_root, job["id"], key, tmp_path / "cli", capsys)
    image, _ = record_by_key(dataset_dir, key)
    np.save(str(tmp_path / "image.npy"), image)

    # the engine's snapshot in the job folder
    pre = preprocessing_from_train_val(os.path.join(job["dir"], "train_val.prototxt"))
    assert pre["mean_file"], "the derived net subtracts the dataset's mean image"
    (tmp_path / "pre.json").write_text(json.dumps(pre))
    run_task("predict", os.path.join(job["dir"], "deploy.prototxt"), latest_snapshot(job["dir"]),
             tmp_path / "pre.json", tmp_path / "image.npy", tmp_path / "job.npy")
    got = np.load(str(tmp_path / "job.npy"))
    assert got.shape == expected.shape == (2, 256, 256)
    assert np.abs(got - expected).max() < 1e-4

    # the exported archive, unpacked as a user would
    archive = svc.export(job["id"])
    unpacked = tmp_path / "archive"
    with tarfile.open(archive) as tar:
        tar.extractall(str(unpacked))
    info = json.loads((unpacked / "info.json").read_text())
    pre = dict(info["preprocess"], mean_file=str(unpacked / info["preprocess"]["mean_file"]))
    (tmp_path / "pre_archive.json").write_text(json.dumps(pre))
    run_task("predict", unpacked / "deploy.prototxt", unpacked / info["snapshot"], tmp_path / "pre_archive.json",
             tmp_path / "image.npy", tmp_path / "archive.npy")
    got = np.load(str(tmp_path / "archive.npy"))
    assert np.abs(got - expected).max() < 1e-4
    assert 0.0 < expected[1].max() and expected[1].min() < 1.0


def _queued_pycaffe_job(svc, trained_job, name):
    [job] = svc.create_model({"dataset_id": trained_job["dataset_id"], "network_text": NET, "name": name,
                              "epochs": 1, "base_lr": 0.05, "backend": "pycaffe", "random_seed": 1})
    svc.submit(job["id"])
    assert svc.show(job["id"])["status"] == st.WAITING
    return job


def _run_worker_until_done(command, svc, job_id, timeout=300):
    """Start a worker process (no PYTHONPATH of ours in its environment), wait for the job to
    end, stop the worker; the job."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAFFESEG_CAFFE_ROOT")}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and svc.show(job_id)["status"] in (st.WAITING, st.RUNNING):
            assert proc.poll() is None, "the worker exited: %s" % proc.stdout.read().decode()[-2000:]
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return svc.show(job_id)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("how", ["system python3 -m caffeseg.jobs.worker", "caffeseg worker"])
def test_a_pycaffe_worker_trains_a_queued_job_on_real_caffe(trained, how):
    svc, jobs, _, data_root = trained
    job = _queued_pycaffe_job(svc, jobs["engine"], "queued " + how)
    if how.startswith("system"):
        command = ["/usr/bin/python3", "-m", "caffeseg.jobs.worker", "--backend", "pycaffe", "--data", data_root]
    else:
        command = [os.path.join(os.path.dirname(sys.executable), "caffeseg"), "worker", "--backend", "pycaffe",
                   "--data", data_root]
    done = _run_worker_until_done(command, svc, job["id"])
    log = open(os.path.join(job["dir"], "log.txt")).read()
    assert done["status"] == st.DONE, log[-3000:]
    assert done["trained_on"]["name"] == "pycaffe"
    assert done["trained_on"]["module"] == os.path.join(real_caffe().pythonpath, "caffe")
    assert [r[0] for r in svc.metrics(job["id"])["series"] if r[1] == "loss" and r[3] == "train"] == \
        list(range(1, int(done["iters_per_epoch"]) + 1))


@pytest.mark.timeout(900)
def test_caffeseg_backend_pycaffe_model_train_runs_on_real_caffe(trained, capsys):
    svc, jobs, _, data_root = trained
    [job] = svc.create_model({"dataset_id": jobs["engine"]["dataset_id"], "network_text": NET,
                              "name": "cli train", "epochs": 1, "base_lr": 0.05, "random_seed": 1})
    capsys.readouterr()
    code = cli.main(["--data", data_root, "--json", "--backend", "pycaffe", "model", "train", job["id"]])
    assert code == 0, open(os.path.join(job["dir"], "log.txt")).read()[-3000:]
    assert json.loads(capsys.readouterr().out)["status"] == st.DONE
    assert svc.show(job["id"])["trained_on"]["name"] == "pycaffe"
