"""Every plugin the package ships is found without its entry points (review finding 14): a
checkout on PYTHONPATH that was never pip-installed has no package metadata."""
from __future__ import annotations

import importlib.metadata
import os
import sys

import pytest

from caffeseg.plugin import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_builtin_list_is_the_shipped_entry_points():
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        shipped = tomllib.load(f)["project"]["entry-points"][base.ENTRY_POINT_GROUP]
    assert base.BUILTIN_PLUGINS == shipped


def test_without_package_metadata_both_shipped_plugins_are_discovered(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    found = base.discover_plugins()
    assert {"sunnybrook", "image_segmentation"} <= set(found.plugins)
    assert not found.broken
