"""SQLite store: WAL, status history, metrics keyed (no duplicates), claims, interrupted marking."""
import sqlite3

import pytest

from caffeseg.jobs import store as st
from caffeseg.jobs.paths import JobPathError, atomic_write, check_job_id, inside, new_job_id


def test_jobs_history_metrics_and_claims(tmp_path):
    s = st.JobStore(str(tmp_path))
    assert sqlite3.connect(s.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.add_job("a1", "model", "m", str(tmp_path / "a1"), options={"x": 1})
    s.set_status("a1", st.WAITING)
    other = st.JobStore(str(tmp_path))  # a second process' view of the same database
    assert other.claim("a1", st.WAITING, st.RUNNING) is True
    assert s.claim("a1", st.WAITING, st.RUNNING) is False
    assert [h["status"] for h in s.history("a1")] == ["Initialized", "Waiting", "Running"]
    s.add_metrics("a1", [(1, "train", "loss", 0.5), (2, "train", "loss", 0.4), (2, "val", "dice", 0.1)])
    s.add_metrics("a1", [(2, "train", "loss", 0.3)])  # re-ingested iteration: replaced
    assert s.metrics_since("a1", 2) == [(2, "train", "loss", 0.3), (2, "val", "dice", 0.1)]
    s.drop_metrics_after("a1", 1)
    assert s.metrics_since("a1") == [(1, "train", "loss", 0.5)]
    s.update("a1", pid=999999999)
    assert s.mark_running_interrupted(lambda pid: False) == ["a1"]
    assert s.get("a1")["status"] == st.INTERRUPTED and s.get("a1")["options"] == {"x": 1}
    with pytest.raises(st.StoreError):
        s.update("a1", status="Done")
    with pytest.raises(KeyError):
        s.get("nope")


def test_paths_are_safe(tmp_path):
    assert check_job_id(new_job_id()) 
    for bad in ("../x", "a/b", "", ".hidden", "x" * 80):
        with pytest.raises(JobPathError):
            check_job_id(bad)
    with pytest.raises(JobPathError):
        inside(str(tmp_path), "../etc/passwd")
    path = tmp_path / "f.txt"
    atomic_write(str(path), "one")
    atomic_write(str(path), "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
