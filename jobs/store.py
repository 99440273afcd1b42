"""SQLite (WAL) store of job records, status history and metric series.

One database file in the jobs root (``caffeseg.sqlite``). WAL mode lets the web server read
while a worker writes; every change is one transaction, so a crash never leaves a half-written
job. Metric rows are keyed by (job, phase, name, iteration): ingesting the same iteration twice
replaces the value instead of duplicating it, and "metrics since iteration N" is one index range.

Statuses follow DIGITS: Initialized, Waiting, Running, Done, Error, Aborted, plus Interrupted
(a job that was Running when its process vanished; it can be resumed).

A pid is stored with the host that recorded it and the process's start time (``pid_started``,
from /proc on Linux), so a later process can tell the same runner from another process that
got the same pid. A model job also records the process supervising it (``supervisor_pid``,
``supervisor_started``: the worker or server that claimed it, then waits for its runner), so a
process starting meanwhile leaves a job alone whose supervisor is alive, even before its runner
has a pid. A database locked by another process for longer than ``busy_timeout``
raises ``StoreBusy`` (an ``sqlite3.OperationalError``) naming the file; callers that must not
give up (the scheduler supervising a training) retry it with backoff.
"""
import functools
import json
import os
import socket
import sqlite3
import threading
import time

from caffeseg.jobs.paths import DB_NAME, check_job_id

INITIALIZED, WAITING, RUNNING, DONE, ERROR, ABORTED, INTERRUPTED = (
    "Initialized", "Waiting", "Running", "Done", "Error", "Aborted", "Interrupted")
FINISHED = (DONE, ERROR, ABORTED)
ACTIVE = (INITIALIZED, WAITING, RUNNING)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    dir TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    dataset_id TEXT,
    group_name TEXT,
    notes TEXT,
    options TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    pid INTEGER,
    metrics_offset INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS status_history (
    job_id TEXT NOT NULL,
    status TEXT NOT NULL,
    time REAL NOT NULL,
    message TEXT
);
CREATE INDEX IF NOT EXISTS status_history_job ON status_history(job_id, time);
CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL,
    iteration INTEGER NOT NULL,
    phase TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (job_id, iteration, phase, name)
) WITHOUT ROWID;
"""


class StoreError(ValueError):
    pass


class StoreBusy(sqlite3.OperationalError):
    """The database stayed locked by another process for the whole busy timeout."""


def is_busy(exc):
    """Whether an ``sqlite3.OperationalError`` says another connection holds the database (locked
    or busy): a condition to wait out, unlike a broken schema or a missing file."""
    text = str(exc)
    return "locked" in text or "busy" in text


def _busy_is_explained(method):
    """sqlite's bare "database is locked" → StoreBusy naming the file and what to do."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StoreBusy:
            raise
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            raise StoreBusy("the job database %s is locked by another process (waited %g s): %s; "
                            "try again in a moment" % (self.path, self.busy_timeout, exc)) from None
    return call


def _proc_stat(pid):
    """Fields of /proc/PID/stat after the command name (field 3, the state, first), or None."""
    try:
        with open("/proc/%d/stat" % int(pid)) as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None


def process_start_time(pid):
    """Epoch seconds at which process ``pid`` started (Linux /proc), or None if unknown."""
    try:
        fields = _proc_stat(pid)
        ticks = int(fields[19])  # field 22 of stat(5), counted after the ")" of the name
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration, TypeError):
        return None


