"""caffeseg's web front end: a DIGITS-style workbench in Flask.

``create_app(config=None)`` builds the app. ``config`` is a dict; see ``web.config.DEFAULTS``
for the keys. ``config["BACKEND"]`` may supply a
ready ``web.backend.Backend`` (tests do); otherwise the app opens ``jobs.service`` on ``JOBS_DIR``
through ``web.service_backend.ServiceBackend``.
"""
from __future__ import annotations

import logging
import sqlite3

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from caffeseg.engine.layer_types import python as python_layer_types
from caffeseg.web import config as config_module
from caffeseg.web.backend import BadRequest, Forbidden, NotFound, Unavailable
from caffeseg.web.safety import SECURITY_HEADERS, UnsafePath, host_allowed, trusted_hosts

log = logging.getLogger(__name__)
csrf = CSRFProtect()


def _wants_json() -> bool:
    # the API, and DIGITS' .json URLs (its errors were JSON there too)
    return request.path.startswith("/api/") or request.path.endswith(".json")


def _error(status: int, message: str, **extra):
    if _wants_json():
        return jsonify({"error": message, "status": status, **extra}), status
    return render_template("error.html", status=status, message=message), status


def _register_errors(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        return _error(400, f"The form expired or was not sent by this site ({exc.description}). "
                           "Reload the page and try again.")

    @app.errorhandler(UnsafePath)
    def unsafe(exc):
        return _error(400, str(exc))

    @app.errorhandler(NotFound)
    def not_found(exc):
        return _error(404, str(exc) or "not found")

    @app.errorhandler(Unavailable)
    def unavailable(exc):
        return _error(501, str(exc))

    @app.errorhandler(Forbidden)
    def forbidden(exc):
        return _error(403, str(exc))

    @app.errorhandler(BadRequest)
    def bad_request(exc):
        extra = {k: getattr(exc, k) for k in ("line", "column") if getattr(exc, k, None) is not None}
        return _error(400, str(exc), fields=exc.field_errors, **extra)

    @app.errorhandler(sqlite3.OperationalError)
    def store_busy(exc):
        if "locked" not in str(exc) and "busy" not in str(exc):
            return unexpected(exc)
        log.warning("job database busy on %s: %s", request.path, exc)
        return _error(503, "The job database is busy: another process holds its lock. Nothing was "
                           "lost; reload this page in a moment.", detail=str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unhandled error on %s", request.path)
        return _error(500, f"Internal error: {type(exc).__name__}: {exc}")


def _open_backend(settings: dict):
    if settings.get("BACKEND") is not None:
        return settings["BACKEND"]
    from caffeseg.web.service_backend import ServiceBackend  # the worker starts with the server
    return ServiceBackend(settings)


def _install_guards(app: Flask, settings: dict) -> None:
    """Host-header check (DNS rebinding) before every request; security headers on every answer.

    Flask's own TRUSTED_HOSTS cannot name an IPv6 address ("[::1]" never matches), so the app
    checks the Host header itself and keeps the setting out of Flask's config."""
    allowed = trusted_hosts(settings.get("TRUSTED_HOSTS"), settings.get("HOST"))
    app.config["CAFFESEG_TRUSTED_HOSTS"] = allowed

    @app.before_request
    def check_host():
        host = request.headers.get("Host")
        if not host_allowed(host, allowed):
            return _error(400, f"This server does not answer to the host name {host!r}. "
                               f"It answers to: {', '.join(allowed)}; an administrator adds names "
                               "with the TRUSTED_HOSTS setting (CAFFESEG_TRUSTED_HOSTS=name,name).")

    @app.after_request
    def security_headers(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def create_app(config=None) -> Flask:
    settings = config_module.resolve(config)
    app = Flask(__name__)
    app.config.update({k: v for k, v in settings.items() if k not in ("BACKEND", "TRUSTED_HOSTS")})
    # Flask would turn debug on from FLASK_DEBUG in the environment; only an explicit setting
    # (the developer server of `caffeseg serve --dev`) may.
    app.config["DEBUG"] = bool(settings.get("DEBUG", False))
    app.debug = app.config["DEBUG"]
    _install_guards(app, settings)
    # Inference and evaluation build nets in this process: their Python layers come from the job
    # folder and the project's python_layers/ only, never from the server's working directory.
    python_layer_types.SEARCH_WORKING_DIRECTORY = False
    app.extensions["caffeseg_backend"] = _open_backend(settings)
    from caffeseg.web.views import pretrained
    pretrained.install_upload_limit(app)  # before CSRFProtect reads the body
    csrf.init_app(app)

    from caffeseg.web import users  # DIGITS' login (optional), the owner of what a request creates or changes
    users.install(app)
    from caffeseg.web.views import (api, clinical, datasets, digits_urls, files, home, info, inference, job_panels,
                                    models, test_many, vendor)
    pages = (
        home.bp,            # the job tables and the Pretrained Models tab
        datasets.bp,        # New Dataset, the dataset page and its records
        models.bp,          # New Model, the model page (live charts), its buttons and download
        inference.bp,       # one record or image through a model, compare
        clinical.bp,        # the evaluation page, take-aways, DICOM series
        job_panels.bp,      # a job page's name/notes/group form, Make Pretrained Model
        test_many.bp,       # Test Many
        pretrained.bp,      # upload, delete, prepare, archive upload, layers
        info.bp,            # the navbar's Info
        files.bp,           # a job's files
        vendor.bp,          # Plotly from the installed package
    )
    # The JSON APIs authenticate state changes by requiring a JSON body or a custom header,
    # which a cross-site form cannot send; the browser pages send both the header and the token.
    apis = (
        api.bp,
        clinical.api_bp,
        job_panels.api_bp,
        test_many.api_bp,
        pretrained.api_bp,
        info.api_bp,
        # DIGITS' URLs take its form posts without a token, as DIGITS did; they refuse another
        # site's Origin instead
        digits_urls.bp,
    )
    for blueprint in pages:
        app.register_blueprint(blueprint)
    for blueprint in apis:
        csrf.exempt(blueprint)
        app.register_blueprint(blueprint)
    job_panels.install_details(app)

    from caffeseg.web import templating
    templating.install(app)
    _register_errors(app)
    return app
