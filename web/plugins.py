"""The data plugins the web offers: ``plugin.base.discover_plugins()``, run once per app.

The web uses the plugin contract itself (``DataPlugin``, its ``FormField`` list); there is no
second description of a plugin here. ``PLUGINS`` in the app config (a list of plugins) replaces
discovery, for tests.
"""
from __future__ import annotations

from caffeseg.plugin.base import BrokenPlugin, DataPlugin, Discovery, discover_plugins


def catalogue(app) -> Discovery:
    """The app's plugins: the working ones by id and the broken ones with their reason."""
    cache = app.extensions.setdefault("caffeseg_plugins", {})
    if "discovery" not in cache:
        given = app.config.get("PLUGINS")
        cache["discovery"] = (Discovery({p.id: p for p in given}, []) if given is not None
                              else discover_plugins())
    return cache["discovery"]


def installed(app) -> list[DataPlugin]:
    return list(catalogue(app).plugins.values())


def broken(app) -> list[BrokenPlugin]:
    return list(catalogue(app).broken)
