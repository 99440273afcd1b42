"""Prepare a known pretrained model in the background: download, verify, convert (the web's
Prepare button; ``caffeseg pretrained NAME --prepare`` is the same work in the foreground).

One preparation per model at a time (its gray and RGB variants share the download). Its state
is a small JSON file beside the weights, ``<dest>/.prepare-<name>.json``, so every page and
every process of the server sees the same progress::

    {"name", "variant": "gray"|"rgb", "state": "running"|"done"|"error",
     "phase": "download"|"convert", "done": bytes, "total": bytes or null,
     "message", "weights", "pid", "host", "started", "updated"}

A "running" state whose process is gone reads as "interrupted": preparing again continues the
download from its ``.part`` file (``jobs.pretrained.fetch`` resumes with a Range request).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Optional

from caffeseg.jobs import pretrained
from caffeseg.jobs.paths import atomic_write_json

STATE_FILE = ".prepare-%s.json"
WRITE_EVERY_S = 0.5  # progress is written at most this often while downloading

_lock = threading.Lock()
_threads: dict = {}  # (dest folder, model name) -> the thread preparing it in this process


class PrepareError(RuntimeError):
    """A preparation that cannot start (unknown model, one already running)."""


def _key(dest_dir, name):
    """Which preparation thread of this process: one per destination folder and model."""
    return str(Path(dest_dir).resolve()), name


def state_path(dest_dir, name) -> Path:
    # only a known model's name makes the file name (PretrainedError otherwise): never a free path
    return Path(dest_dir) / (STATE_FILE % pretrained._model(name).name)


def _alive_elsewhere(state) -> bool:
    """Whether the process that wrote a running state still runs (another process on this host)."""
    if state.get("host") != socket.gethostname():
        return True  # another machine's process: trust its word
    pid = state.get("pid")
    if not pid or int(pid) == os.getpid():
        return False  # this process: only a live thread counts (checked by the caller)
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def read_state(dest_dir, name) -> Optional[dict]:
    """The model's last preparation, or None; a running one whose worker is gone is reported as
    ``state: "interrupted"``."""
    path = state_path(dest_dir, name)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if state.get("state") == "running":
        thread = _threads.get(_key(dest_dir, name))
        here = thread is not None and thread.is_alive()
        if not here and not _alive_elsewhere(state):
            state["state"] = "interrupted"
            state["message"] = "the server stopped while preparing; prepare again to continue the download"
    return state


def start(dest_dir, name, gray, url=None, num_classes=2) -> dict:
    """Start preparing ``name`` (the gray variant when ``gray``) in a daemon thread; returns the
    first state. Raises PrepareError when the model is being prepared already."""
    model = pretrained._model(name)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    key = _key(dest_dir, model.name)
    with _lock:
        current = read_state(dest_dir, model.name)
        if current and current.get("state") == "running":
            raise PrepareError("%s is being prepared already (%s weights)" % (model.name, current.get("variant")))
        state = {"name": model.name, "variant": "gray" if gray else "rgb", "state": "running",
                 "phase": "download", "done": 0, "total": None, "message": None,
                 "weights": str(pretrained.prepared_path(model, dest_dir, gray)),
                 "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        _write(dest_dir, state)
        thread = threading.Thread(target=_run, args=(dest_dir, model, gray, url, num_classes, state),
                                  name="prepare-%s" % model.name, daemon=True)
        _threads[key] = thread
        thread.start()
    return dict(state)


def wait(dest_dir, name, timeout=None) -> Optional[dict]:
    """Wait for this process's preparation of ``name`` to end (tests, the CLI); its last state."""
    thread = _threads.get(_key(dest_dir, name))
    if thread is not None:
        thread.join(timeout)
    return read_state(dest_dir, name)


def _write(dest_dir, state) -> None:
    state["updated"] = time.time()
    atomic_write_json(str(state_path(dest_dir, state["name"])), state)


def _run(dest_dir, model, gray, url, num_classes, state) -> None:
    last = {"time": 0.0}

    def progress(done, total):
        now = time.time()
        if now - last["time"] >= WRITE_EVERY_S or (total is not None and done >= total):
            last["time"] = now
            state.update(done=done, total=total)
            _write(dest_dir, state)

    try:
        pretrained.fetch(model, dest_dir, url=url, progress=progress)
        state.update(phase="convert")
        _write(dest_dir, state)
        weights, _report = pretrained.prepare(model, dest_dir, gray=gray, num_classes=num_classes, url=url)
        state.update(state="done", weights=str(weights), message=None)
    except pretrained.PretrainedError as exc:  # the page shows it; the .part file stays for the next try
        state.update(state="error", message=str(exc))
    except Exception as exc:  # a surgery or disk failure: name its kind too
        state.update(state="error", message="%s: %s" % (type(exc).__name__, exc))
    _write(dest_dir, state)
