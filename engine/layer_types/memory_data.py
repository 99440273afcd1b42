"""Caffe's ``MemoryData`` layer and pycaffe's ``Net.set_input_arrays`` that feeds it
(``memory_data_layer.cpp``, ``_caffe.cpp: Net_SetInputArrays``, ``pycaffe.py``)."""
from __future__ import annotations

import logging

import numpy as np
import torch

from caffeseg.engine.layer_types.base import Layer, register

log = logging.getLogger(__name__)


@register
class MemoryDataLayer(Layer):
    """Caffe ``MemoryData``: serves batches from arrays handed over by ``Net.set_input_arrays``.

    ``memory_data_param``: ``batch_size``, ``channels``, ``height``, ``width`` (all positive).
    No bottoms; tops ``data`` (batch_size, channels, height, width) and ``label`` (batch_size,)
    at setup, (batch_size, 1, 1, 1) once forward has run (Caffe reshapes it so). Each forward
    serves the next batch_size rows of the arrays, wrapping around. The arrays are used in place
    (not copied), as in Caffe, and transform_param is not applied to them (Caffe warns).
    """

    type = "MemoryData"
    exact_bottoms = 0
    exact_tops = 2

    def setup(self, bottom_shapes):
        mp = self.param.memory_data_param
        self.batch_size, self.channels = int(mp.batch_size), int(mp.channels)
        self.height, self.width = int(mp.height), int(mp.width)
        if min(self.batch_size, self.channels, self.height, self.width) <= 0:
            raise self.fail("batch_size, channels, height, and width must be specified and positive in "
                            "memory_data_param")
        self._data = self._labels = None
        self._count = self._pos = 0
        self._served = False  # the label top is (batch,) until the first forward
        return []

    def reshape(self, bottom_shapes):
        label_shape = (self.batch_size, 1, 1, 1) if self._served else (self.batch_size,)
        return [(self.batch_size, self.channels, self.height, self.width), label_shape]

    def reset(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Serve ``data`` (n, C, H, W) and ``labels`` (n, 1, 1, 1) from the next forward on
        (Caffe's ``Reset``; n a multiple of batch_size, arrays float32 and C-contiguous)."""
        n = data.shape[0]
        if n % self.batch_size:
            raise self.fail(f"n must be a multiple of batch size ({n} rows, batch_size {self.batch_size})")
        if self.param.HasField("transform_param"):
            log.warning("layer '%s' (MemoryData) does not transform array data on Reset()", self.name)
        self._data, self._labels = data, labels
        self._count, self._pos = n, 0

    def forward(self, bottoms, params):
        if self._data is None:
            raise self.fail("MemoryData needs its arrays first: call net.set_input_arrays(data, labels)")
        start, stop = self._pos, self._pos + self.batch_size
        data = torch.from_numpy(self._data[start:stop])
        labels = torch.from_numpy(self._labels[start:stop].reshape(self.batch_size, 1, 1, 1))
        self._pos = stop % self._count
        self._served = True
        return [data, labels]


def _check_array(array, name: str, channels: int, height: int, width: int) -> None:
    """pycaffe's CheckContiguousArray, with its messages."""
    if not isinstance(array, np.ndarray):
        raise RuntimeError(f"{name} must be a numpy array, got {type(array).__name__}")
    if not array.flags["C_CONTIGUOUS"]:
        raise RuntimeError(f"{name} must be C contiguous")
    if array.ndim != 4:
        raise RuntimeError(f"{name} must be 4-d")
    if array.dtype != np.float32:
        raise RuntimeError(f"{name} must be float32")
    if array.shape[1] != channels:
        raise RuntimeError(f"{name} has wrong number of channels ({array.shape[1]}, the layer has {channels})")
    if array.shape[2] != height:
        raise RuntimeError(f"{name} has wrong height ({array.shape[2]}, the layer has {height})")
    if array.shape[3] != width:
        raise RuntimeError(f"{name} has wrong width ({array.shape[3]}, the layer has {width})")


def set_input_arrays(net, data, labels) -> None:
    """pycaffe's ``Net.set_input_arrays(data, labels)``: hand arrays to the net's first layer,
    which must be a MemoryData layer. ``data`` is float32, C-contiguous, (n, C, H, W);
    ``labels`` is (n,) or (n, 1, 1, 1) float32; n a multiple of the batch size. The net keeps
    references to the arrays and reads them in place, as Caffe does."""
    if isinstance(labels, np.ndarray) and labels.ndim == 1:
        labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
    layer = net.layers[0].impl if net.layers else None
    if not isinstance(layer, MemoryDataLayer):
        raise RuntimeError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
    _check_array(data, "data array", layer.channels, layer.height, layer.width)
    _check_array(labels, "labels array", 1, 1, 1)
    if data.shape[0] != labels.shape[0]:
        raise RuntimeError("data and labels must have the same first dimension")
    if data.shape[0] % layer.batch_size != 0:
        raise RuntimeError("first dimensions of input arrays must be a multiple of batch size")
    if data.shape[0] == 0:
        raise RuntimeError("input arrays have no rows")
    layer.reset(data, labels)
