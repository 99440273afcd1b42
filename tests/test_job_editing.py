"""Job editing as DIGITS: rename/notes/group (PUT /jobs/<id>), bulk abort/delete/group, owners
(only the owner edits, aborts, deletes; anyone views and clones), and the job page's panels:
status timeline with durations, folder size, related jobs, pretrained weights used, metric
last/min/max."""
import os

import pytest

from caffeseg.jobs import job_details
from caffeseg.jobs import store as st
from caffeseg.jobs.service import NotOwner, ServiceError
from tests.jobs_fixtures import TINY_NET, fake_pycaffe_service, make_dataset_dir


@pytest.fixture
def svc(tmp_path, monkeypatch):
    return fake_pycaffe_service(tmp_path, monkeypatch)


@pytest.fixture
def dataset(svc, tmp_path):
    return svc.import_dataset(make_dataset_dir(str(tmp_path / "built")), "phantom", owner="alice")


def model(svc, dataset, owner=None, **kw):
    options = dict(dataset_id=dataset["id"], network_text=TINY_NET, epochs=4, name="tiny")
    options.update(kw)
    return svc.create_model(options, owner=owner)


def test_edit_name_notes_group_and_their_checks(svc, dataset):
    [job] = model(svc, dataset)
    edited = svc.edit(job["id"], name="  renamed  ", notes="lr too high?", group_name="sweep A")
    assert (edited["name"], edited["notes"], edited["group_name"]) == ("renamed", "lr too high?", "sweep A")
    assert svc.edit(job["id"], notes="", group_name="")["notes"] is None
    assert svc.show(job["id"])["group_name"] is None
    with pytest.raises(ServiceError, match="1-256"):
        svc.edit(job["id"], name="   ")
    with pytest.raises(ServiceError, match="64 KiB"):
        svc.edit(job["id"], notes="x" * 70000)
    with pytest.raises(ServiceError, match="cannot be edited"):
        svc.edit(job["id"], status="Done")
    svc.set_notes(job["id"], "kept")
    assert svc.show(job["id"])["notes"] == "kept"


def test_only_the_owner_edits_aborts_deletes_but_anyone_clones(svc, dataset):
    [mine] = model(svc, dataset, owner="alice")
    assert svc.show(mine["id"])["owner"] == "alice"
    for act in (lambda: svc.rename(mine["id"], "x", user="bob"),
                lambda: svc.edit(mine["id"], user="bob", notes="n"),
                lambda: svc.abort(mine["id"], user="bob"),
                lambda: svc.delete(mine["id"], user="bob")):
        with pytest.raises(NotOwner, match="belongs to alice"):
            act()
    assert svc.show(mine["id"])["name"] == "tiny"
    [copy] = svc.clone(mine["id"], owner="bob")  # others may clone: the clone is theirs
    assert copy["owner"] == "bob" and copy["options"]["cloned_from"] == mine["id"]
    svc.rename(copy["id"], "bob's", user="bob")
    # no login (user None) is the local single user; a job made without login is anyone's
    svc.rename(mine["id"], "by the local user")
    [nobody] = model(svc, dataset)
    svc.rename(nobody["id"], "anyone", user="carol")
    svc.delete(mine["id"], user="alice")
    with pytest.raises(KeyError):
        svc.show(mine["id"])


def test_bulk_group_abort_delete_reports_each_job(svc, dataset):
    jobs = model(svc, dataset, owner="alice", base_lr="0.1,0.01")
    [other] = model(svc, dataset, owner="bob")
    ids = [j["id"] for j in jobs] + [other["id"], "20260101-000000-dead"]
    moved = svc.bulk("group", ids, user="alice", group_name="round 2")
    assert moved["done"] == [j["id"] for j in jobs]
    assert set(moved["errors"]) == {other["id"], "20260101-000000-dead"}
    assert "belongs to bob" in moved["errors"][other["id"]]
    assert {svc.show(j["id"])["group_name"] for j in jobs} == {"round 2"}
    assert svc.show(other["id"])["group_name"] is None
    aborted = svc.bulk("abort", [jobs[0]["id"]], user="alice")  # not running: nothing to signal
    assert aborted == {"done": [jobs[0]["id"]], "errors": {}}
    deleted = svc.bulk("delete", ids[:2] + ids[:1], user="alice")
    assert deleted["done"] == ids[:2] and deleted["errors"] == {}
    assert [j["id"] for j in svc.list_jobs("model")] == [other["id"]]
    with pytest.raises(ServiceError, match="unknown bulk action"):
        svc.bulk("train", ids)


