"""How ``import caffe`` names this engine when no real pycaffe is there.

Two ways in, one result (``sys.modules["caffe"]`` is the ``engine`` package itself):

* ``install()``: the runner, the Python-layer loader and ``jobs.infer`` call it; it registers
  the engine as ``caffe`` unless some ``caffe`` module is already loaded.
* The installed proxy package ``caffe`` (``engine/pycaffe_proxy/caffe/__init__.py``, put on the path
  by ``pip install`` of this project) calls ``install(replacing=<proxy>)`` so that a plain
  ``python script.py`` with ``import caffe`` gets the engine. The proxy sits in site-packages
  (or, for an editable install, behind setuptools' path finder), so a real pycaffe that is
  earlier on the path (``PYTHONPATH``, a build's ``python/`` folder) is imported instead.

Submodules: a finder at the front of ``sys.meta_path`` answers ``caffe.<name>`` with the
already-imported ``engine.<name>`` module (the same object, so ``caffe.io is engine.io``);
``caffe.pycaffe`` and ``caffe._caffe``, pycaffe's implementation modules, answer with the
engine package, which has their public names.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

#: first line of the proxy's ``__init__.py``; ``real_pycaffe_available`` reads it to tell the
#: proxy from a genuine pycaffe without importing either
PROXY_MARKER = "# caffeseg-engine-proxy"
#: pycaffe module names that have no engine module of the same name
_ALIASED_TO_PACKAGE = ("pycaffe", "_caffe")


def is_engine_proxy(origin) -> bool:
    """True if the file ``origin`` (a module spec's origin) is caffeseg's ``caffe`` proxy."""
    if not origin or not isinstance(origin, str):
        return False
    try:
        with open(origin, encoding="utf-8", errors="replace") as f:
            return f.readline().strip() == PROXY_MARKER
    except OSError:
        return False


def real_pycaffe_available() -> bool:
    """True if a genuine pycaffe (not this engine, not its proxy) is what ``import caffe`` gives."""
    module = sys.modules.get("caffe")
    if module is not None:
        return not getattr(module, "__caffeseg_engine__", False) \
            and not getattr(module, "__caffeseg_proxy__", False)
    try:
        spec = importlib.util.find_spec("caffe")
    except (ImportError, ValueError):
        return False
    return spec is not None and not is_engine_proxy(spec.origin)


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, module):
        self._module = module

    def create_module(self, spec):
        return self._module

    def exec_module(self, module):
        pass  # already executed under its engine name


class _CaffeSubmoduleFinder(importlib.abc.MetaPathFinder):
    """``caffe.X`` -> ``engine.X`` while ``caffe`` is the engine."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith("caffe."):
            return None
        from caffeseg import engine
        if sys.modules.get("caffe") is not engine:
            return None
        rest = fullname[len("caffe."):]
        if rest in _ALIASED_TO_PACKAGE:
            module = engine
        else:
            try:
                module = importlib.import_module(engine.__name__ + "." + rest)
            except ModuleNotFoundError as err:
                if err.name == engine.__name__ + "." + rest:
                    return None
                raise
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module),
                                              is_package=hasattr(module, "__path__"))


_FINDER = _CaffeSubmoduleFinder()


def install(replacing=None) -> object:
    """Register the engine as ``caffe`` and return ``caffe``.

    A ``caffe`` already in ``sys.modules`` (real pycaffe, or the engine from an earlier call)
    is returned untouched, unless it is ``replacing`` (the proxy package asking to be replaced).
    """
    existing = sys.modules.get("caffe")
    if existing is not None and existing is not replacing:
        return existing
    from caffeseg import engine

    engine.__caffeseg_engine__ = True
    sys.modules["caffe"] = engine
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    # modules a Caffe user imports by their dotted name
    for name in ("proto", "proto.caffe_pb2", "io"):
        sys.modules.setdefault("caffe." + name, importlib.import_module(engine.__name__ + "." + name))
    return engine
