"""Running the web app: waitress (a production WSGI server) by default.

Why waitress: it reads each request (headers and body) in its asynchronous I/O loop and hands
an application thread only a complete request, so clients that open connections and send
nothing (or a body byte by byte) hold no worker thread; ``channel_timeout`` closes such idle
connections. Werkzeug's development server (one thread per connection, no timeouts) and its
debugger console run only with an explicit developer flag (``caffeseg serve --dev``), never
from an environment variable such as ``FLASK_DEBUG``.
"""
from __future__ import annotations

import sys

# Seconds a connection may stay silent (no request, no body bytes) before waitress closes it.
CHANNEL_TIMEOUT_S = 30
# Application threads: requests being answered at once (reading and sending are not counted).
THREADS = 8
# Open connections at most; beyond, waitress stops accepting until some close.
CONNECTION_LIMIT = 200
# Request header bytes at most (waitress refuses larger headers with 431).
MAX_HEADER_BYTES = 64 * 1024


# waitress' body bound when MAX_PRETRAINED_UPLOAD is 0 ("no limit"): waitress has no unlimited
# setting, so a bound far above any model file (bodies over its inbuf_overflow are spooled to a
# temporary file, so this is disk, not memory).
NO_LIMIT_BODY_BYTES = 1 << 40


def server_options(settings: dict) -> dict:
    """waitress.serve keyword arguments for the app's ``settings`` (``web.config.resolve``)."""
    pretrained_limit = int(settings.get("MAX_PRETRAINED_UPLOAD") or 0)
    if pretrained_limit:
        body_limit = max(int(settings.get("MAX_CONTENT_LENGTH") or 0), pretrained_limit) + 1024 * 1024
    else:
        body_limit = NO_LIMIT_BODY_BYTES
    return {
        "host": settings["HOST"], "port": int(settings["PORT"]), "threads": THREADS,
        "channel_timeout": CHANNEL_TIMEOUT_S, "cleanup_interval": max(1, CHANNEL_TIMEOUT_S // 3),
        "connection_limit": CONNECTION_LIMIT,
        "max_request_header_size": MAX_HEADER_BYTES,
        # The app enforces its own (per-endpoint) upload limits; this is waitress' outer bound.
        "max_request_body_size": body_limit,
        "ident": "caffeseg",
    }


def serve(config: dict, dev: bool = False) -> None:
    """Serve ``config`` (a ``web.create_app`` config with HOST/PORT) until interrupted.

    ``dev``: Werkzeug's development server with the debugger and reloader, for a developer on
    this machine only: refused on any address other than loopback."""
    from caffeseg import web
    from caffeseg.web import config as config_module
    settings = config_module.resolve({**config, "DEBUG": bool(dev)})
    if dev:
        if settings["HOST"] not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"--dev runs Werkzeug's debugger, which executes code typed in the browser; "
                             f"it only binds a loopback address, not {settings['HOST']}")
        app = web.create_app(settings)  # HOST goes in: the Host check trusts the bound name
        app.run(host=settings["HOST"], port=int(settings["PORT"]), debug=True, use_reloader=False)
        return
    server = build_server(settings)
    allowed = server.flask_app.config.get("CAFFESEG_TRUSTED_HOSTS")
    print(f"caffeseg: serving on http://{settings['HOST']}:{server.effective_port}/ (waitress, "
          f"{THREADS} threads); answers to host names: {', '.join(allowed) if allowed else 'any'}",
          file=sys.stderr)
    server.run()


def build_server(settings: dict):
    """A waitress server for ``settings`` (resolved), bound but not yet running (``.run()``)."""
    import waitress.server
    from caffeseg import web
    app = web.create_app(settings)  # HOST goes in: the Host check trusts the bound name
    server = waitress.server.create_server(app, **server_options(settings))
    server.flask_app = app  # waitress keeps only the WSGI callable
    return server
