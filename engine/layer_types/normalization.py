"""BatchNorm, Scale and Bias. BatchNorm keeps Caffe's three statistics blobs
``[Σmean, Σvar (unbiased), Σweight]``, never learned."""
from __future__ import annotations

import torch

from caffeseg.engine.layer_types._util import canonical_axis, count, filled
from caffeseg.engine.layer_types.base import Layer, register
from caffeseg.engine.proto import caffe_pb2


@register
class BatchNormLayer(Layer):
    """Caffe ``BatchNorm``: ``y = (x − mean) / sqrt(var + eps)`` per channel (no scale/shift; add a Scale).

    With batch statistics (TRAIN by default) the running sums are updated during forward:
    ``s = fraction·s + 1``, ``mean_sum = fraction·mean_sum + mean``, ``var_sum = fraction·var_sum +
    m/(m−1)·var``; with global statistics the stored sums divided by ``s`` are used.

    Parameters (``batch_norm_param``): ``use_global_stats`` (default: true in TEST, false in TRAIN),
    ``moving_average_fraction`` (default 0.999), ``eps`` (default 1e-5).
    Blobs: mean sum ``(C,)``, variance sum ``(C,)``, scale factor ``(1,)``; never learned (lr_mult 0).

    Shape: bottom ``(N, C, *)``, top the same shape."""

    type = "BatchNorm"
    exact_bottoms = 1
    exact_tops = 1
    #: Caffe forces lr_mult 0 on all three statistics blobs; the net reads this
    fixed_params = True

    def setup(self, bottom_shapes):
        bp = self.param.batch_norm_param
        for i, spec in enumerate(self.param.param):
            if spec.HasField("lr_mult") and spec.lr_mult != 0:
                raise self.fail(f"param {i} has lr_mult {spec.lr_mult}; BatchNorm statistics "
                                "are not learned (lr_mult must be 0)")
        self.use_global = (bp.use_global_stats if bp.HasField("use_global_stats")
                           else self.phase == caffe_pb2.TEST)
        self.fraction = bp.moving_average_fraction
        self.eps = bp.eps
        shape = tuple(bottom_shapes[0])
        self.channels = shape[1] if len(shape) > 1 else 1
        return [torch.zeros(self.channels), torch.zeros(self.channels), torch.zeros(1)]

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, params):
        x = bottoms[0]
        c = self.channels
        view = (1, c) + (1,) * (x.dim() - 2) if x.dim() > 1 else (1,)
        if self.use_global:
            factor = params[2].detach()[0]
            inv = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
            mean = params[0].detach() * inv
            var = params[1].detach() * inv
            return [(x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps)]
        dims = [d for d in range(x.dim()) if d != 1]
        mean = x.mean(dim=dims)
        centered = x - mean.view(view)
        var = (centered * centered).mean(dim=dims)
        y = centered / torch.sqrt(var.view(view) + self.eps)
        m = x.numel() // c
        unbias = m / (m - 1) if m > 1 else 1.0
        with torch.no_grad():  # Caffe updates the running sums during forward
            params[2].mul_(self.fraction).add_(1.0)
            params[0].mul_(self.fraction).add_(mean.detach())
            params[1].mul_(self.fraction).add_(var.detach() * unbias)
        return [y]


class _BroadcastParam(Layer):
    """Shared shape rules of Scale and Bias: a blob covering axes [axis, axis+num_axes)."""
    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def _field(self):
        raise NotImplementedError

    def _param_shape(self, bottom_shape):
        p = self._field()
        axis = canonical_axis(self, p.axis, len(bottom_shape))
        if p.num_axes < -1:
            raise self.fail(f"num_axes must be >= -1, got {p.num_axes}")
        end = len(bottom_shape) if p.num_axes == -1 else axis + p.num_axes
        if end > len(bottom_shape):
            raise self.fail(f"axis {axis} + num_axes {p.num_axes} exceeds the input's {len(bottom_shape)} axes")
        return tuple(bottom_shape[axis:end])

    def _axis_for(self, x_shape, s_shape):
        if len(s_shape) == 0:
            return 0
        axis = canonical_axis(self, self._field().axis, len(x_shape))
        if tuple(x_shape[axis:axis + len(s_shape)]) != tuple(s_shape):
            raise self.fail(f"blob shape {tuple(s_shape)} does not match input {tuple(x_shape)} at axis {axis}")
        return axis

    def reshape(self, bottom_shapes):
        if len(bottom_shapes) == 2:
            self._axis_for(bottom_shapes[0], bottom_shapes[1])
        return [tuple(bottom_shapes[0])]

    def _broadcast(self, s, x):
        axis = self._axis_for(x.shape, s.shape)
        return s.reshape((1,) * axis + tuple(s.shape) + (1,) * (x.dim() - axis - s.dim()))


@register
class ScaleLayer(_BroadcastParam):
    """Caffe ``Scale``: ``y = x·s (+ b)``, s broadcast over the axes it does not cover.

    s is a learned blob, or bottom 1 when given. Parameters (``scale_param``): ``axis``
    (default 1), ``num_axes`` (default 1; −1: all remaining axes), ``filler`` (default constant 1),
    ``bias_term`` (default false), ``bias_filler`` (default constant 0).
    Blobs: ``s`` (without bottom 1) of shape ``x.shape[axis:axis + num_axes]``, then ``b``.

    Shape:
        - bottom 0: ``(*)``; optional bottom 1: a run of bottom 0's axes from ``axis``
        - top: bottom 0's shape"""

    type = "Scale"

    def _field(self):
        return self.param.scale_param

    def setup(self, bottom_shapes):
        sp = self.param.scale_param
        params = []
        if len(bottom_shapes) == 1:
            shape = self._param_shape(bottom_shapes[0])
            if sp.HasField("filler"):
                params.append(filled(self, sp.filler, shape))
            else:
                params.append(torch.ones(shape))
            bias_shape = shape
        else:
            bias_shape = tuple(bottom_shapes[1])
        if sp.bias_term:
            params.append(filled(self, sp.bias_filler if sp.HasField("bias_filler") else None, bias_shape))
        return params

    def forward(self, bottoms, params):
        x = bottoms[0]
        if len(bottoms) == 2:
            scale, rest = bottoms[1], params
        else:
            scale, rest = params[0], params[1:]
        y = x * self._broadcast(scale, x)
        if self.param.scale_param.bias_term:
            y = y + self._broadcast(rest[0], x)
        return [y]


@register
class BiasLayer(_BroadcastParam):
    """Caffe ``Bias``: ``y = x + b``, b broadcast over the axes it does not cover.

    b is a learned blob, or bottom 1 when given. Parameters (``bias_param``): ``axis``
    (default 1), ``num_axes`` (default 1; −1: all remaining axes), ``filler`` (default constant 0).

    Shape:
        - bottom 0: ``(*)``; optional bottom 1: a run of bottom 0's axes from ``axis``
        - top: bottom 0's shape"""

    type = "Bias"

    def _field(self):
        return self.param.bias_param

    def setup(self, bottom_shapes):
        if len(bottom_shapes) == 2:
            return []
        bp = self.param.bias_param
        return [filled(self, bp.filler if bp.HasField("filler") else None, self._param_shape(bottom_shapes[0]))]

    def forward(self, bottoms, params):
        x = bottoms[0]
        b = bottoms[1] if len(bottoms) == 2 else params[0]
        return [x + self._broadcast(b, x)]
