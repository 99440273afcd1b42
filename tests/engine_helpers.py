"""Shared helper for tests that run the engine Net once it exists."""
import importlib

import pytest


def engine_or_skip(*also):
    """The ``engine`` package, or skip the test: when it (or one of the modules named in ``also``,
    e.g. ``"engine.layer_types.python"``) does not import, or it has no ``Net`` yet."""
    try:
        import engine
        for name in also:
            importlib.import_module(name)
    except ImportError as exc:
        pytest.skip("engine%s not importable yet: %s" % ("".join(", " + n for n in also), exc))
    if not hasattr(engine, "Net"):
        pytest.skip("engine.Net not available yet")
    return engine
