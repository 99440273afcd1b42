"""Users as DIGITS had them: a user name (no password) in a signed cookie, shown in the navbar;
jobs record their owner and only the owner edits, aborts or deletes a job (others view, clone and
test it; the jobs service enforces it, ``jobs.service.check_owner``).

Settings (``web.config``):

* ``LOGIN`` (default off): without it the app behaves as a local single user — nobody logs in,
  every job may be changed by anyone (the user is None);
* ``LOGIN_SECRET``: a shared secret the login form asks for besides the name (for a lab server
  that should not take anyone who reaches it);
* ``REMOTE_USER_HEADER`` (e.g. ``REMOTE_USER`` or ``X-Remote-User``): the user a trusted
  authenticating proxy puts in that request header (or the WSGI ``REMOTE_USER``); the login form
  is then not used. Only set it behind a proxy that strips the header from clients.

With ``LOGIN`` on and nobody logged in, pages are readable; a request that changes something
(POST, PUT, DELETE) is sent to the login page (the API answers 401).
"""
from __future__ import annotations

import hmac
import re
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, session, url_for

bp = Blueprint("users", __name__)
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SESSION_KEY = "username"
_CHANGES = ("POST", "PUT", "PATCH", "DELETE")


def login_enabled(app=None) -> bool:
    config = (app or current_app).config
    return bool(config.get("LOGIN") or config.get("REMOTE_USER_HEADER"))


def current_user() -> str | None:
    """The user of this request, or None (no login configured, nobody logged in, no request)."""
    from flask import has_request_context
    if not has_request_context():
        return None
    header = current_app.config.get("REMOTE_USER_HEADER")
    if header:
        name = request.headers.get(header) or (request.environ.get("REMOTE_USER") if header == "REMOTE_USER" else None)
        return name if name and USERNAME.match(name) else None
    if current_app.config.get("LOGIN"):
        name = session.get(SESSION_KEY)
        return name if isinstance(name, str) and USERNAME.match(name) else None
    return None


def _safe_next(target: str | None) -> str:
    """Only a path of this site (no scheme, no host): never an open redirect."""
    if not target:
        return url_for("home.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("home.index")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_app.config.get("REMOTE_USER_HEADER"):
        flash("This server takes your user from its authenticating proxy.", "info")
        return redirect(url_for("home.index"))
    if not current_app.config.get("LOGIN"):
        flash("Login is not enabled on this server: everyone works as the local user.", "info")
        return redirect(url_for("home.index"))
    error = None
    if request.method == "POST":
        name = (request.form.get("username") or "").strip()
        secret = current_app.config.get("LOGIN_SECRET")
        if not USERNAME.match(name):
            error = "A user name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit."
        elif secret and not hmac.compare_digest(str(request.form.get("secret") or ""), str(secret)):
            error = "The server's shared secret does not match."
        else:
            session[SESSION_KEY] = name
            session.permanent = True
            return redirect(_safe_next(request.form.get("next")))
    return render_template("login.html", error=error, next=request.values.get("next", ""),
                           needs_secret=bool(current_app.config.get("LOGIN_SECRET"))), (400 if error else 200)


@bp.route("/logout", methods=["POST"])
def logout():
    session.pop(SESSION_KEY, None)
    return redirect(url_for("home.index"))


def install(app) -> None:
    """The login guard and the navbar's ``current_user``."""
    app.register_blueprint(bp)

    @app.context_processor
    def user_context():
        return {"current_user": current_user(), "login_enabled": login_enabled()}

    @app.before_request
    def require_login_for_changes():
        if not login_enabled() or request.method not in _CHANGES or current_user() is not None:
            return None
        if request.endpoint in ("users.login", "users.logout", "static"):
            return None
        message = "log in first: only a logged-in user may change jobs"
        if request.path.startswith("/api/") or request.path.endswith(".json") or request.is_json:
            return jsonify({"error": message, "status": 401}), 401
        return redirect(url_for("users.login", next=request.path))
