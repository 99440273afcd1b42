"""The JSON API's description (``web/openapi.yaml``) and the form-backed request bodies.

``operations()`` lists every operation of the spec for the reference page (``GET /api/``);
``with_defaults`` lets an API body leave out any field that has a default in the page's form, so
the API and the pages validate with the same Flask-WTF form.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from werkzeug.datastructures import MultiDict

OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.yaml"
METHODS = ("get", "post", "put", "patch", "delete")


def operations() -> tuple[dict, list[dict]]:
    """(the spec's ``info``, [{method, path, summary, description, parameters, body_type,
    body_fields, required, responses, anchor}] in the spec's order)."""
    spec = yaml.safe_load(OPENAPI_PATH.read_text())
    helps = _form_field_help()
    operations = []
    for path, item in spec.get("paths", {}).items():
        shared = item.get("parameters", [])
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            body = (((op.get("requestBody") or {}).get("content") or {}))
            schema = next(iter(body.values()), {}).get("schema", {}) if body else {}
            operations.append({
                "method": method.upper(), "path": path, "summary": op.get("summary", ""),
                "description": op.get("description", ""),
                "parameters": [p for p in shared + op.get("parameters", []) if "name" in p],
                "body_type": next(iter(body), None),
                "body_fields": [(name, _described(field, helps.get(name)))
                                for name, field in sorted((schema.get("properties") or {}).items())],
                "required": set(schema.get("required") or []),
                "responses": sorted((op.get("responses") or {}).keys()),
                "anchor": (method + path).replace("/", "-").replace("{", "").replace("}", "")})
    return spec.get("info", {}), operations


def _form_field_help() -> dict:
    """{field name: its form help} of the forms the API bodies go through (the model form and
    the dataset form's generic fields): a body field the spec does not describe gets the form's text."""
    from caffeseg.web.forms import ModelForm, _DatasetBase
    out = {}
    for form_cls in (_DatasetBase, ModelForm):
        for name in dir(form_cls):
            unbound = getattr(form_cls, name, None)
            kwargs = getattr(unbound, "kwargs", None)
            if not isinstance(kwargs, dict) or not hasattr(unbound, "field_class"):
                continue
            label = kwargs.get("label") or (unbound.args[0] if getattr(unbound, "args", None) else "")
            text = kwargs.get("description") or ""
            out[name] = f"{label}: {text}" if label and text else (label or text)
    return out


def _described(field: dict, fallback: str | None) -> dict:
    field = dict(field or {})
    if not field.get("description") and fallback:
        field["description"] = fallback
    return field


def with_defaults(form_cls, flat: dict) -> MultiDict:
    """API bodies may leave out any field that has a default in the form."""
    blank = form_cls(formdata=None, meta={"csrf": False})
    merged = {}
    for field in blank:
        if field.name in flat or field.type in ("CSRFTokenField", "FileField"):
            continue
        if field.type == "BooleanField":
            if field.data:
                merged[field.name] = "y"
        elif field.data not in (None, "") and not isinstance(field.data, (list, dict)):
            merged[field.name] = str(field.data)
    for key, value in flat.items():
        if isinstance(value, bool):
            if value:
                merged[key] = "y"
        elif value is not None and value != "":
            merged[key] = str(value)
    return MultiDict(merged)


def form_errors(form) -> dict:
    """A failed form's errors as {field: "message; message"} (the API's ``fields``)."""
    return {name: "; ".join(msgs) for name, msgs in form.errors.items()}


def refuse_unknown_keys(given, known, where="the request body") -> None:
    """BadRequest naming every key of ``given`` that is not in ``known`` (a misspelt option would
    otherwise be ignored silently and its default used)."""
    from caffeseg.web.backend import BadRequest
    unknown = sorted(str(k) for k in given if k not in known)
    if unknown:
        raise BadRequest(f"unknown field{'s' if len(unknown) > 1 else ''} in {where}: {', '.join(unknown)}; "
                         f"the fields are: {', '.join(sorted(known))}",
                         {k: "unknown field" for k in unknown})


def form_field_names(form_cls) -> set[str]:
    """The names an API body may use for ``form_cls`` (its fields, without the CSRF token)."""
    return {f.name for f in form_cls(formdata=None, meta={"csrf": False}) if f.type != "CSRFTokenField"}
