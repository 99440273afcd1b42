"""Third-party browser libraries served from installed Python packages (no CDN: works offline).

The charts use Plotly's own bundle, ``plotly/package_data/plotly.min.js`` inside the ``plotly``
wheel (a dependency in pyproject.toml); it is read from the installed package, never fetched.
"""
from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

from flask import Blueprint, abort, send_file

bp = Blueprint("vendor", __name__, url_prefix="/vendor")

# URL name -> (package, path inside the package)
LIBRARIES = {"plotly.min.js": ("plotly", ("package_data", "plotly.min.js"))}
CACHE_SECONDS = 7 * 24 * 3600


def library_path(name: str) -> Path | None:
    """The file of an installed library, or None when its package is not installed."""
    if name not in LIBRARIES:
        return None
    package, parts = LIBRARIES[name]
    try:
        resource = importlib.resources.files(package).joinpath(*parts)
    except ModuleNotFoundError:
        return None
    path = Path(str(resource))
    return path if path.is_file() else None


@functools.lru_cache(maxsize=None)
def library_version(name: str) -> str:
    """Version of the package that ships ``name`` (cache-busting query of the script URL);
    looked up once per process (it is asked on every page that draws charts)."""
    try:
        from importlib.metadata import version
        return version(LIBRARIES[name][0])
    except Exception:  # noqa: BLE001 - an unknown version only loses the cache buster
        return "0"


@bp.route("/<name>")
def library(name):
    path = library_path(name)
    if path is None:
        abort(404, f"{name} is not installed on this server (pip install the caffeseg dependencies)")
    return send_file(path, mimetype="text/javascript", max_age=CACHE_SECONDS, conditional=True)
