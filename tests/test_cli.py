"""caffeseg CLI on a fake pycaffe: import a dataset, create + train a model, list, metrics,
exit codes and one-line error messages."""
import json
import os

import pytest

from caffeseg import cli
from tests.jobs_fixtures import TINY_NET, install_fake_caffe, make_dataset_dir


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", install_fake_caffe(str(tmp_path / "fake")))
    monkeypatch.setenv("FAKE_CAFFE_CALLS", str(tmp_path / "calls.jsonl"))
    net = tmp_path / "net.prototxt"
    net.write_text(TINY_NET)
    return tmp_path, ["--data", str(tmp_path / "data"), "--json"], str(net)


def run_json(capsys, argv):
    code = cli.main(argv)
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else None)


def test_dataset_model_train_metrics(env, capsys):
    tmp_path, common, net = env
    code, ds = run_json(capsys, common + ["dataset", "import", make_dataset_dir(str(tmp_path / "b")), "--name", "ph"])
    assert code == 0 and ds["kind"] == "dataset"
    code, jobs = run_json(capsys, ["model", "create", "--dataset", ds["id"], "--network-file", net, "--epochs", "2",
                                   "--backend", "pycaffe", "--train"] + common)
    assert code == 0 and [j["status"] for j in jobs] == ["Done"]
    code, listed = run_json(capsys, common + ["model", "list"])
    assert [j["id"] for j in listed] == [jobs[0]["id"]]
    code, m = run_json(capsys, common + ["model", "metrics", jobs[0]["id"], "--since", "10"])
    assert code == 0 and {r[0] for r in m["series"]} == {10}


def test_errors_are_one_line_with_exit_codes(env, capsys):
    tmp_path, common, net = env
    assert cli.main(common + ["model", "show", "20990101-000000-abcd"]) == cli.EXIT_BAD_INPUT
    assert "no job" in capsys.readouterr().err
    assert cli.main(common + ["model", "show", "../etc"]) == cli.EXIT_BAD_INPUT
    assert "invalid job id" in capsys.readouterr().err
    code = cli.main(common + ["dataset", "import", str(tmp_path), "--name", "x"])
    assert code == cli.EXIT_BAD_INPUT and "no dataset.json" in capsys.readouterr().err
    assert cli.main(common + ["model", "evaluate", "20990101-000000-abcd"]) == cli.EXIT_BAD_INPUT


def test_phantom_dataset_model_on_the_real_builder(env, capsys):
    """phantom → dataset create (the Sunnybrook plugin + dataset builder) → model create with a
    standard network and the image mean → trained by the runner (fake pycaffe here)."""
    tmp_path, common, net = env
    code, out = run_json(capsys, common + ["phantom", "--cases", "1"])
    assert code == 0
    sample = out["path"]
    code, ds = run_json(capsys, common + ["dataset", "create", "--image-folder",
                                          os.path.join(sample, "challenge_training"), "--contour-folder",
                                          os.path.join(sample, "TrainingDataContours"), "--name", "ph"])
    assert code == 0 and ds["status"] == "Done"
    code, jobs = run_json(capsys, common + ["model", "create", "--dataset", ds["id"], "--network", "lab_cnn",
                                            "--epochs", "1", "--mean", "image", "--backend", "pycaffe", "--train"])
    assert code == 0 and jobs[0]["status"] == "Done"
    train_val = open(os.path.join(jobs[0]["dir"], "train_val.prototxt")).read()
    assert os.path.join(ds["dir"], "train_db", "features") in train_val
    assert os.path.join(ds["dir"], "mean.binaryproto") in train_val
    deploy = open(os.path.join(jobs[0]["dir"], "deploy.prototxt")).read()
    assert "dim: 256" in deploy and "Data" not in deploy


def test_queue_leaves_jobs_waiting_for_the_worker_of_their_backend(env, capsys):
    """model create --queue and model train ID --queue: Waiting, taken by a worker that runs the
    recorded backend (a pycaffe job by a pycaffe worker only), and then trained by it; resume
    --queue still refuses a job that never ran."""
    from caffeseg.jobs import scheduler as sched
    from caffeseg.jobs import store as st
    tmp_path, common, net = env
    code, ds = run_json(capsys, common + ["dataset", "import", make_dataset_dir(str(tmp_path / "b")), "--name", "d"])
    code, [queued] = run_json(capsys, common + ["model", "create", "--dataset", ds["id"], "--network-file", net,
                                                "--epochs", "1", "--backend", "pycaffe", "--queue"])
    assert code == 0 and queued["status"] == "Waiting" and queued["options"]["backend"] == "pycaffe"
    code, [later] = run_json(capsys, common + ["model", "create", "--dataset", ds["id"], "--network-file", net,
                                               "--epochs", "1"])
    assert later["status"] == "Initialized"
    assert cli.main(common + ["model", "resume", later["id"], "--queue"]) == cli.EXIT_BAD_INPUT
    assert "only Interrupted, Aborted or Error jobs resume" in capsys.readouterr().err
    code, out = run_json(capsys, common + ["model", "train", later["id"], "--queue"])
    assert code == 0 and out == {"id": later["id"], "status": "Waiting"}
    assert cli.main(common + ["model", "train", later["id"], "--queue"]) == cli.EXIT_BAD_INPUT
    assert "already Waiting" in capsys.readouterr().err

    store = st.JobStore(str(tmp_path / "data" / "jobs"))
    engine_worker = sched.Scheduler(store, backend="engine")
    pycaffe_worker = sched.Scheduler(store, backend="pycaffe")
    assert [j["id"] for j in engine_worker.ready_jobs()] == [later["id"]]  # no recorded backend
    assert [j["id"] for j in pycaffe_worker.ready_jobs()] == [queued["id"]]
    # the fake pycaffe on PYTHONPATH is what `import caffe` gives the runner: the pycaffe worker trains it
    assert pycaffe_worker.step() == [queued["id"]]
    pycaffe_worker._running[queued["id"]].join(60)
    assert store.get(queued["id"])["status"] == "Done" and store.get(later["id"])["status"] == "Waiting"


def test_version_and_info_report_the_installation(env, capsys, monkeypatch):
    import torch
    from caffeseg.jobs import real_caffe
    tmp_path, common, net = env
    monkeypatch.setattr(real_caffe, "caffe_info", lambda check_import=True, env=None: {
        "found": False, "hint": "run `make caffe`"})
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("caffeseg ") and "torch %s" % torch.__version__ in text
    assert "real Caffe: not found (run `make caffe`)" in text and "data plugins: image_segmentation, sunnybrook" in text
    code, info = run_json(capsys, common + ["info"])
    assert code == 0 and info["torch"] == torch.__version__ and info["real_caffe"]["found"] is False
    assert info["plugins"] == ["image_segmentation", "sunnybrook"] and info["broken_plugins"] == []
