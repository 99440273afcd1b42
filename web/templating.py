"""Jinja filters and globals shared by every template."""
from __future__ import annotations

import datetime as _dt
import math
import re

from markupsafe import Markup, escape

from caffeseg.web import plugins

STATUS_CLASS = {
    "done": "ok", "running": "run", "waiting": "wait", "initialized": "wait", "queued": "wait",
    "error": "err", "aborted": "warn", "interrupted": "warn",
}


def duration(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(max(0, float(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h {m:02d}m"
    if m:
        return f"{m}m {s:02d}s"
    return f"{s}s"


def timestamp(value) -> str:
    if value in (None, ""):
        return "–"
    if isinstance(value, str):
        return value
    return _dt.datetime.fromtimestamp(float(value)).strftime("%Y-%m-%d %H:%M:%S")


def filesize(n) -> str:
    if n is None:
        return "–"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def number(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v) or math.isinf(v):
        return str(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def sparkline(values, width: int = 90, height: int = 22) -> Markup:
    """A tiny inline SVG of a metric's history (server-side, so tables need no JS)."""
    vals = [float(v) for v in (values or []) if v is not None and math.isfinite(float(v))]
    if len(vals) < 2:
        return Markup('<svg class="spark" width="%d" height="%d"></svg>' % (width, height))
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    step = (width - 2) / (len(vals) - 1)
    pts = " ".join(f"{1 + i * step:.1f},{height - 2 - (v - lo) / span * (height - 4):.1f}"
                   for i, v in enumerate(vals))
    return Markup(f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
                  f'<polyline points="{escape(pts)}"/></svg>')


def status_class(status) -> str:
    return STATUS_CLASS.get(str(status or "").lower(), "wait")


_SPLIT_BLOB = re.compile(r"_split_\d+$")
_CODE_SPAN = re.compile(r"`([^`]+)`")


def inline_code(text) -> Markup:
    """Markdown-style `code` spans of a description as <code> (the rest escaped)."""
    parts = _CODE_SPAN.split(str(text or ""))
    return Markup("".join(f"<code>{escape(p)}</code>" if i % 2 else str(escape(p)) for i, p in enumerate(parts)))


def enum_values(values) -> Markup:
    """An enum as the API reference lists it: each value as code, the empty string named as such."""
    shown = ['"" (empty: the default)' if v == "" else ("null" if v is None else f"<code>{escape(v)}</code>")
             for v in values or []]
    return Markup(", ".join(shown))


def split_blob(name) -> bool:
    """A blob Caffe's automatic Split layers add (``conv1_relu1_0_split_1``): internal, hidden by default."""
    return bool(_SPLIT_BLOB.search(str(name or "")))


def install(app) -> None:
    app.jinja_env.filters.update(duration=duration, timestamp=timestamp, filesize=filesize,
                                 number=number, sparkline=sparkline, status_class=status_class)
    app.jinja_env.filters.update(inline_code=inline_code, enum_values=enum_values)
    app.jinja_env.tests["split_blob"] = split_blob
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True

    @app.context_processor
    def globals_():
        return {"installed_plugins": plugins.installed(app), "broken_plugins": plugins.broken(app),
                "vendor_url": _vendor_url}


def _vendor_url(name: str) -> str:
    """URL of a library served from an installed package (web.views.vendor), versioned for caching."""
    from flask import url_for
    from caffeseg.web.views.vendor import library_version
    return url_for("vendor.library", name=name, v=library_version(name))
