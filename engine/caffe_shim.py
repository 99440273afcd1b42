"""Make ``import caffe`` inside user Python-layer modules name this engine.

Python layers (FCN's ``voc_layers.py``, DIGITS' ``digits_python_layers.py``) start with
``import caffe`` and subclass ``caffe.Layer``. When real pycaffe is not installed we register
the engine package under the name ``caffe`` (plus ``caffe.proto``, ``caffe.proto.caffe_pb2``
and ``caffe.io`` when the engine has them), so those files run unchanged. When a real
``caffe`` is already imported, nothing is touched.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys


def real_pycaffe_available() -> bool:
    """True if a genuine pycaffe (not this shim) is importable."""
    module = sys.modules.get("caffe")
    if module is not None:
        return not getattr(module, "__caffeseg_engine__", False)
    try:
        return importlib.util.find_spec("caffe") is not None
    except (ImportError, ValueError):
        return False


def install() -> object:
    """Register the engine as ``caffe`` unless a caffe module is already loaded; return ``caffe``."""
    existing = sys.modules.get("caffe")
    if existing is not None:
        return existing
    import engine
    from engine.layer_types.python import Layer

    engine.__caffeseg_engine__ = True
    # The engine package exports Layer itself once the core is complete; make sure the one
    # name every Python layer needs is there in any case.
    if not hasattr(engine, "Layer"):
        engine.Layer = Layer
    sys.modules["caffe"] = engine
    from engine import proto
    from engine.proto import caffe_pb2
    sys.modules.setdefault("caffe.proto", proto)
    sys.modules.setdefault("caffe.proto.caffe_pb2", caffe_pb2)
    proto.caffe_pb2 = caffe_pb2
    try:
        io = importlib.import_module("engine.io")
        sys.modules.setdefault("caffe.io", io)
    except ImportError:
        pass
    return engine


#: names other modules probe for
install_as_caffe = install
