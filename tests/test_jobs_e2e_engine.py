"""End to end on the PyTorch engine: tiny LMDB dataset → model trained 2 epochs by the runner
subprocess → snapshots, metric series, evaluation table, inference on a record and on a DICOM
upload → export → the exported model reloads and predicts the same."""
import json
import os

import numpy as np
import pytest

from caffeseg.engine.datum import array_to_datum
from caffeseg.engine.lmdb_io import LmdbWriter
from caffeseg.jobs import export as ex
from caffeseg.jobs import infer as inf
from caffeseg.jobs import store as st
from caffeseg.jobs.service import JobService
from tests.jobs_fixtures import TINY_NET, make_dataset_dir
from tests.test_jobs_eval_infer_export import write_dicom


def phantom_like(n, seed):
    rng = np.random.RandomState(seed)
    images, labels = [], []
    for _ in range(n):
        img = (rng.rand(1, 16, 16) * 40).astype(np.uint8)
        lab = np.zeros((1, 16, 16), np.uint8)
        y, x = rng.randint(2, 9, size=2)
        img[0, y:y + 6, x:x + 6] += 180
        lab[0, y:y + 6, x:x + 6] = 1
        images.append(img)
        labels.append(lab)
    return images, labels


def write_db(path, arrays):
    with LmdbWriter(path) as w:
        for i, a in enumerate(arrays):
            w.put("%08d" % i, array_to_datum(a).SerializeToString())


def phantom_dataset(tmp_path, train, val):
    """A dataset folder of 16x16 phantom-like images and labels: ``train`` + ``val`` records."""
    ds = make_dataset_dir(str(tmp_path / "ds"), train=train, val=val, shape=(1, 16, 16))
    for stage, n, seed in (("train", train, 0), ("val", val, 1)):
        images, labels = phantom_like(n, seed)
        write_db(os.path.join(ds, "%s_db" % stage, "features"), images)
        write_db(os.path.join(ds, "%s_db" % stage, "labels"), labels)
    return ds


def engine_job(tmp_path, **settings):
    """JobService on the engine backend, the 8 + 2 phantom dataset imported, one TINY_NET model
    created with ``settings`` over the shared defaults: (service, dataset, job)."""
    svc = JobService(str(tmp_path / "jobs"), backend="engine")
    dataset = svc.import_dataset(phantom_dataset(tmp_path, train=8, val=2), "tiny")
    [job] = svc.create_model(dict({"dataset_id": dataset["id"], "network_text": TINY_NET, "base_lr": 0.01,
                                   "set_num_output": True, "random_seed": 1}, **settings))
    return svc, dataset, job


@pytest.mark.timeout(180)
def test_engine_end_to_end(tmp_path):
    svc, dataset, job = engine_job(tmp_path, epochs=2)
    status = svc.train(job["id"], evaluate=True)
    log = open(os.path.join(job["dir"], "log.txt")).read()
    assert status == st.DONE, log
    assert [s[0] for s in svc.snapshots(job["id"])] == [4, 8]
    series = svc.metrics(job["id"])["series"]
    assert [r[0] for r in series if r[1] == "loss" and r[3] == "train"] == list(range(1, 9))
    assert [r[0] for r in series if r[1] == "accuracy" and r[3] == "val"] == [4, 8]
    table = svc.evaluation(job["id"])
    assert table is not None, log
    assert table["count"] == 2 and 0.0 <= table["summary"]["dice"]["mean"] <= 1.0

    result = svc.infer(job["id"], record="00000000")["results"][0]
    assert result["class_map"].shape == (16, 16) and "metrics" in result
    image, _ = inf.record_by_key(svc.show(dataset["id"])["dir"], "00000000")
    dcm = write_dicom(tmp_path / "up.dcm", np.asarray(image[0], np.uint16))
    from_dicom = svc.infer(job["id"], image_path=dcm)["results"][0]
    assert np.array_equal(from_dicom["class_map"], result["class_map"])

    one = svc.infer_record(job["id"], "00000000", visualize=True)
    assert np.array_equal(one["class_map"], result["class_map"]) and one["label"].shape == (16, 16)
    assert {l["kind"] for l in one["layers"]} == {"activation", "weights"}
    upload = svc.infer_image(job["id"], dcm)
    assert np.array_equal(upload["class_map"], result["class_map"]) and upload["label"] is None

    archive = svc.export(job["id"])
    out = ex.extract(archive, str(tmp_path / "unpacked"))
    again = inf.DeployModel.from_export(out, backend="engine").predict(image)
    assert np.array_equal(again["class_map"], result["class_map"])
    assert np.allclose(again["probabilities"], result["probabilities"], atol=1e-6)


