"""EuclideanLoss and SigmoidCrossEntropyLoss (notes §2.26)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.layer_types._util import count, optional_ignore_label
from engine.layer_types.base import Layer, register
from engine.layer_types.softmax import normalization_mode, normalizer
from engine.proto import caffe_pb2


@register
class EuclideanLossLayer(Layer):
    type = "EuclideanLoss"
    exact_bottoms = 2
    exact_tops = 1
    is_loss = True

    def reshape(self, bottom_shapes):
        a, b = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if a[0] != b[0] or count(a) != count(b):
            raise self.fail(f"inputs {a} and {b} need the same first dimension and count")
        return [()]

    def allow_force_backward(self, bottom_index):
        return True  # EuclideanLoss may send gradients to both inputs

    def forward(self, bottoms, params):
        a, b = bottoms
        diff = a - b.reshape(a.shape)
        return [(diff * diff).sum() / (2.0 * a.shape[0])]


@register
class SigmoidCrossEntropyLossLayer(Layer):
    type = "SigmoidCrossEntropyLoss"
    exact_bottoms = 2
    exact_tops = 1
    is_loss = True

    def setup(self, bottom_shapes):
        lp = self.param.loss_param
        self.ignore_label = optional_ignore_label(lp)
        self.mode = normalization_mode(lp, caffe_pb2.LossParameter.BATCH_SIZE)
        return []

    def reshape(self, bottom_shapes):
        a, b = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if a[0] != b[0] or count(a) != count(b):
            raise self.fail(f"scores {a} and targets {b} need the same first dimension and count")
        return [()]

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def forward(self, bottoms, params):
        x, target = bottoms[0], bottoms[1].detach().reshape(bottoms[0].shape)
        positive = (x >= 0).to(x.dtype)
        # Caffe's overflow-safe form: x·(t − [x≥0]) − log(1 + exp(x − 2x·[x≥0]))
        per = x * (target - positive) - F.softplus(x - 2 * x * positive)
        if self.ignore_label is not None:
            valid = target != self.ignore_label
            per = per * valid
            valid_count = valid.sum()
        else:
            valid_count = torch.tensor(x.numel(), device=x.device)
        outer = x.shape[0]
        z = normalizer(self.mode, outer, x.numel() // outer, valid_count)
        return [-per.sum() / z]