def same_process(pid, started):
    """Whether ``pid`` is alive and (when both start times are known) is the process that
    started at ``started``: not another one that was given the same pid later."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        pass  # alive, owned by another user
    except (OSError, ValueError):
        return False
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # exited, not yet reaped by its parent: it runs no more
    now = process_start_time(pid)
    return started is None or now is None or abs(now - float(started)) < 2.0


class JobStore:
    """Thread-safe access to the jobs database (one connection per thread)."""

    def __init__(self, root, busy_timeout=None):
        self.root = os.path.abspath(root)
        # Seconds a statement waits for another process's lock before StoreBusy.
        self.busy_timeout = float(busy_timeout if busy_timeout is not None
                                  else os.environ.get("CAFFESEG_DB_BUSY_TIMEOUT", 30))
        os.makedirs(self.root, exist_ok=True)
        self.path = os.path.join(self.root, DB_NAME)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)  # executescript manages its own transaction
        columns = {r["name"] for r in self._db().execute("PRAGMA table_info(jobs)")}
        for column, kind in (("host", "TEXT"), ("pid_started", "REAL"), ("owner", "TEXT"),
                             ("supervisor_pid", "INTEGER"), ("supervisor_started", "REAL")):
            if column not in columns:  # databases made before hosts / start times / owners were recorded
                try:
                    self._db().execute("ALTER TABLE jobs ADD COLUMN %s %s" % (column, kind))
                except sqlite3.OperationalError:  # another process added it first
                    pass

    # -- connection ---------------------------------------------------------------------
    def _db(self):
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    class _Tx:
        def __init__(self, db):
            self.db = db

        def __enter__(self):
            # A transaction inside another one (``claim`` → ``update``) joins it.
            self.outer = not self.db.in_transaction
            if self.outer:
                self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, exc, tb):
            if self.outer:
                self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            return False

    def _tx(self):
        return self._Tx(self._db())

    def close(self):
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- jobs ---------------------------------------------------------------------------
    @_busy_is_explained
    def add_job(self, job_id, kind, name, job_dir, dataset_id=None, group_name=None, notes=None,
                options=None, status=INITIALIZED, owner=None):
        """``owner``: the user name that made the job (None: made without login, anyone's)."""
        check_job_id(job_id)
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO jobs (id, kind, name, status, dir, created_at, updated_at, dataset_id,"
                       " group_name, notes, options, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                       (job_id, kind, name, status, job_dir, now, now, dataset_id, group_name, notes,
                        json.dumps(options or {}, sort_keys=True), owner))
            db.execute("INSERT INTO status_history VALUES (?,?,?,?)", (job_id, status, now, None))
        return self.get(job_id)

    @_busy_is_explained
    def get(self, job_id):
        row = self._db().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise KeyError("no job %s" % job_id)
        return self._job(row)

    @_busy_is_explained
    def list(self, kind=None):
        if kind:
            rows = self._db().execute("SELECT * FROM jobs WHERE kind=? ORDER BY created_at DESC", (kind,))
        else:
            rows = self._db().execute("SELECT * FROM jobs ORDER BY created_at DESC")
        return [self._job(r) for r in rows.fetchall()]

    @_busy_is_explained
    def running_count(self):
        """How many jobs (trainings, dataset builds, evaluations) are running now."""
        return self._db().execute("SELECT COUNT(*) FROM jobs WHERE status=?", (RUNNING,)).fetchone()[0]

    @_busy_is_explained
    def jobs_using_dataset(self, dataset_id):
        rows = self._db().execute("SELECT * FROM jobs WHERE dataset_id=?", (dataset_id,)).fetchall()
        return [self._job(r) for r in rows]

    def _job(self, row):
        job = dict(row)
        job["options"] = json.loads(job["options"] or "{}")
        return job

    @_busy_is_explained
    def update(self, job_id, **fields):
        allowed = {"name", "group_name", "notes", "options", "error", "pid", "metrics_offset", "dir", "host",
                   "pid_started", "owner", "supervisor_pid", "supervisor_started"}
        bad = set(fields) - allowed
        if bad:
            raise StoreError("cannot update job fields %s" % sorted(bad))
        pids = [fields[k] for k in ("pid", "supervisor_pid") if k in fields]
        if pids and "host" not in fields:
            # A pid means something only on the machine (container) that recorded it.
            if any(pids):
                fields["host"] = socket.gethostname()
            elif "pid" in fields:  # no runner pid any more (clearing only the supervisor keeps it)
                fields["host"] = None
        for pid_field, started_field in (("pid", "pid_started"), ("supervisor_pid", "supervisor_started")):
            if pid_field in fields and started_field not in fields:
                fields[started_field] = process_start_time(fields[pid_field]) if fields[pid_field] else None
        if "options" in fields:
            fields["options"] = json.dumps(fields["options"], sort_keys=True)
        sets = ", ".join("%s=?" % k for k in fields)
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET %s, updated_at=? WHERE id=?" % sets,
                             list(fields.values()) + [time.time(), job_id])
            if cur.rowcount == 0:
                raise KeyError("no job %s" % job_id)

    @_busy_is_explained
    def set_status(self, job_id, status, message=None):
        now = time.time()
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET status=?, updated_at=?, error=CASE WHEN ?='Error' THEN ? ELSE error END"
                             " WHERE id=?", (status, now, status, message, job_id))
            if cur.rowcount == 0:
                raise KeyError("no job %s" % job_id)
            db.execute("INSERT INTO status_history VALUES (?,?,?,?)", (job_id, status, now, message))

    @_busy_is_explained
    def claim(self, job_id, from_status, to_status, message=None, **fields):
        """Atomically move a job from ``from_status`` to ``to_status``; False if another process
        got there first (two workers never start the same queued job). ``fields`` (as ``update``,
        e.g. the pid of the claiming process) are set in the same transaction: no reader ever
        sees the new status without them."""
        now = time.time()
        with self._tx() as db:
            # An Error's message is the job's error, as set_status records it.
            cur = db.execute("UPDATE jobs SET status=?, updated_at=?, error=CASE WHEN ?='Error' THEN ? ELSE error END"
                             " WHERE id=? AND status=?", (to_status, now, to_status, message, job_id, from_status))
            if cur.rowcount == 0:
                return False
            db.execute("INSERT INTO status_history VALUES (?,?,?,?)", (job_id, to_status, now, message))
            if fields:
                self.update(job_id, **fields)
        return True

    @_busy_is_explained
    def history(self, job_id):
        rows = self._db().execute("SELECT status, time, message FROM status_history WHERE job_id=?"
                                  " ORDER BY time, rowid", (job_id,)).fetchall()
        return [dict(r) for r in rows]

    @_busy_is_explained
    def delete(self, job_id):
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
            db.execute("DELETE FROM status_history WHERE job_id=?", (job_id,))
            db.execute("DELETE FROM metrics WHERE job_id=?", (job_id,))

    @_busy_is_explained
    def mark_running_interrupted(self, alive=lambda pid: False, host=""):
        """On start: jobs left Running by a vanished process become Interrupted (resumable).

        ``alive(pid)`` tells whether a job's recorded runner is still running (then it is kept).
        ``host`` (default: this machine's name; None: every job): judge only jobs whose pid was
        recorded on that host, or with no host recorded; a pid recorded in another container
        sharing the database is left alone.
        """
        if host == "":
            host = socket.gethostname()
        rows = self._db().execute("SELECT id, pid, host FROM jobs WHERE status=?", (RUNNING,)).fetchall()
        ids = [r["id"] for r in rows
               if (host is None or r["host"] in (None, host)) and not alive(r["pid"])]
        for job_id in ids:
            self.set_status(job_id, INTERRUPTED, "the process running this job stopped")
        return ids

    # -- metrics ------------------------------------------------------------------------
    @_busy_is_explained
    def add_metrics(self, job_id, rows):
        """rows: iterable of (iteration, phase, name, value). Same key → value replaced."""
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?)",
                           [(job_id, int(i), p, n, None if v is None else float(v)) for i, p, n, v in rows])

    @_busy_is_explained
    def drop_metrics_after(self, job_id, iteration):
        with self._tx() as db:
            db.execute("DELETE FROM metrics WHERE job_id=? AND iteration>?", (job_id, int(iteration)))

    @_busy_is_explained
    def metrics_since(self, job_id, since=0):
        """[(iteration, phase, name, value)] with iteration >= since, ordered by iteration."""
        rows = self._db().execute("SELECT iteration, phase, name, value FROM metrics WHERE job_id=? AND"
                                  " iteration>=? ORDER BY iteration, phase, name", (job_id, int(since)))
        return [tuple(r) for r in rows.fetchall()]
