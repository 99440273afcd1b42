"""The installed data plugins, seen the way the web needs them.

Plugins are found through the ``caffeseg.plugins`` entry-point group (``plugin/__init__.py``
may offer its own discovery; it is preferred when present). A plugin declares its form fields;
the web reads each declaration leniently (attribute or dict key, several common spellings) and
turns it into a ``FieldSpec`` from which ``web.forms`` builds a WTForms field. That keeps the
web working whatever small naming choices the plugin contract makes.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib import metadata

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "caffeseg.plugins"


@dataclass
class FieldSpec:
    name: str
    label: str
    kind: str = "text"  # text | path | int | float | choice | bool
    default: object = None
    help: str = ""
    choices: list[tuple[str, str]] = field(default_factory=list)
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None


@dataclass
class PluginInfo:
    id: str
    title: str
    category: str
    fields: list[FieldSpec]
    obj: object = None
    classes: list[str] = field(default_factory=list)
    palette: list = field(default_factory=list)


def _get(obj, *names, default=None):
    for name in names:
        if isinstance(obj, dict) and name in obj:
            return obj[name]
        if not isinstance(obj, dict) and hasattr(obj, name):
            value = getattr(obj, name)
            return value() if callable(value) and name in ("fields", "form_fields", "get_fields") else value
    return default


def _kind(raw, choices) -> str:
    text = str(raw or "").lower()
    if choices:
        return "choice"
    if text in ("path", "folder", "dir", "directory", "file"):
        return "path"
    if text in ("int", "integer"):
        return "int"
    if text in ("float", "number", "percent", "real"):
        return "float"
    if text in ("bool", "boolean", "checkbox"):
        return "bool"
    if text in ("choice", "select", "enum", "radio"):
        return "choice"
    if isinstance(raw, type):
        return {int: "int", float: "float", bool: "bool"}.get(raw, "text")
    return "text"


def _choices(raw) -> list[tuple[str, str]]:
    out = []
    for item in raw or []:
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            out.append((str(item[0]), str(item[1])))
        elif isinstance(item, dict):
            out.append((str(_get(item, "value", "id")), str(_get(item, "label", "title", "value"))))
        else:
            out.append((str(item), str(item)))
    return out


def field_spec(decl) -> FieldSpec:
    name = str(_get(decl, "name", "id", "key"))
    choices = _choices(_get(decl, "choices", "options"))
    kind = _kind(_get(decl, "kind", "type", "field_type"), choices)
    if kind == "text" and name.endswith(("folder", "_dir", "path")):
        kind = "path"
    default = _get(decl, "default", "initial")
    if kind == "text" and isinstance(default, bool):
        kind = "bool"
    elif kind == "text" and isinstance(default, int):
        kind = "int"
    elif kind == "text" and isinstance(default, float):
        kind = "float"
    return FieldSpec(
        name=name,
        label=str(_get(decl, "label", "title", default=name.replace("_", " ").capitalize())),
        kind=kind,
        default=default,
        help=str(_get(decl, "help", "help_text", "description", "tooltip", default="") or ""),
        choices=choices,
        required=bool(_get(decl, "required", default=kind == "path")),
        minimum=_get(decl, "min", "minimum", "min_value"),
        maximum=_get(decl, "max", "maximum", "max_value"),
    )


def _list_attr(obj, *names) -> list:
    """A list attribute, or a method giving it for the default form values."""
    value = _get(obj, *names, default=[])
    if callable(value):
        try:
            value = value({})
        except TypeError:
            value = value()
        except Exception:  # noqa: BLE001 - a plugin's optional extra must not hide the plugin
            value = []
    return list(value or [])


def _describe(plugin_id: str, obj) -> PluginInfo:
    raw_fields = _get(obj, "form_fields", "fields", "get_fields", default=[]) or []
    if isinstance(raw_fields, dict):
        raw_fields = [dict(v, name=k) if isinstance(v, dict) else v for k, v in raw_fields.items()]
    return PluginInfo(
        id=str(_get(obj, "id", "plugin_id", "name", default=plugin_id)),
        title=str(_get(obj, "title", "display_name", "name", default=plugin_id)),
        category=str(_get(obj, "category", "data_type", default="Images")),
        fields=[field_spec(f) for f in raw_fields],
        obj=obj,
        classes=_list_attr(obj, "class_labels", "class_names", "classes", "labels"),
        palette=_list_attr(obj, "palette", "colors"),
    )


def _instantiate(loaded):
    if isinstance(loaded, type):
        try:
            return loaded()
        except TypeError:
            return loaded
    return loaded


def discover() -> list[PluginInfo]:
    """Every installed plugin, each described for the forms. Broken plugins are logged, skipped."""
    found: dict[str, object] = {}
    try:
        pkg = importlib.import_module("plugin")
        for fn_name in ("discover", "discover_plugins", "available_plugins", "load_plugins", "all_plugins"):
            fn = getattr(pkg, fn_name, None)
            if callable(fn):
                result = fn()
                items = result.items() if isinstance(result, dict) else [(None, p) for p in result]
                for key, p in items:
                    obj = _instantiate(p)
                    found[str(key or _get(obj, "id", "name", default=type(obj).__name__))] = obj
                break
    except Exception:  # the plugin package is someone else's code; never take the app down
        log.exception("plugin discovery through plugin/__init__.py failed")
    if not found:
        try:
            eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
        except Exception:
            eps = []
        for ep in eps:
            try:
                found[ep.name] = _instantiate(ep.load())
            except Exception:
                log.exception("could not load plugin %s", ep.name)
        if not found:
            # Source checkout not installed with pip: the entry point is declared in pyproject only.
            try:
                mod = importlib.import_module("plugin.sunnybrook")
                found["sunnybrook"] = _instantiate(getattr(mod, "SunnybrookPlugin"))
            except Exception:
                log.debug("no sunnybrook plugin importable", exc_info=True)
    out = []
    for key, obj in found.items():
        try:
            out.append(_describe(key, obj))
        except Exception:
            log.exception("plugin %s has an unreadable description", key)
    return out