@pytest.mark.timeout(180)
def test_engine_sigkill_and_resume_continue_the_series(tmp_path):
    import signal
    import threading
    import time
    svc, _, job = engine_job(tmp_path, epochs=100, snapshot_interval=2, val_interval=5)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("status", svc.train(job["id"])))
    t.start()
    metrics = os.path.join(job["dir"], "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and not any(n.endswith(".solverstate") for n in os.listdir(job["dir"])):
        time.sleep(0.01)
    time.sleep(0.05)
    os.kill(svc.store.get(job["id"])["pid"], signal.SIGKILL)
    t.join(60)
    assert result["status"] == st.INTERRUPTED
    killed_at = max(json.loads(l)["iter"] for l in open(metrics) if l.strip().endswith("}"))
    assert killed_at < 400, "the run finished before it could be killed"
    assert svc.resume(job["id"], wait=True) == st.DONE
    rows = [r for r in svc.metrics(job["id"])["series"] if r[1] == "loss" and r[3] == "train"]
    assert [r[0] for r in rows] == list(range(1, 401))
    assert [r[0] for r in svc.metrics(job["id"])["series"] if r[1] == "accuracy"] == list(range(20, 401, 20))


@pytest.mark.timeout(120)
def test_cli_infer_writes_sunnybrook_contours(tmp_path, capsys):
    from caffeseg import cli
    ds = phantom_dataset(tmp_path, train=4, val=2)
    common = ["--data", str(tmp_path / "data"), "--json", "--backend", "engine"]
    assert cli.main(common + ["dataset", "import", ds, "--name", "d"]) == 0
    dataset_id = json.loads(capsys.readouterr().out)["id"]
    net = tmp_path / "net.prototxt"
    net.write_text(TINY_NET)
    assert cli.main(common + ["model", "create", "--dataset", dataset_id, "--network-file", str(net),
                              "--epochs", "1", "--set-num-output", "--train"]) == 0
    job_id = json.loads(capsys.readouterr().out)[0]["id"]
    out = tmp_path / "pred"
    assert cli.main(common + ["infer", job_id, "--record", "00000000", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert "dice" in result["metrics"] and os.path.isfile(result["files"][0])
    for path in result["files"][2:]:
        for line in open(path):
            x, y = line.split()
            assert 0 <= float(x) < 16 and 0 <= float(y) < 16
    assert cli.main(common + ["model", "export", job_id]) == 0
    assert json.loads(capsys.readouterr().out)["path"].endswith(".tar.gz")


@pytest.mark.timeout(150)
def test_lab_on_the_phantom(tmp_path, capsys):
    """caffeseg lab, cut to one phantom case and the lab CNN: phantom → Sunnybrook dataset →
    model → training → evaluation → the table."""
    from caffeseg import cli
    code = cli.main(["lab", "--data", str(tmp_path), "--cases", "1", "--epochs", "1", "--only", "lab_cnn",
                     "--backend", "engine", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["network"] for r in rows] == ["lab CNN"] and rows[0]["status"] == "Done"
    assert rows[0]["dice_mean"] is not None and "accuracy" in rows[0]["val"]
