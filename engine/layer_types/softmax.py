"""Softmax and SoftmaxWithLoss (normalization: explicit ``normalization``, else legacy
``normalize``, default VALID; probabilities clamped at FLT_MIN before the log)."""
from __future__ import annotations

import torch

from caffeseg.engine.layer_types._util import (FLT_MIN, canonical_axis, check_label_count, count, optional_ignore_label,
                                 valid_and_safe_labels)
from caffeseg.engine.layer_types.base import Layer, register
from caffeseg.engine.proto import caffe_pb2

_N = caffe_pb2.LossParameter


def normalization_mode(loss_param: caffe_pb2.LossParameter, default: int) -> int:
    """An explicit ``normalization`` wins; else legacy ``normalize`` (true→VALID, false→BATCH_SIZE)."""
    if loss_param.HasField("normalization"):
        return loss_param.normalization
    if loss_param.HasField("normalize"):
        return _N.VALID if loss_param.normalize else _N.BATCH_SIZE
    return default


def normalizer(mode: int, outer: int, inner: int, valid_count: torch.Tensor) -> torch.Tensor:
    """Caffe's LossLayer::GetNormalizer, clamped to at least 1."""
    if mode == _N.FULL:
        z = torch.tensor(float(outer * inner))
    elif mode == _N.VALID:
        z = valid_count.to(torch.float32)
    elif mode == _N.BATCH_SIZE:
        z = torch.tensor(float(outer))
    else:
        z = torch.tensor(1.0)
    return torch.clamp(z.to(valid_count.device), min=1.0)


@register
class SoftmaxLayer(Layer):
    """Caffe ``Softmax``: ``y = exp(x) / Σ exp(x)`` along ``axis``.

    Parameters (``softmax_param``): ``axis`` (default 1, negative counts from the end).

    Shape: bottom ``(*)``, top the same shape."""

    type = "Softmax"
    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom_shapes):
        canonical_axis(self, self.param.softmax_param.axis, len(bottom_shapes[0]))
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [torch.softmax(x, dim=canonical_axis(self, self.param.softmax_param.axis, x.dim()))]


class _SoftmaxLoss(torch.autograd.Function):
    """Loss and probabilities forward; Caffe's (p − onehot)·w/Z backward, zero at ignored cells."""

    @staticmethod
    def forward(ctx, x, label, axis, ignore_label, mode):
        outer, channels = count(x.shape[:axis]), x.shape[axis]
        inner = count(x.shape[axis + 1:])
        prob = torch.softmax(x, dim=axis)
        p3 = prob.reshape(outer, channels, inner)
        lab = label.reshape(outer, inner).to(torch.long)  # truncation, as static_cast<int>
        valid, safe = valid_and_safe_labels(lab, ignore_label)
        picked = p3.gather(1, safe.unsqueeze(1)).squeeze(1)
        logs = torch.log(torch.clamp(picked, min=FLT_MIN)) * valid
        z = normalizer(mode, outer, inner, valid.sum())
        loss = -logs.sum() / z
        ctx.save_for_backward(p3, safe, valid, z)
        ctx.x_shape = x.shape
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    def backward(ctx, dloss, dprob):
        p3, safe, valid, z = ctx.saved_tensors
        grad = p3.clone()
        grad.scatter_add_(1, safe.unsqueeze(1), -torch.ones_like(safe, dtype=grad.dtype).unsqueeze(1))
        grad *= valid.unsqueeze(1).to(grad.dtype)
        grad *= dloss / z
        return grad.reshape(ctx.x_shape), None, None, None, None


@register
class SoftmaxWithLossLayer(Layer):
    """Caffe ``SoftmaxWithLoss``: ``−Σ log softmax(x)[label] / normalizer`` over the non-ignored positions.

    Parameters: ``softmax_param.axis`` (class axis, default 1); ``loss_param``: ``ignore_label``
    (optional), ``normalization`` (default VALID; FULL, BATCH_SIZE, NONE) or the legacy
    ``normalize``. The labels take no gradient.

    Shape:
        - bottom 0 (scores): ``(N, C, *)``
        - bottom 1 (labels): ``(N, ...)`` with ``N·prod(*)`` values
        - top 0: ``()``; optional top 1: the probabilities, bottom 0's shape (give two loss_weights)"""

    type = "SoftmaxWithLoss"
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    is_loss = True

    def setup(self, bottom_shapes):
        lp = self.param.loss_param
        self.ignore_label = optional_ignore_label(lp)
        self.mode = normalization_mode(lp, _N.VALID)
        if len(self.param.top) == 2 and len(self.param.loss_weight) != 2:
            raise self.fail("with two tops, give one loss_weight per top (e.g. 1 and 0)")
        return []

    def reshape(self, bottom_shapes):
        scores, labels = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        axis = canonical_axis(self, self.param.softmax_param.axis, len(scores))
        if scores[0] != labels[0]:
            raise self.fail(f"scores {scores} and labels {labels} need the same first dimension")
        check_label_count(self, scores, labels, axis)
        return [()] + ([scores] if len(self.param.top) == 2 else [])

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def forward(self, bottoms, params):
        x, label = bottoms
        axis = canonical_axis(self, self.param.softmax_param.axis, x.dim())
        loss, prob = _SoftmaxLoss.apply(x, label.detach(), axis, self.ignore_label, self.mode)
        return [loss, prob] if len(self.param.top) == 2 else [loss]
