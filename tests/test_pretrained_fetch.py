"""The downloader against a local HTTP server (no internet in CI): checksum, corruption, resume."""
import hashlib
import http.server
import threading

import pytest

from caffeseg.jobs import pretrained
from caffeseg.jobs.pretrained import KnownModel, PretrainedError

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
    with pytest.raises(PretrainedError, match="the next attempt resumes from there"):
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
    from caffeseg.engine.caffemodel import read_caffemodel

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


def test_each_known_model_is_paired_with_its_network_and_the_steps_that_make_its_weights(tmp_path):
    import os
    from caffeseg.jobs import resources
    assert {n: m.network for n, m in pretrained.KNOWN_MODELS.items()} == {
        "bvlc_alexnet": "fcn_alexnet", "fcn8s-heavy-pascal": "fcn_8s", "VGG16": "fcn_8s"}
    for model in pretrained.KNOWN_MODELS.values():
        assert os.path.isfile(resources.network_path(model.network))
    alex = pretrained.network_weights("bvlc_alexnet", tmp_path, gray=True)
    target = tmp_path / "bvlc_alexnet-fcn-gray.caffemodel"
    assert alex["network"] == "fcn_alexnet" and alex["weights"] == str(target) and not alex["ready"]
    assert alex["steps"] == ["caffeseg pretrained bvlc_alexnet --dest %s" % tmp_path,
                             "caffeseg surgery alexnet-fcn %s %s --gray" % (tmp_path / "bvlc_alexnet.caffemodel", target)]
    (tmp_path / "bvlc_alexnet.caffemodel").write_bytes(b"x")
    assert pretrained.network_weights("bvlc_alexnet", tmp_path, gray=True)["steps"] == alex["steps"][1:]
    target.write_bytes(b"x")
    done = pretrained.network_weights("bvlc_alexnet", tmp_path, gray=True)
    assert done["ready"] and done["steps"] == []
    # FCN-8s PASCAL: RGB data uses the download as it is; gray data needs the conv1 surgery.
    fcn = pretrained.network_weights("fcn8s-heavy-pascal", tmp_path, gray=False)
    assert fcn["weights"] == str(tmp_path / "fcn8s-heavy-pascal.caffemodel") and len(fcn["steps"]) == 1
    assert "rgb-to-gray" in pretrained.network_weights("fcn8s-heavy-pascal", tmp_path, gray=True)["steps"][1]
    vgg = pretrained.network_weights("VGG16", tmp_path, gray=False)
    assert vgg["network"] == "fcn_8s" and "surgery vgg16-fcn8s" in vgg["steps"][1] and "--gray" not in vgg["steps"][1]
    assert pretrained.prepared_path("VGG16", tmp_path, gray=True).name == "VGG_ILSVRC_16_layers-fcn-gray.caffemodel"


NET = 'name: "up"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n' \
      'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }\n'


def test_uploaded_models_are_checked_stored_listed_and_deleted(tmp_path):
    import numpy as np
    from web_helpers import write_weights
    from caffeseg.jobs.pretrained import UploadError

    def weights(name="conv"):
        path = tmp_path / ("w-%s.caffemodel" % name)
        write_weights(path, {name: [np.ones((2, 1, 3, 3), np.float32)]})
        return path

    with pytest.raises(UploadError, match="name") as err:
        pretrained.save_upload(tmp_path, "../evil", NET, weights())
    assert err.value.field == "name"
    with pytest.raises(UploadError, match="does not parse") as err:
        pretrained.save_upload(tmp_path, "n", "layer { nope: 1 }", weights())
    assert err.value.field == "prototxt"
    with pytest.raises(UploadError, match="missing"):
        pretrained.save_upload(tmp_path, "n", b"", weights())
    with pytest.raises(UploadError, match="no layer of the weights"):
        pretrained.save_upload(tmp_path, "n", NET, weights("other"))
    garbage = tmp_path / "garbage.caffemodel"
    garbage.write_bytes(b"\xff\xff not protobuf")
    with pytest.raises(UploadError, match="readable"):
        pretrained.save_upload(tmp_path, "n", NET, garbage)
    assert pretrained.list_uploads(tmp_path) == []

    source = weights()
    entry = pretrained.save_upload(tmp_path, "My net (v2)", NET.encode(), source, "desc")
    assert not source.exists()  # moved into the store
    folder = tmp_path / "uploaded" / entry["id"]
    assert entry["weights"] == str(folder / "weights.caffemodel") and entry["prototxt"] == str(folder / "network.prototxt")
    assert entry["name"] == "My net (v2)" and entry["matched"] == ["conv"] and entry["network_name"] == "up"
    assert [e["id"] for e in pretrained.list_uploads(tmp_path)] == [entry["id"]]
    for bad in ("../uploaded", "up-../../x", "bvlc_alexnet", "up-000000000000"):
        with pytest.raises(KeyError):
            pretrained.upload_entry(tmp_path, bad)
    pretrained.delete_upload(tmp_path, entry["id"])
    assert not folder.exists() and pretrained.list_uploads(tmp_path) == []


def test_cli_prepare_fetches_and_converts_in_one_command(server, tmp_path, monkeypatch, capsys):
    """`caffeseg pretrained NAME --prepare --gray` = download (checked) + surgery, one command."""
    import json
    from caffeseg import cli
    from test_surgery import ALEXNET, random_params, write_classifier
    from caffeseg.engine.caffemodel import read_caffemodel

    write_classifier(tmp_path / "classifier.caffemodel", random_params(ALEXNET), legacy=False)
    server.payload = (tmp_path / "classifier.caffemodel").read_bytes()
    entry = KnownModel(name="alexnet-like", url="http://127.0.0.1:9/unreachable", filename="alexnet.caffemodel",
                       sha1=hashlib.sha1(server.payload).hexdigest(), size=None, description="test",
                       use="test", conversion="alexnet_to_fcn")
    monkeypatch.setitem(pretrained.KNOWN_MODELS, "alexnet-like", entry)
    data = tmp_path / "data"
    code = cli.main(["--data", str(data), "--json", "pretrained", "alexnet-like", "--prepare", "--gray",
                     "--classes", "3", "--url", server.url])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["path"] == str(data / "pretrained" / "alexnet-fcn-gray.caffemodel")
    assert out["surgery"]["dropped"] == ["fc8"]
    blobs = {layer.name: layer.blobs for layer in read_caffemodel(out["path"]).layer}
    source = {layer.name: layer.blobs for layer in read_caffemodel(str(tmp_path / "classifier.caffemodel")).layer}
    rgb = list(source["conv1"][0].shape.dim)
    assert rgb[1] == 3 and list(blobs["conv1"][0].shape.dim) == [rgb[0], 1] + rgb[2:]  # summed over RGB
    assert list(blobs["upscore"][0].shape.dim)[:2] == [3, 1]  # 3 classes, grouped bilinear
    # Without --prepare: the download only, no conversion.
    code = cli.main(["--data", str(data), "--json", "pretrained", "alexnet-like", "--url", server.url])
    assert code == 0 and json.loads(capsys.readouterr().out)["path"] == str(data / "pretrained" / "alexnet.caffemodel")
