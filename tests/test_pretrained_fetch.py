"""The downloader against a local HTTP server (no internet in CI): checksum, corruption, resume."""
import hashlib
import http.server
import threading

import pytest

from jobs import pretrained
from jobs.pretrained import KnownModel, PretrainedError

PAYLOAD = bytes(range(256)) * 1500 + b"tail"  # 384004 bytes, several 1 MiB-chunk-free reads


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append(self.headers.get("Range"))
        if server.fail_status:
            self.send_error(server.fail_status)
            return
        body, status, headers = server.payload, 200, {}
        range_header = self.headers.get("Range")
        if range_header and server.honor_range:
            start = int(range_header.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, len(body) - 1, len(body))
            body, status = body[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if server.cuts_left > 0:  # announce the full length, send a part, drop the connection
            server.cuts_left -= 1
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.payload, httpd.requests, httpd.cuts_left, httpd.honor_range = PAYLOAD, [], 0, True
    httpd.fail_status = None
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = "http://127.0.0.1:%d/model.caffemodel" % httpd.server_address[1]
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def model(url, sha1=hashlib.sha1(PAYLOAD).hexdigest(), size=None):
    return KnownModel(name="test-model", url=url, filename="model.caffemodel", sha1=sha1, size=size,
                      description="test", use="test")


def test_known_models_have_published_facts():
    assert set(pretrained.KNOWN_MODELS) == {"bvlc_alexnet", "fcn8s-heavy-pascal", "VGG16"}
    assert pretrained.KNOWN_MODELS["bvlc_alexnet"].sha1 == "9116a64c0fbe4459d18f4bb6b56d647b63920377"
    assert pretrained.KNOWN_MODELS["fcn8s-heavy-pascal"].url.endswith("/fcn8s-heavy-pascal.caffemodel")
    assert pretrained.KNOWN_MODELS["VGG16"].sha1 is None  # no published checksum: size-only
    for entry in pretrained.KNOWN_MODELS.values():
        assert entry.url.startswith("http") and entry.filename.endswith(".caffemodel")


def test_download_verifies_and_reports_progress(server, tmp_path):
    seen = []
    path = pretrained.fetch(model(server.url), tmp_path / "models", progress=lambda d, t: seen.append((d, t)))
    assert path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert not (tmp_path / "models" / "model.caffemodel.part").exists()
    # a verified file is not downloaded again
    pretrained.fetch(model(server.url), tmp_path / "models")
    assert len(server.requests) == 1


def test_url_overrides_the_catalogue_address(server, tmp_path):
    entry = model("http://127.0.0.1:9/unreachable")
    assert pretrained.fetch(entry, tmp_path, url=server.url).read_bytes() == PAYLOAD


def test_wrong_checksum_is_rejected_and_removed(server, tmp_path):
    with pytest.raises(PretrainedError, match="checksum mismatch.*expected 0000"):
        pretrained.fetch(model(server.url, sha1="0" * 40), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_is_rejected(server, tmp_path):
    with pytest.raises(PretrainedError, match="expected 5 "):
        pretrained.fetch(model(server.url, sha1=None, size=5), tmp_path)


def test_cut_connection_resumes_with_range(server, tmp_path):
    server.cuts_left = 2
    path = pretrained.fetch(model(server.url), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[0] is None
    assert server.requests[1] == "bytes=%d-" % (len(PAYLOAD) // 3)
    assert len(server.requests) == 3 and server.requests[2].startswith("bytes=")


def test_resume_across_calls_and_server_without_range(server, tmp_path):
    server.cuts_left = 10
    with pytest.raises(PretrainedError, match="call fetch again to resume"):
        pretrained.fetch(model(server.url), tmp_path, retries=1)
    assert (tmp_path / "model.caffemodel.part").stat().st_size > 0
    server.cuts_left = 0
    assert pretrained.fetch(model(server.url), tmp_path).read_bytes() == PAYLOAD
    # a server that ignores Range sends everything again: the partial file is restarted, not appended to
    (tmp_path / "model.caffemodel").unlink()
    (tmp_path / "model.caffemodel.part").write_bytes(PAYLOAD[:1000])
    server.honor_range = False
    assert pretrained.fetch(model(server.url), tmp_path).read_bytes() == PAYLOAD


def test_unknown_name_and_http_error(server, tmp_path):
    with pytest.raises(PretrainedError, match="unknown pretrained model 'nope'"):
        pretrained.fetch("nope", tmp_path)
    server.fail_status = 404
    with pytest.raises(PretrainedError, match="test-model: HTTP 404 .* from http://127.0.0.1"):
        pretrained.fetch(model(server.url), tmp_path)


def test_prepare_fetches_and_converts(server, tmp_path):
    """fetch + surgery in one call: a classifier served locally becomes FCN weights."""
    from test_surgery import ALEXNET, random_params, write_classifier
    from engine.caffemodel import read_caffemodel

    write_classifier(tmp_path / "classifier.caffemodel", random_params(ALEXNET), legacy=True)
    server.payload = (tmp_path / "classifier.caffemodel").read_bytes()
    entry = KnownModel(name="alexnet-like", url=server.url, filename="alexnet.caffemodel",
                       sha1=hashlib.sha1(server.payload).hexdigest(), size=None, description="test",
                       use="test", conversion="alexnet_to_fcn")
    path, report = pretrained.prepare(entry, tmp_path / "models", gray=True)
    assert path.name == "alexnet-fcn-gray.caffemodel"
    assert report.dropped == ["fc8"] and "conv1" in report.reshaped
    names = [layer.name for layer in read_caffemodel(str(path)).layer]
    assert names == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "upscore"]
    plain = KnownModel(name="fcn-like", url=server.url, filename="fcn.caffemodel",
                       sha1=None, size=None, description="test", use="test")
    path, report = pretrained.prepare(plain, tmp_path / "models")
    assert path.name == "fcn.caffemodel" and report is None
