"""Element-wise layers: ReLU, Sigmoid, TanH, Power, Dropout (notes §2.5, 2.6, 2.14, 2.15)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine import rng
from engine.layer_types.base import Layer
from engine.layer_types.base import register
from engine.proto import caffe_pb2


class _ElementWise(Layer):
    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]


@register
class ReLULayer(_ElementWise):
    type = "ReLU"

    def setup(self, bottom_shapes):
        self.slope = self.param.relu_param.negative_slope
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        if self.slope == 0:
            return [F.relu(x)]  # gradient 0 at x == 0, as in Caffe
        # leaky_relu uses the slope at x == 0 too, as Caffe does
        return [F.leaky_relu(x, self.slope)]


@register
class SigmoidLayer(_ElementWise):
    type = "Sigmoid"

    def forward(self, bottoms, params):
        return [torch.sigmoid(bottoms[0])]


@register
class TanHLayer(_ElementWise):
    type = "TanH"

    def forward(self, bottoms, params):
        return [torch.tanh(bottoms[0])]


@register
class PowerLayer(_ElementWise):
    type = "Power"

    def setup(self, bottom_shapes):
        pp = self.param.power_param
        self.power, self.scale, self.shift = pp.power, pp.scale, pp.shift
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        if self.power * self.scale == 0:
            value = 1.0 if self.power == 0 else self.shift ** self.power
            return [x * 0 + value]  # constant output, zero gradient
        base = x * self.scale + self.shift if self.scale != 1 else x + self.shift
        if self.power == 1:
            return [base]
        if self.power == 2:
            return [base * base]
        return [torch.pow(base, self.power)]


@register
class DropoutLayer(_ElementWise):
    type = "Dropout"

    def setup(self, bottom_shapes):
        self.ratio = self.param.dropout_param.dropout_ratio
        if not 0.0 <= self.ratio < 1.0:
            raise self.fail(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        if self.phase != caffe_pb2.TRAIN:
            return [x.clone()]  # TEST: identity (a copy, so in-place users do not alias)
        keep = torch.empty_like(x).bernoulli_(1.0 - self.ratio, generator=rng.generator(x.device))
        return [x * (keep * self.scale)]
