"""Local response normalization (notes §2.4, checklist 4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.layers.base import Layer, register
from engine.proto import caffe_pb2


@register
class LRNLayer(Layer):
    type = "LRN"
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes):
        lp = self.param.lrn_param
        self.size = lp.local_size
        if self.size % 2 == 0 or self.size <= 0:
            raise self.fail(f"local_size must be a positive odd number, got {self.size}")
        self.alpha, self.beta, self.k = lp.alpha, lp.beta, lp.k
        self.within = lp.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL
        return []

    def reshape(self, bottom_shapes):
        if len(bottom_shapes[0]) != 4:
            raise self.fail(f"input must be 4-D, got {tuple(bottom_shapes[0])}")
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, params):
        x = bottoms[0]
        if not self.within:
            # PyTorch also divides alpha by the window size, like Caffe's ACROSS_CHANNELS
            return [F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)]
        # Caffe builds WITHIN_CHANNEL from sub-layers: the window sum is divided by size² and
        # the additive constant is fixed at 1 (k is ignored)
        half = (self.size - 1) // 2
        sums = F.avg_pool2d(x * x, self.size, 1, half, divisor_override=1)
        scale = 1.0 + (self.alpha / (self.size * self.size)) * sums
        return [x * scale.pow(-self.beta)]
