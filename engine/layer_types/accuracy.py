"""Accuracy: ties with the true class count against it (correct iff fewer than ``top_k`` other
classes score ``>=`` the true class)."""
from __future__ import annotations

import torch

from caffeseg.engine.layer_types._util import (canonical_axis, check_label_count, count, optional_ignore_label,
                                 valid_and_safe_labels)
from caffeseg.engine.layer_types.base import Layer, register


@register
class AccuracyLayer(Layer):
    """Caffe ``Accuracy``: the fraction of positions whose true class is among the ``top_k`` scores.

    A score tied with the true class's counts against it; positions labelled ``ignore_label``
    are left out. No backward (both bottoms refuse gradients).

    Parameters (``accuracy_param``): ``top_k`` (default 1), ``axis`` (class axis, default 1),
    ``ignore_label`` (optional).

    Shape:
        - bottom 0 (scores): ``(N, C, *)`` with classes on ``axis``
        - bottom 1 (labels): ``N·prod(*)`` values (outer × inner of the scores)
        - top 0: ``()``; optional top 1 (per-class accuracy): ``(C,)``"""

    type = "Accuracy"
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes):
        ap = self.param.accuracy_param
        self.top_k = ap.top_k
        self.ignore_label = optional_ignore_label(ap)
        return []

    def reshape(self, bottom_shapes):
        scores, labels = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        axis = canonical_axis(self, self.param.accuracy_param.axis, len(scores))
        if self.top_k > count(scores) // max(1, count(labels)):
            raise self.fail(f"top_k {self.top_k} exceeds the number of classes")
        check_label_count(self, scores, labels, axis)
        tops = [()]
        if len(self.param.top) == 2:
            tops.append((scores[axis],))
        return tops

    def allow_force_backward(self, bottom_index):
        return False  # Accuracy has no backward

    def forward(self, bottoms, params):
        with torch.no_grad():
            x, label = bottoms
            axis = canonical_axis(self, self.param.accuracy_param.axis, x.dim())
            outer, channels = count(x.shape[:axis]), x.shape[axis]
            s3 = x.reshape(outer, channels, -1)
            lab = label.reshape(outer, -1).to(torch.long)
            valid, safe = valid_and_safe_labels(lab, self.ignore_label)
            true_score = s3.gather(1, safe.unsqueeze(1))
            better = (s3 >= true_score).sum(dim=1) - 1
            correct = (better < self.top_k) & valid
            counted = valid.sum()
            acc = torch.where(counted > 0, correct.sum().to(x.dtype) / counted.clamp(min=1),
                              torch.zeros((), dtype=x.dtype, device=x.device))
            tops = [acc.reshape(())]
            if len(self.param.top) == 2:
                per_count = torch.zeros(channels, dtype=x.dtype, device=x.device)
                per_correct = torch.zeros(channels, dtype=x.dtype, device=x.device)
                per_count.index_add_(0, safe[valid], torch.ones_like(safe[valid], dtype=x.dtype))
                per_correct.index_add_(0, safe[correct], torch.ones_like(safe[correct], dtype=x.dtype))
                tops.append(torch.where(per_count > 0, per_correct / per_count.clamp(min=1),
                                        torch.zeros_like(per_count)))
            return tops
