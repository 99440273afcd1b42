"""Preparing a known model in the background (the web's Prepare button), against a local server."""
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from caffeseg.jobs import pretrained, pretrained_prepare
from caffeseg.jobs.pretrained import KnownModel
from test_pretrained_fetch import server  # noqa: F401  (the local HTTP server fixture)


@pytest.fixture
def alexnet_like(server, tmp_path, monkeypatch):  # noqa: F811
    """A known model served locally: an AlexNet-shaped classifier that needs the FCN surgery."""
    from test_surgery import ALEXNET, random_params, write_classifier
    write_classifier(tmp_path / "classifier.caffemodel", random_params(ALEXNET))
    server.payload = (tmp_path / "classifier.caffemodel").read_bytes()
    entry = KnownModel(name="alexnet-like", url=server.url, filename="alexnet.caffemodel",
                       sha1=hashlib.sha1(server.payload).hexdigest(), size=None, description="test",
                       use="test", conversion="alexnet_to_fcn", network="fcn_alexnet")
    monkeypatch.setitem(pretrained.KNOWN_MODELS, "alexnet-like", entry)
    return entry


def test_a_preparation_downloads_converts_and_records_its_progress(alexnet_like, server, tmp_path):  # noqa: F811
    dest = tmp_path / "models"
    first = pretrained_prepare.start(dest, "alexnet-like", gray=True)
    assert first["state"] == "running" and first["phase"] == "download" and first["variant"] == "gray"
    state = pretrained_prepare.wait(dest, "alexnet-like", timeout=60)
    assert state["state"] == "done", state
    assert state["weights"] == str(dest / "alexnet-fcn-gray.caffemodel") and os.path.isfile(state["weights"])
    assert state["done"] == state["total"] == len(server.payload)
    assert pretrained.network_weights("alexnet-like", dest, gray=True)["ready"]
    # on disk for every process of the server, beside the weights
    assert json.loads((dest / ".prepare-alexnet-like.json").read_text())["state"] == "done"


def test_a_failed_download_is_reported_and_a_second_start_waits_its_turn(alexnet_like, server, tmp_path,  # noqa: F811
                                                                          monkeypatch):
    dest = tmp_path / "models"
    server.fail_status = 404
    pretrained_prepare.start(dest, "alexnet-like", gray=False)
    state = pretrained_prepare.wait(dest, "alexnet-like", timeout=60)
    assert state["state"] == "error" and "HTTP 404" in state["message"]

    release = threading.Event()
    fetch = pretrained.fetch

    def slow_fetch(*args, **kwargs):
        release.wait(30)
        return fetch(*args, **kwargs)
    monkeypatch.setattr(pretrained, "fetch", slow_fetch)
    server.fail_status = None
    pretrained_prepare.start(dest, "alexnet-like", gray=False)
    with pytest.raises(pretrained_prepare.PrepareError, match="being prepared already"):
        pretrained_prepare.start(dest, "alexnet-like", gray=True)  # the variants share the download
    assert pretrained_prepare.read_state(dest, "alexnet-like")["state"] == "running"
    release.set()
    assert pretrained_prepare.wait(dest, "alexnet-like", timeout=60)["state"] == "done"


def test_a_preparation_whose_process_is_gone_reads_as_interrupted(alexnet_like, tmp_path):
    dest = tmp_path / "models"
    dest.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = pretrained_prepare.state_path(dest, "alexnet-like")
    for pid in (gone.pid, os.getpid()):  # a dead process; this one with no thread preparing it
        path.write_text(json.dumps({"name": "alexnet-like", "variant": "rgb", "state": "running",
                                    "phase": "download", "done": 10, "total": 100,
                                    "pid": pid, "host": socket.gethostname()}))
        state = pretrained_prepare.read_state(dest, "alexnet-like")
        assert state["state"] == "interrupted" and "prepare again" in state["message"]
    # interrupted is not running: it may start again
    pretrained_prepare.start(dest, "alexnet-like", gray=False)
    assert pretrained_prepare.wait(dest, "alexnet-like", timeout=60)["state"] == "done"


def test_only_known_models_name_a_state_file(tmp_path):
    with pytest.raises(pretrained.PretrainedError, match="unknown pretrained model"):
        pretrained_prepare.start(tmp_path, "../../etc/passwd", gray=False)
    with pytest.raises(pretrained.PretrainedError):
        pretrained_prepare.read_state(tmp_path, "nope")
    assert pretrained_prepare.read_state(tmp_path, "VGG16") is None
