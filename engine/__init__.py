"""caffeseg's engine: Caffe's formats and the pycaffe API on PyTorch.

``import caffe`` (the installed proxy, or ``engine.caffe_shim.install()``) gives this package
with pycaffe's public names (docs/ARCHITECTURE.md, "The pycaffe surface"): ``Net``,
``TRAIN``/``TEST``, the mode, device and seed functions, the solvers and ``get_solver``,
``Layer`` for Python layers, ``io``, ``proto.caffe_pb2``, ``NetSpec``/``layers``/``params``/
``to_proto`` (``net_spec``), ``coord_map``, ``draw``, ``Classifier``, ``Detector``,
``layer_type_list``, ``has_nccl``/``NCCL``, ``Timer``, ``init_log``/``log``, the solver
count/rank functions and ``__version__``. Heavy parts load on first use.
"""
from __future__ import annotations

from caffeseg.engine import proto  # noqa: F401
from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.device import set_device, set_mode_cpu, set_mode_gpu  # noqa: F401

proto.caffe_pb2 = caffe_pb2

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST
#: the BVLC Caffe release whose behaviour the engine follows (pycaffe's ``caffe.__version__``)
__version__ = "1.0.0"

from caffeseg.engine.runtime import (NCCL, Timer, has_nccl, init_log, log, set_multiprocess,  # noqa: E402,F401
                            set_solver_count, set_solver_rank, solver_count, solver_rank)


def set_random_seed(seed: int) -> None:
    """Seed the engine's generator (fillers, Dropout, random crops and mirrors)."""
    from caffeseg.engine import rng
    rng.set_seed(seed)


def layer_type_list() -> list[str]:
    """The layer types this engine implements (pycaffe: the registry's type names)."""
    from . import layer_types
    return layer_types.registered_types()


def __getattr__(name):
    # Heavy pieces load on first use, so `import engine` stays cheap for the format tools
    if name == "Net":
        from caffeseg.engine.net import Net
        return Net
    if name == "Blob":
        from caffeseg.engine.blob import Blob
        return Blob
    if name == "Layer":
        from caffeseg.engine.layer_types.python import Layer
        return Layer
    if name in ("io", "net_spec", "coord_map", "draw", "classifier", "detector"):
        import importlib
        return importlib.import_module(__name__ + "." + name)
    if name in ("NetSpec", "layers", "params", "to_proto"):
        from caffeseg.engine import net_spec
        return getattr(net_spec, name)
    if name == "Classifier":
        from caffeseg.engine.classifier import Classifier
        return Classifier
    if name == "Detector":
        from caffeseg.engine.detector import Detector
        return Detector
    if name == "layer_type_list":
        return layer_type_list
    if name in ("get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
                "AdaDeltaSolver", "AdamSolver", "Solver"):
        from caffeseg.engine import solvers
        return getattr(solvers, name)
    raise AttributeError(f"module 'engine' has no attribute '{name}'")


__all__ = ["Net", "Blob", "Layer", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device",
           "set_random_seed", "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "io", "proto", "NetSpec", "layers", "params",
           "to_proto", "Classifier", "Detector", "layer_type_list", "has_nccl", "NCCL", "Timer", "init_log",
           "log", "solver_count", "set_solver_count", "solver_rank", "set_solver_rank", "set_multiprocess",
           "__version__"]
