"""Caffe's process-wide mode (CPU/GPU) and device id (``caffe.set_mode_gpu()``, ``set_device``).

Nets take the device current when they are built; changing the mode later does not move them.
"""
from __future__ import annotations

import torch

_mode = "cpu"
_device_id = 0


class DeviceError(RuntimeError):
    """GPU mode was requested on a machine without a usable CUDA device."""


def set_mode_cpu() -> None:
    global _mode
    _mode = "cpu"


def set_mode_gpu() -> None:
    global _mode
    if not torch.cuda.is_available():
        raise DeviceError("caffe.set_mode_gpu(): no CUDA device is available to PyTorch on this machine "
                          "(torch.cuda.is_available() is False); use set_mode_cpu()")
    _mode = "gpu"
    # Caffe computes in full float32; TF32 convolutions/matmuls would drift ~1e-3 from it
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def set_device(device_id: int) -> None:
    global _device_id
    device_id = int(device_id)
    if torch.cuda.is_available() and not 0 <= device_id < torch.cuda.device_count():
        raise DeviceError(f"caffe.set_device({device_id}): only {torch.cuda.device_count()} CUDA device(s)")
    _device_id = device_id


def cpu_threads() -> int:
    """The engine's CPU threads (torch's intra-op pool)."""
    return torch.get_num_threads()


def set_cpu_threads(count: int) -> None:
    """Compute with ``count`` CPU threads from now on: torch's pool and numpy's OpenBLAS (the
    fc6/fc7 GEMMs). caffeseg's own, not pycaffe's: real Caffe's OpenBLAS reads its count once.
    The web borrows idle cores with it for one inference (``jobs.infer``)."""
    from caffeseg.engine.layer_types import fast_conv
    count = max(1, int(count))
    torch.set_num_threads(count)
    fast_conv.set_blas_threads(count)


def mode() -> str:
    return _mode


def current_device() -> torch.device:
    """Where a net built now lives."""
    if _mode == "gpu":
        return torch.device("cuda", _device_id)
    return torch.device("cpu")
