"""caffeseg's engine: Caffe's formats and the pycaffe API on PyTorch.

``import engine as caffe`` (or ``engine.caffe_shim.install()``) gives the pycaffe names:
``Net``, ``TRAIN``/``TEST``, the mode and seed functions, the solvers, ``Layer`` for Python
layers, ``io`` and ``proto.caffe_pb2``.
"""
from __future__ import annotations

from engine import proto  # noqa: F401
from engine.proto import caffe_pb2
from engine.device import set_device, set_mode_cpu, set_mode_gpu  # noqa: F401

proto.caffe_pb2 = caffe_pb2

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST


def set_random_seed(seed: int) -> None:
    """Seed the engine's generator (fillers, Dropout, random crops and mirrors)."""
    from engine import rng
    rng.set_seed(seed)


def __getattr__(name):
    # Heavy pieces load on first use, so `import engine` stays cheap for the format tools
    if name == "Net":
        from engine.net import Net
        return Net
    if name == "Blob":
        from engine.blob import Blob
        return Blob
    if name == "Layer":
        from engine.layer_types.python import Layer
        return Layer
    if name == "io":
        import importlib
        return importlib.import_module("engine.io")
    if name in ("get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
                "AdaDeltaSolver", "AdamSolver", "Solver"):
        import engine.solvers as solvers
        return getattr(solvers, name)
    raise AttributeError(f"module 'engine' has no attribute '{name}'")


__all__ = ["Net", "Blob", "Layer", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device",
           "set_random_seed", "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "io", "proto"]
