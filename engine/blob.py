"""pycaffe's ``Blob``: data and diff held as torch tensors, shown to Python as numpy arrays.

The net computes on ``.tensor``/``.grad_tensor`` (on the net's device). ``.data``/``.diff`` are
numpy views made on demand:

* on the CPU, ``tensor.numpy()`` shares memory, so ``blob.data[...] = x`` writes straight into
  what the next forward reads;
* on an accelerator each of data and diff keeps a host mirror with a "head" like Caffe's
  SyncedMemory: reading ``.data`` brings the device values to the host and moves the head
  there (the caller may write into the array), and the next use of ``.tensor`` uploads the host
  array first. Nothing is copied while the values stay on the device.
"""
from __future__ import annotations

import numpy as np
import torch

_AT_DEVICE, _AT_HOST = "device", "host"


class _Synced:
    """One array (data or diff): a device tensor and, off the CPU, a host mirror.

    Like Caffe's SyncedMemory with mutable access on both sides: handing out the device
    tensor moves the head to the device (the caller may modify it), handing out the host
    array moves it to the host. A read on one side copies only when the head is on the other.
    """

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.host: np.ndarray | None = None
        self.head = _AT_DEVICE

    def on_cpu(self) -> bool:
        return self.tensor.device.type == "cpu"

    def device_tensor(self) -> torch.Tensor:
        if self.head == _AT_HOST:
            self.tensor.copy_(torch.from_numpy(self.host))
        self.head = _AT_DEVICE
        return self.tensor

    def set_device_tensor(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.head = _AT_DEVICE

    def host_array(self) -> np.ndarray:
        if self.on_cpu():
            return self.tensor.numpy()
        if self.head == _AT_DEVICE or self.host is None or self.host.shape != tuple(self.tensor.shape):
            self.host = self.tensor.detach().cpu().numpy()
        self.head = _AT_HOST
        return self.host


class Blob:
    """An N-D float32 array with a gradient of the same shape (``net.blobs[name]``, ``net.params[l][i]``)."""

    def __init__(self, shape=(), device: torch.device | str = "cpu", data: torch.Tensor | None = None):
        self.device = torch.device(device)
        if data is None:
            data = torch.zeros(tuple(int(d) for d in shape), dtype=torch.float32, device=self.device)
        self._data = _Synced(data)
        self._diff: _Synced | None = None

    # -- torch side (the net and the solvers) --------------------------------------------
    @property
    def tensor(self) -> torch.Tensor:
        return self._data.device_tensor()

    @tensor.setter
    def tensor(self, value: torch.Tensor) -> None:
        """Rebind the data to a freshly computed tensor (a layer's output)."""
        self._data.set_device_tensor(value)

    @property
    def grad_tensor(self) -> torch.Tensor:
        diff = self._diff_storage()
        return diff.device_tensor()

    @grad_tensor.setter
    def grad_tensor(self, value: torch.Tensor) -> None:
        self._diff_storage().set_device_tensor(value)

    def _diff_storage(self) -> _Synced:
        shape = tuple(self._data.tensor.shape)
        if self._diff is None or tuple(self._diff.tensor.shape) != shape:
            self._diff = _Synced(torch.zeros(shape, dtype=torch.float32, device=self._data.tensor.device))
        return self._diff

    # -- pycaffe side ------------------------------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        return self._data.host_array()

    @data.setter
    def data(self, value):
        raise AttributeError("blob.data cannot be replaced; write into it with blob.data[...] = value")

    @property
    def diff(self) -> np.ndarray:
        return self._diff_storage().host_array()

    @diff.setter
    def diff(self, value):
        raise AttributeError("blob.diff cannot be replaced; write into it with blob.diff[...] = value")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.tensor.shape)

    @property
    def count(self) -> int:
        return int(self._data.tensor.numel())

    def _legacy_axis(self, axis: int) -> int:
        shape = self.shape
        if len(shape) > 4:
            raise ValueError(f"num/channels/height/width need a blob of at most 4 axes, shape is {shape}")
        return shape[axis] if axis < len(shape) else 1

    num = property(lambda self: self._legacy_axis(0))
    channels = property(lambda self: self._legacy_axis(1))
    height = property(lambda self: self._legacy_axis(2))
    width = property(lambda self: self._legacy_axis(3))

    def reshape(self, *shape) -> None:
        """Caffe's Blob::Reshape: keep the values when the count is unchanged, else zeros."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        dims = tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise ValueError(f"blob dimensions must be non-negative, got {dims}")
        if dims == self.shape:
            return
        current = self.tensor
        if current.numel() == int(np.prod(dims, dtype=np.int64)):
            fresh = current.reshape(dims).clone()
        else:
            fresh = torch.zeros(dims, dtype=torch.float32, device=current.device)
        self._data = _Synced(fresh)
        self._diff = None

    def view_as_shape(self, shape) -> "Blob":
        """A blob of another shape over this blob's data and diff (PERMISSIVE param sharing)."""
        view = Blob(device=self.device, data=self.tensor.view(tuple(shape)))
        view._diff = _Synced(self.grad_tensor.view(tuple(shape)))
        return view

    def share_data(self, other: "Blob") -> None:
        """Alias this blob's data (not its diff) to ``other``'s, like Caffe's ``Blob::ShareData``."""
        self._data = other._data

    def __repr__(self):
        return f"Blob(shape={self.shape})"
