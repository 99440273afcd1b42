"""InnerProduct: y = X·Wᵀ + b over the axes from ``axis`` on."""
from __future__ import annotations

import torch

from caffeseg.engine.layer_types._util import canonical_axis, count, filled
from caffeseg.engine.layer_types.base import Layer, register


@register
class InnerProductLayer(Layer):
    """Caffe ``InnerProduct`` (fully connected): ``y = x·Wᵀ + b`` over the axes from ``axis`` on.

    Parameters (``inner_product_param``): ``num_output`` (> 0), ``axis`` (default 1),
    ``bias_term`` (default true), ``transpose`` (default false: W is ``(num_output, K)``; true:
    ``(K, num_output)``), ``weight_filler``/``bias_filler`` (default constant 0).

    Shape:
        - bottom: ``(*lead, *rest)`` with ``K = prod(rest)`` fixed at setup
        - top: ``(*lead, num_output)``"""

    type = "InnerProduct"
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes):
        ip = self.param.inner_product_param
        shape = tuple(bottom_shapes[0])
        self.num_output = ip.num_output
        if self.num_output <= 0:
            raise self.fail("num_output must be > 0")
        self.axis = canonical_axis(self, ip.axis, len(shape))
        self.k = count(shape, self.axis)
        self.transpose = ip.transpose
        self.bias_term = ip.bias_term
        wshape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        params = [filled(self, ip.weight_filler if ip.HasField("weight_filler") else None, wshape)]
        if self.bias_term:
            params.append(filled(self, ip.bias_filler if ip.HasField("bias_filler") else None,
                                 (self.num_output,)))
        return params

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if count(shape, self.axis) != self.k:
            raise self.fail(f"input {shape} has {count(shape, self.axis)} features from axis "
                            f"{self.axis}; the weights expect {self.k}")
        return [shape[:self.axis] + (self.num_output,)]

    def forward(self, bottoms, params):
        x = bottoms[0]
        lead = tuple(x.shape[:self.axis])
        x2 = x.reshape(count(lead), self.k)
        w = params[0]
        y = x2 @ w if self.transpose else x2 @ w.t()
        if self.bias_term:
            y = y + params[1]
        return [y.reshape(lead + (self.num_output,))]