def test_owner_column_is_added_to_an_old_database(tmp_path):
    import sqlite3
    root = tmp_path / "old"
    root.mkdir()
    db = sqlite3.connect(str(root / "caffeseg.sqlite"))
    db.executescript("CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,"
                     " status TEXT NOT NULL, dir TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,"
                     " dataset_id TEXT, group_name TEXT, notes TEXT, options TEXT NOT NULL DEFAULT '{}', error TEXT,"
                     " pid INTEGER, metrics_offset INTEGER NOT NULL DEFAULT 0);"
                     "INSERT INTO jobs (id, kind, name, status, dir, created_at, updated_at)"
                     " VALUES ('20250101-000000-abcd', 'model', 'old', 'Done', '/x', 1, 1);")
    db.commit()
    db.close()
    store = st.JobStore(str(root))
    assert store.get("20250101-000000-abcd")["owner"] is None
    store.update("20250101-000000-abcd", owner="alice")
    assert store.get("20250101-000000-abcd")["owner"] == "alice"


def test_timeline_durations_by_hand():
    history = [{"status": "Initialized", "time": 100.0, "message": None},
               {"status": "Waiting", "time": 101.5, "message": None},
               {"status": "Running", "time": 110.0, "message": "started"},
               {"status": "Done", "time": 170.0, "message": None}]
    rows = job_details.status_timeline(history, now=500.0)
    assert [r["duration"] for r in rows] == [1.5, 8.5, 60.0, None]
    running = job_details.status_timeline(history[:3], now=130.0)
    assert running[-1]["duration"] == 20.0 and running[-1]["message"] == "started"


def test_folder_size_counts_files_once_and_skips_symlinks(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one").write_bytes(b"x" * 1000)
    (tmp_path / "two").write_bytes(b"y" * 24)
    os.link(tmp_path / "two", tmp_path / "a" / "two-again")
    (tmp_path / "big").write_bytes(b"z" * 5000)
    os.symlink(tmp_path / "big", tmp_path / "a" / "link")
    os.unlink(tmp_path / "big")
    assert job_details.folder_size(str(tmp_path)) == 1024
    assert job_details.folder_size(str(tmp_path / "missing")) == 0


def test_details_related_jobs_and_pretrained_used(svc, dataset, tmp_path):
    from tests.test_jobs_service import _caffemodel
    [first] = model(svc, dataset)
    assert svc.train(first["id"]) == st.DONE
    _caffemodel(os.path.join(first["dir"], "snapshot_iter_20.caffemodel"), "conv1", (4, 1, 3, 3))
    [second] = model(svc, dataset, pretrained_job_id=first["id"], name="fine-tuned")
    [copy] = svc.clone(first["id"])
    details = svc.details(second["id"])
    assert {(r["id"], r["relation"]) for r in details["related"]} == {
        (dataset["id"], "dataset"), (first["id"], "started from")}
    [used] = details["pretrained"]
    assert used["source"] == "job" and used["job_id"] == first["id"] and used["exists"]
    assert used["size"] == os.path.getsize(os.path.join(first["dir"], "snapshot_iter_20.caffemodel"))
    first_related = {(r["id"], r["relation"]) for r in svc.details(first["id"])["related"]}
    assert first_related == {(dataset["id"], "dataset"), (second["id"], "used by"), (copy["id"], "clone")}
    assert {(r["id"], r["relation"]) for r in svc.details(copy["id"])["related"]} == {
        (dataset["id"], "dataset"), (first["id"], "cloned from")}
    ds = svc.details(dataset["id"])
    assert {r["id"] for r in ds["related"]} == {first["id"], second["id"], copy["id"]}
    assert ds["owner"] == "alice" and ds["pretrained"] == []
    timeline = svc.details(first["id"])["timeline"]
    assert [t["status"] for t in timeline] == ["Initialized", "Running", "Done"]
    assert timeline[-1]["duration"] is None and all(t["duration"] >= 0 for t in timeline[:-1])
    expected = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(first["dir"]) for f in fs)
    assert svc.details(first["id"])["disk_bytes"] == expected


def test_metric_summary_last_min_max(svc, dataset):
    [job] = model(svc, dataset)
    assert svc.train(job["id"]) == st.DONE
    series = svc.metrics(job["id"])["series"]
    summary = svc.metric_summary(job["id"])
    losses = [(i, v) for i, n, v, p in series if n == "loss" and p == "train"]
    row = summary["train/loss"]
    assert row["last"] == losses[-1][1] and row["last_iteration"] == losses[-1][0]
    assert row["min"] == min(v for _, v in losses) and row["max"] == max(v for _, v in losses)
    assert "val/accuracy" in summary and "lr" in summary and summary["lr"]["phase"] is None
    by_hand = job_details.metric_summary([(1, "dice", 0.5, "val"), (3, "dice", 0.25, "val"),
                                          (2, "dice", 0.75, "val"), (4, "dice", None, "val")])
    assert by_hand["val/dice"] == {"name": "dice", "phase": "val", "last": 0.25, "min": 0.25, "max": 0.75,
                                   "last_iteration": 3}
