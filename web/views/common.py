"""Small helpers shared by the views."""
from __future__ import annotations

from flask import abort, current_app, flash, redirect, url_for

from web import plugins as web_plugins
from web.backend import NotFound
from web.safety import check_job_id


def backend():
    return current_app.extensions["caffeseg_backend"]


def plugins():
    return web_plugins.installed(current_app)


def plugin_by_id(plugin_id: str):
    found = web_plugins.catalogue(current_app)
    if plugin_id in found.plugins:
        return found.plugins[plugin_id]
    for problem in found.broken:
        if problem.name == plugin_id:
            raise NotFound(f"data plugin {plugin_id!r} is installed but broken: {problem.error}")
    raise NotFound(f"no data plugin called {plugin_id!r} is installed")


def load_job(job_id: str, kind: str | None = None) -> dict:
    check_job_id(job_id)
    job = backend().job(job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    if kind and job.get("kind") != kind:
        raise NotFound(f"job {job_id} is not a {kind} job")
    return job


def post_action(job_id: str, kind: str, action: str, message: str):
    """A lifecycle button (abort, resume…): form token checked, the backend's refusal flashed,
    back to the job's page."""
    from web.forms import ConfirmForm
    load_job(job_id, kind)
    if not ConfirmForm().validate_on_submit():
        abort(400, "missing form token")
    try:
        getattr(backend(), action)(job_id)
        flash(message, "ok")
    except (ValueError, RuntimeError, LookupError) as exc:
        flash(str(exc), "error")
    return redirect(url_for(f"{kind}s.show", job_id=job_id))


def add_post_actions(bp, kind: str, actions: dict) -> None:
    """``POST /<job_id>/<path>`` for each ``{path: (endpoint, backend action, flash message)}``."""
    for path, (endpoint, action, message) in actions.items():
        def view(job_id, action=action, message=message):
            return post_action(job_id, kind, action, message)
        view.__name__ = view.__qualname__ = endpoint  # CSRFProtect and Flask name views by these
        bp.add_url_rule(f"/<job_id>/{path}", endpoint, view, methods=["POST"])
