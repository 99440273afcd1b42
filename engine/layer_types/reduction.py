"""Layers that reduce the trailing axes of a blob: Reduction (to one number per leading
position) and MVN (mean-variance normalisation over each group of trailing values).
"""
from __future__ import annotations

import torch

from caffeseg.engine.layer_types._util import canonical_axis, count
from caffeseg.engine.layer_types.base import Layer, register
from caffeseg.engine.proto import caffe_pb2

_R = caffe_pb2.ReductionParameter


@register
class ReductionLayer(Layer):
    """Caffe ``Reduction``: collapse every axis from ``axis`` on into one number.

    ``SUM`` Σx, ``ASUM`` Σ|x|, ``SUMSQ`` Σx², ``MEAN`` Σx / n, each times ``coeff``. The gradient
    of ASUM at 0 is 0 (Caffe's sign).

    Parameters (``reduction_param``): ``operation`` (default SUM), ``axis`` (default 0: reduce
    everything to a 0-axis scalar; negative counts from the end), ``coeff`` (default 1).

    Shape:
        - bottom: ``(d0, ..., d_{axis-1}, *rest)``
        - top: ``(d0, ..., d_{axis-1})`` (``()`` for axis 0)
    """

    type = "Reduction"
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes):
        self.operation = self.param.reduction_param.operation
        if self.operation not in (_R.SUM, _R.ASUM, _R.SUMSQ, _R.MEAN):
            raise self.fail(f"unknown reduction operation {self.operation}")
        return []

    def _axis(self, ndim: int) -> int:
        return canonical_axis(self, self.param.reduction_param.axis, ndim)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        return [shape[:self._axis(len(shape))]]

    def forward(self, bottoms, params):
        x = bottoms[0]
        axis = self._axis(x.dim())
        lead = tuple(x.shape[:axis])
        flat = x.reshape(lead + (count(x.shape, axis),))
        coeff = float(self.param.reduction_param.coeff)
        if self.operation == _R.ASUM:
            y = flat.abs().sum(-1)
        elif self.operation == _R.SUMSQ:
            y = (flat * flat).sum(-1)
        else:
            y = flat.sum(-1)
            if self.operation == _R.MEAN:
                coeff /= flat.shape[-1]
        return [y * coeff if coeff != 1 else y]


@register
class MVNLayer(Layer):
    """Caffe ``MVN``: subtract the mean and, optionally, divide by the standard deviation.

    Statistics are taken per (item, channel) over H×W, or per item over C×H×W with
    ``across_channels``. ``y = (x − mean) / (std + eps)``: eps is added to the standard deviation,
    not the variance. The backward is Caffe's, ``(dy − mean(dy) − y·mean(y·dy)) / (std + eps)``,
    which leaves out the ``std / (std + eps)`` factor of the exact derivative (it matters only
    for a large eps), so it is written out instead of left to autograd.

    Parameters (``mvn_param``): ``normalize_variance`` (default true), ``across_channels``
    (default false), ``eps`` (default 1e-9).

    Shape (Caffe's legacy 4-axis view: missing trailing axes count as 1):
        - bottom: ``(N, C, H, W)`` or fewer axes
        - top: ``(N, C, H, W)``, the bottom's shape padded with 1s to 4 axes
    """

    type = "MVN"
    exact_bottoms = 1
    exact_tops = 1
    explicit_backward = True  # Caffe's gradient, see above

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) > 4:
            raise self.fail(f"works on at most 4 axes (num, channels, height, width), got {shape}")
        return [shape + (1,) * (4 - len(shape))]

    def _groups(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as (groups, values per group)."""
        shape = self.reshape([tuple(x.shape)])[0]
        groups = shape[0] if self.param.mvn_param.across_channels else shape[0] * shape[1]
        return x.reshape(groups, -1)

    def _centred_and_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        flat = self._groups(x)
        centred = flat - flat.mean(1, keepdim=True)
        if not self.param.mvn_param.normalize_variance:
            return centred, None
        scale = (centred * centred).mean(1, keepdim=True).sqrt() + self.param.mvn_param.eps
        return centred, scale

    def forward(self, bottoms, params):
        x = bottoms[0]
        centred, scale = self._centred_and_scale(x)
        y = centred if scale is None else centred / scale
        return [y.reshape(self.reshape([tuple(x.shape)])[0])]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        if not propagate_down[0]:
            return [None], []
        x = bottoms[0]
        dy = self._groups(top_diffs[0])
        _, scale = self._centred_and_scale(x)
        if scale is None:
            dx = dy - dy.mean(1, keepdim=True)
        else:
            y = self._groups(tops[0])
            dim = dy.shape[1]
            spread = y * (y * dy).sum(1, keepdim=True) + dy.sum(1, keepdim=True)
            dx = (dy - spread / dim) / scale
        return [dx.reshape(x.shape)], []
