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
