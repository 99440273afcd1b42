"""Small helpers shared by the views."""
from __future__ import annotations

from flask import abort, current_app, flash, redirect, request, url_for

from caffeseg.web import api_spec, plugins as web_plugins
from caffeseg.web.backend import BadRequest, NotFound
from caffeseg.web.forms import ConfirmForm, ModelForm
from caffeseg.web.job_options import fill_model_choices, model_options
from caffeseg.web.safety import check_job_id


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


def require_form_token() -> None:
    """A page's POST button: 400 unless the form carries this site's CSRF token."""
    if not ConfirmForm().validate_on_submit():
        abort(400, "missing form token")


def int_or_none(value, field: str) -> int | None:
    """A form or JSON value that may be left empty: None, or a whole number (else BadRequest naming
    ``field``)."""
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{field} must be a whole number", {field: "a whole number"}) from None


def job_json(job: dict) -> dict:
    """A job as the JSON API answers it: without its log (``/api/jobs/<id>/log`` serves that)."""
    return {k: v for k, v in job.items() if k != "log"}


def post_action(job_id: str, kind: str, action: str, message: str):
    """A lifecycle button (abort, resume…): form token checked, the backend's refusal flashed,
    back to the job's page."""
    load_job(job_id, kind)
    require_form_token()
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


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def require_non_form_origin():
    """A JSON API's ``before_request``: a state change needs a JSON body or the X-Requested-With
    header, which a cross-site form cannot send (the API's CSRF defence)."""
    if request.method in SAFE_METHODS or request.is_json or request.headers.get("X-Requested-With"):
        return None
    abort(403, "state-changing API calls need a JSON body or the X-Requested-With header")


def json_body() -> dict:
    """The request's JSON object (or its form fields); BadRequest for any other body."""
    data = request.get_json(silent=True)
    if data is None:
        data = request.form.to_dict()
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def create_model_from_fields(fields: dict) -> list[str]:
    """Model jobs from an API body's New Model form fields (caffeseg's or DIGITS' renamed to
    them): checked by the form itself, so the API refuses what the page refuses. The new ids."""
    form = ModelForm(formdata=api_spec.with_defaults(ModelForm, fields), meta={"csrf": False})
    fill_model_choices(form, backend())
    if not form.validate():
        raise BadRequest("invalid model options", api_spec.form_errors(form))
    return backend().create_model(model_options(form, backend()))
