"""Hardening of the web server (issue 16): Host check, security headers, the production server.

Items: 2 (any Host header was accepted), 5 (no X-Frame-Options/CSP/nosniff), 6 (Werkzeug's
development server; FLASK_DEBUG opened the debugger)."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from test_web_fakes import FakeBackend, sunnybrook_plugin
from caffeseg.web import create_app
from caffeseg.web.safety import host_allowed, trusted_hosts


def _app(tmp_path, **extra):
    fake = FakeBackend(tmp_path / "jobs")
    return create_app({"DATA_DIR": str(tmp_path), "BACKEND": fake, "PLUGINS": [sunnybrook_plugin()],
                       "WTF_CSRF_ENABLED": False, "START_WORKER": False, **extra})


# -- item 2: Host header ------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["localhost:5000", "127.0.0.1:5000", "[::1]:5000", "localhost", "LOCALHOST:80"])
def test_loopback_host_names_are_answered(tmp_path, host):
    client = _app(tmp_path).test_client()
    assert client.get("/", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example:5000", "attacker.test", "127.0.0.1.nip.io", "localhost.evil.test"])
def test_foreign_host_names_are_refused(tmp_path, host):
    """A page on another name (DNS rebinding to 127.0.0.1) cannot drive the API."""
    client = _app(tmp_path).test_client()
    page = client.get("/", headers={"Host": host})
    assert page.status_code == 400
    assert b"TRUSTED_HOSTS" in page.data
    api = client.post("/api/network/inspect", json={"network": "name: 'x'"}, headers={"Host": host})
    assert api.status_code == 400
    assert "TRUSTED_HOSTS" in api.get_json()["error"]


def test_bound_address_is_trusted_and_configuration_replaces_the_default(tmp_path):
    client = _app(tmp_path, HOST="10.1.2.3").test_client()
    assert client.get("/", headers={"Host": "10.1.2.3:5000"}).status_code == 200
    configured = _app(tmp_path, TRUSTED_HOSTS=["lab.example.org", ".cluster.local"]).test_client()
    assert configured.get("/", headers={"Host": "lab.example.org"}).status_code == 200
    assert configured.get("/", headers={"Host": "node3.cluster.local:8080"}).status_code == 200
    assert configured.get("/", headers={"Host": "localhost"}).status_code == 400
    anything = _app(tmp_path, TRUSTED_HOSTS="*").test_client()
    assert anything.get("/", headers={"Host": "whatever.test"}).status_code == 200


def test_trusted_hosts_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFFESEG_TRUSTED_HOSTS", "lab.example.org, other.example.org")
    client = _app(tmp_path).test_client()
    assert client.get("/", headers={"Host": "other.example.org"}).status_code == 200
    assert client.get("/", headers={"Host": "localhost"}).status_code == 400


def test_host_rules():
    default = trusted_hosts(None, "0.0.0.0")
    assert default == sorted(["localhost", "127.0.0.1", "[::1]"])  # a wildcard bind names no host
    assert "[fd00::5]" in trusted_hosts(None, "fd00::5")
    assert host_allowed("[::1]:8080", default) and not host_allowed("[::2]:8080", default)
    assert not host_allowed(None, default) and not host_allowed("", default)
    assert host_allowed("x", None)


# -- item 5: clickjacking, sniffing, scripts -----------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/api/jobs", "/no-such-page"])
def test_security_headers_on_every_answer(tmp_path, path):
    response = _app(tmp_path).test_client().get(path)
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    csp = dict(part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";"))
    assert csp["frame-ancestors"] == "'none'"
    assert csp["script-src"] == "'self'"  # no inline script, no eval, no CDN
    assert csp["object-src"] == "'none'"


def test_pages_use_no_inline_script(tmp_path):
    """What the CSP forbids must not be what the pages need: no inline <script> code, no on*= handlers."""
    import re
    from pathlib import Path
    templates = Path(__file__).resolve().parent.parent / "web" / "templates"
    for path in templates.glob("*.html"):
        text = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag or 'type="application/json"' in tag, (path.name, tag)
        assert not re.search(r"\son[a-z]+\s*=", text), path.name


# -- item 6: production server ------------------------------------------------------------------

def test_flask_debug_in_the_environment_does_not_enable_the_debugger(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASK_DEBUG", "1")
    app = _app(tmp_path)
    assert app.debug is False
    assert _app(tmp_path, DEBUG=True).debug is True  # the explicit developer flag still can


def test_dev_server_refuses_a_non_loopback_address(tmp_path):
    from caffeseg.web.server import serve
    with pytest.raises(ValueError, match="loopback"):
        serve({"DATA_DIR": str(tmp_path), "BACKEND": FakeBackend(tmp_path), "HOST": "0.0.0.0"}, dev=True)


def test_waitress_holds_no_thread_for_idle_connections_and_closes_them(tmp_path, monkeypatch):
    """50 clients that connect and send nothing (or half a request) tie up no application thread;
    a real request is still answered, and waitress drops the idle ones after its timeout."""
    from caffeseg.web import server as server_module
    monkeypatch.setattr(server_module, "CHANNEL_TIMEOUT_S", 2)
    from caffeseg.web import config as config_module
    settings = config_module.resolve({"DATA_DIR": str(tmp_path), "BACKEND": FakeBackend(tmp_path / "jobs"),
                                      "PLUGINS": [sunnybrook_plugin()], "HOST": "127.0.0.1", "PORT": 0,
                                      "START_WORKER": False})
    server = server_module.build_server(settings)
    port = server.effective_port
    runner = threading.Thread(target=server.run, daemon=True)
    runner.start()
    try:
        time.sleep(0.3)
        threads_before = threading.active_count()
        idle = []
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:  # half of them send a header promising a body that never comes
                s.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n")
            idle.append(s)
        time.sleep(0.5)
        assert threading.active_count() - threads_before <= server_module.THREADS
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = s.recv(200)
        assert answer.startswith(b"HTTP/1.1 200")
        time.sleep(server_module.CHANNEL_TIMEOUT_S + 3)  # waitress checks timeouts every second or so
        closed = 0
        for s in idle:
            s.settimeout(0.5)
            try:
                closed += s.recv(1) == b""
            except (socket.timeout, ConnectionResetError):
                pass
            s.close()
        assert closed == len(idle)
    finally:
        server.close()


def test_server_options_bound_requests():
    from caffeseg.web.server import server_options
    options = server_options({"HOST": "127.0.0.1", "PORT": 5000, "MAX_CONTENT_LENGTH": 64 << 20,
                              "MAX_PRETRAINED_UPLOAD": 1 << 30})
    assert options["host"] == "127.0.0.1"
    assert options["channel_timeout"] > 0 and options["max_request_header_size"] <= 1 << 20
    assert options["max_request_body_size"] >= 1 << 30


def test_caffeseg_serve_runs_waitress_and_the_debugger_only_with_dev(tmp_path, monkeypatch):
    """`caffeseg serve` (what `make serve` runs) goes through web.server.serve: waitress unless --dev."""
    from caffeseg import cli
    from caffeseg.web import server as server_module
    calls = []
    monkeypatch.setattr(server_module, "serve", lambda config, dev=False: calls.append((config, dev)))
    monkeypatch.setattr(cli, "sample_folder", lambda args, cases=None: str(tmp_path / "sample"))
    monkeypatch.setenv("FLASK_DEBUG", "1")
    assert cli.main(["--data", str(tmp_path), "serve", "--port", "5999"]) in (0, None)
    config, dev = calls[-1]
    assert dev is False and config["HOST"] == "127.0.0.1" and config["PORT"] == 5999
    cli.main(["--data", str(tmp_path), "serve", "--dev", "--trusted-hosts", "lab.example.org"])
    assert calls[-1][1] is True and calls[-1][0]["TRUSTED_HOSTS"] == "lab.example.org"
    # the real serve refuses the debugger on a non-loopback address (exit code, no traceback)
    monkeypatch.undo()
    monkeypatch.setattr(cli, "sample_folder", lambda args, cases=None: str(tmp_path / "sample"))
    assert cli.main(["--data", str(tmp_path), "serve", "--dev", "--host", "0.0.0.0"]) == cli.EXIT_BAD_INPUT
