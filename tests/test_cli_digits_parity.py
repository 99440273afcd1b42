"""caffeseg CLI for what DIGITS did in its web UI only: job edit/bulk/details, info (one
function for CLI and web), the RMSProp decay option."""
import os

from caffeseg import cli
from tests.jobs_fixtures import make_dataset_dir
from tests.test_cli import env, run_json  # noqa: F401  (the CLI's fake-pycaffe fixture)


def _dataset_and_models(env, capsys, *extra):
    tmp_path, common, net = env
    code, ds = run_json(capsys, common + ["dataset", "import", make_dataset_dir(str(tmp_path / "b")), "--name", "ph"])
    assert code == 0
    code, jobs = run_json(capsys, common + ["model", "create", "--dataset", ds["id"], "--network-file", net,
                                            "--epochs", "2", "--base-lr", "0.1,0.01"] + list(extra))
    assert code == 0
    return ds, jobs


def test_job_edit_bulk_and_details(env, capsys):
    tmp_path, common, net = env
    ds, jobs = _dataset_and_models(env, capsys)
    code, job = run_json(capsys, common + ["job", "edit", jobs[0]["id"], "--name", "first", "--notes", "try 1"])
    assert code == 0 and (job["name"], job["notes"]) == ("first", "try 1")
    assert cli.main(common + ["job", "edit", jobs[0]["id"]]) == cli.EXIT_BAD_INPUT
    assert "give --name" in capsys.readouterr().err
    code, result = run_json(capsys, common + ["job", "bulk", "group", jobs[0]["id"], jobs[1]["id"], "--group", "g2"])
    assert code == 0 and result == {"done": [jobs[0]["id"], jobs[1]["id"]], "errors": {}}
    code, details = run_json(capsys, common + ["job", "details", ds["id"]])
    assert code == 0 and {r["id"] for r in details["related"]} == {j["id"] for j in jobs}
    assert details["disk_bytes"] > 0 and details["timeline"][-1]["status"] == "Done"
    code = cli.main(["--data", str(tmp_path / "data"), "job", "details", jobs[0]["id"]])
    text = capsys.readouterr().out
    assert code == 0 and "dataset      %s ph (Done)" % ds["id"] in text and "Initialized" in text
    code, result = run_json(capsys, common + ["job", "bulk", "delete", ds["id"], jobs[0]["id"]])
    assert code == cli.EXIT_BAD_INPUT and result["done"] == [jobs[0]["id"]]
    assert "used by model" in result["errors"][ds["id"]]


def test_rms_decay_reaches_the_solver(env, capsys):
    ds, jobs = _dataset_and_models(env, capsys, "--solver", "RMSProp", "--rms-decay", "0.9")
    solver = open(os.path.join(jobs[0]["dir"], "solver.prototxt")).read()
    assert "rms_decay: 0.9" in solver and 'type: "RMSProp"' in solver and "momentum" not in solver


def test_info_is_the_shared_server_info(env, capsys, monkeypatch):
    import socket

    import torch
    from caffeseg.jobs import real_caffe, server_info
    tmp_path, common, net = env
    monkeypatch.setattr(real_caffe, "caffe_info", lambda check_import=True, env=None: {
        "found": False, "hint": "run `make caffe`"})
    code, info = run_json(capsys, common + ["info"])
    assert code == 0 and info["server"] == socket.gethostname() and info["torch"] == torch.__version__
    assert info["engine_version"] == "1.0.0" and info["cpu"]["cores"] == os.cpu_count()
    assert isinstance(info["gpus"], list) and info["memory_total"] > 0
    same = server_info.server_info()
    assert {k: same[k] for k in ("server", "torch", "engine", "plugins")} == \
        {k: info[k] for k in ("server", "torch", "engine", "plugins")}
    text = server_info.server_info_text(dict(info, gpus=[{"index": 0, "name": "H200", "memory_total": 141 << 30}]))
    assert "on %s" % socket.gethostname() in text.splitlines()[0] and "GPUs: 0 H200 (141.0 GiB)" in text


def test_export_zip_make_pretrained_import_layers_and_test_many(env, capsys, monkeypatch):
    import zipfile

    from caffeseg.jobs import infer as inf
    from tests.test_jobs_eval_infer_export import FakeCaffe
    from tests.web_helpers import write_weights
    import numpy as np
    tmp_path, common, net = env
    ds, jobs = _dataset_and_models(env, capsys)
    job = jobs[0]
    assert cli.main(common + ["model", "train", job["id"]]) == 0
    capsys.readouterr()
    write_weights(inf.latest_snapshot(job["dir"]), {"conv1": [np.ones((4, 1, 3, 3), np.float32), np.zeros(4, np.float32)]})
    code, out = run_json(capsys, common + ["model", "export", job["id"], "--format", "zip"])
    assert code == 0 and zipfile.is_zipfile(out["path"])
    code, made = run_json(capsys, common + ["model", "make-pretrained", job["id"], "--name", "mine"])
    assert code == 0 and made["name"] == "mine" and made["source"]["job_id"] == job["id"]
    code, imported = run_json(capsys, common + ["pretrained", "--import", out["path"]])
    assert code == 0 and imported["labels"] == ["background", "lv"] and imported["id"] != made["id"]
    code, table = run_json(capsys, common + ["pretrained", "--layers", imported["id"]])
    assert code == 0 and table["layers"][0]["shapes"] == [[4, 1, 3, 3], [4]] and table["total"] == 40
    monkeypatch.setattr(inf, "get_caffe", lambda backend="auto": FakeCaffe)
    import cv2
    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        picture = np.zeros((8, 8), np.uint8)
        picture[:k + 1, :2] = 200
        cv2.imwrite(str(images / ("%d.png" % k)), picture)
    code, done = run_json(capsys, common + ["model", "test-many", job["id"], "--folder", str(images), "--probabilities"])
    assert code == 0 and done["status"]["state"] == "Done" and [r["lv_area_px"] for r in done["rows"]] == [2, 4, 6]
    assert os.path.isfile(os.path.join(done["folder"], "results.csv"))
