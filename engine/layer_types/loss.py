"""Loss layers other than SoftmaxWithLoss: EuclideanLoss, SigmoidCrossEntropyLoss,
ContrastiveLoss, HingeLoss, MultinomialLogisticLoss and InfogainLoss."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from caffeseg.engine.blobproto import BlobShapeError, read_binaryproto
from caffeseg.engine.layer_types._util import (canonical_axis, check_label_count, count, legacy_dim, optional_ignore_label,
                                      valid_and_safe_labels)
from caffeseg.engine.layer_types.base import Layer, register
from caffeseg.engine.layer_types.softmax import normalization_mode, normalizer
from caffeseg.engine.proto import caffe_pb2


@register
class EuclideanLossLayer(Layer):
    """Caffe ``EuclideanLoss``: ``Σ (a − b)² / (2N)``; both bottoms may take a gradient.

    No parameters (``loss_weight`` defaults to 1 for the top).

    Shape:
        - bottoms: ``(N, *)`` each, with the same count
        - top: ``()``"""

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


def _refuse_label_gradient(layer: Layer, what: str = "label") -> None:
    """Caffe's LOG(FATAL) "cannot backpropagate to label inputs" as an error."""
    raise layer.fail(f"cannot backpropagate to its {what} input; give the {what} bottom no learnable "
                     "producer or set propagate_down: false for it")


@register
class SigmoidCrossEntropyLossLayer(Layer):
    """Caffe ``SigmoidCrossEntropyLoss``: cross-entropy of ``sigmoid(x)`` against targets in [0, 1].

    Parameters (``loss_param``): ``ignore_label`` (optional: a cell is ignored when its target
    truncated to an int, Caffe's ``static_cast<int>``, equals it, so with ignore_label 0 a
    target of 0.5 is ignored), ``normalization`` (default BATCH_SIZE here, as in Caffe; the
    legacy ``normalize`` maps true to VALID). Backward (Caffe's): dx = (sigmoid(x) − t) ·
    dloss / normalizer, 0 at ignored cells; a gradient asked for the targets is refused, as
    Caffe aborts.

    Shape:
        - bottom 0 (scores): ``(N, *)``
        - bottom 1 (targets): the same count
        - top: ``()``"""

    type = "SigmoidCrossEntropyLoss"
    exact_bottoms = 2
    exact_tops = 1
    is_loss = True
    explicit_backward = True

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

    def _valid_and_normalizer(self, x, target):
        """(mask of the cells that count, or None when there is no ignore_label; the normalizer)."""
        if self.ignore_label is None:
            valid, valid_count = None, torch.tensor(x.numel(), device=x.device)
        else:
            valid = target.to(torch.long) != self.ignore_label  # truncates toward 0, as static_cast<int>
            valid_count = valid.sum()
        outer = x.shape[0]
        return valid, normalizer(self.mode, outer, x.numel() // outer, valid_count)

    def forward(self, bottoms, params):
        x, target = bottoms[0], bottoms[1].reshape(bottoms[0].shape)
        positive = (x >= 0).to(x.dtype)
        # Caffe's overflow-safe form: x·(t − [x≥0]) − log(1 + exp(x − 2x·[x≥0]))
        per = x * (target - positive) - F.softplus(x - 2 * x * positive)
        valid, z = self._valid_and_normalizer(x, target)
        if valid is not None:
            per = torch.where(valid, per, torch.zeros_like(per))  # skipped, as Caffe's loop does
        return [-per.sum() / z]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        if propagate_down[1]:
            _refuse_label_gradient(self, "target")
        if not propagate_down[0]:
            return [None, None], []
        x, target = bottoms[0], bottoms[1].reshape(bottoms[0].shape)
        valid, z = self._valid_and_normalizer(x, target)
        grad = torch.sigmoid(x) - target
        if valid is not None:
            grad = torch.where(valid, grad, torch.zeros_like(grad))
        return [grad * (top_diffs[0] / z), None], []


# -- ContrastiveLoss, HingeLoss, MultinomialLogisticLoss, InfogainLoss ---------------------
# Their backward is Caffe's formula (explicit), which differs from autograd's where Caffe
# floors a probability (1e-20) or adds 1e-4 to a distance.
LOG_THRESHOLD = 1e-20  # Caffe's kLOG_THRESHOLD


def _class_labels(layer: Layer, labels: torch.Tensor, classes: int, ignore_label=None) -> torch.Tensor:
    """Labels as class indices (truncated like static_cast<int>), every one not ignored checked to
    lie in [0, classes): Caffe would read outside its arrays."""
    as_int = labels.to(torch.long)
    checked = as_int if ignore_label is None else as_int[as_int != ignore_label]
    bad = (checked < 0) | (checked >= classes)
    if bool(bad.any()):
        raise layer.fail(f"label {int(checked[bad][0])} is outside [0, {classes}) (the label input must "
                         f"hold class indices 0..{classes - 1})")
    return as_int


@register
class ContrastiveLossLayer(Layer):
    """``ContrastiveLoss`` with ``contrastive_loss_param``: ``margin`` (default 1),
    ``legacy_version`` (default false).

    With d² = ||a − b||² per pair: loss = Σ [sim ? d² : max(margin − d, 0)²] / (2N), or with
    legacy_version max(margin − d², 0) for dissimilar pairs. ``sim`` is truncated to an int
    (nonzero = similar). Backward reaches a and b (not sim); a dissimilar pair's gradient
    is −(margin − d)/(d + 1e-4)·(a − b)/N (legacy: −(a − b)/N) while inside the margin.

    Shape: a, b (N, C) or (N, C, 1, 1); sim (N,) / (N, 1) / (N, 1, 1, 1); top ()."""

    type = "ContrastiveLoss"
    exact_bottoms = 3
    exact_tops = 1
    is_loss = True
    explicit_backward = True

    def setup(self, bottom_shapes):
        cp = self.param.contrastive_loss_param
        self.margin, self.legacy = cp.margin, cp.legacy_version
        return []

    def reshape(self, bottom_shapes):
        a, b, sim = (tuple(s) for s in bottom_shapes)
        for name, shape in (("a", a), ("b", b)):
            if legacy_dim(self, shape, 2) != 1 or legacy_dim(self, shape, 3) != 1:
                raise self.fail(f"input {name} of shape {shape} must be (N, C) or (N, C, 1, 1)")
        if legacy_dim(self, a, 1) != legacy_dim(self, b, 1):
            raise self.fail(f"inputs a {a} and b {b} need the same number of channels")
        if legacy_dim(self, a, 0) != legacy_dim(self, b, 0):
            raise self.fail(f"inputs a {a} and b {b} need the same first dimension")
        if any(legacy_dim(self, sim, i) != 1 for i in (1, 2, 3)) or legacy_dim(self, sim, 0) != a[0]:
            raise self.fail(f"similarity input {sim} must hold one value per pair ({a[0]},)")
        return [()]

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def _pairs(self, bottoms):
        a, b, sim = bottoms
        num = a.shape[0]
        diff = (a - b.reshape(a.shape)).reshape(num, -1)
        dist_sq = (diff * diff).sum(dim=1)
        similar = sim.reshape(-1).to(torch.int32) != 0
        return diff, dist_sq, similar

    def forward(self, bottoms, params):
        diff, dist_sq, similar = self._pairs(bottoms)
        if self.legacy:
            dissimilar = torch.clamp(self.margin - dist_sq, min=0)
        else:
            dissimilar = torch.clamp(self.margin - torch.sqrt(dist_sq), min=0) ** 2
        per_pair = torch.where(similar, dist_sq, dissimilar)
        return [per_pair.sum() / diff.shape[0] / 2.0]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        diff, dist_sq, similar = self._pairs(bottoms)
        num = diff.shape[0]
        if self.legacy:
            inside = self.margin - dist_sq > 0
            dissimilar_factor = -torch.ones_like(dist_sq)
        else:
            dist = torch.sqrt(dist_sq)
            mdist = self.margin - dist
            inside = mdist > 0
            dissimilar_factor = -mdist / (dist + 1e-4)
        factor = torch.where(similar, torch.ones_like(dist_sq),
                             torch.where(inside, dissimilar_factor, torch.zeros_like(dist_sq)))
        base = diff * (factor * top_diffs[0] / num).unsqueeze(1)
        grads = [None, None, None]
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                grads[i] = (base * sign).reshape(bottoms[i].shape)
        return grads, []


@register
class HingeLossLayer(Layer):
    """``HingeLoss`` with ``hinge_loss_param.norm`` L1 (default) or L2.

    With t_nk = max(0, 1 − x_nk) at the true class k = label_n and max(0, 1 + x_nk) elsewhere:
    loss = Σ t / N (L1) or Σ t² / N (L2). Backward reaches the scores only.

    Shape: scores (N, *) with at most 4 axes, D = count/N classes; labels: N values in [0, D)
    (the first N values of the label blob, whose first dimension is N); top ()."""

    type = "HingeLoss"
    exact_bottoms = 2
    exact_tops = 1
    is_loss = True
    explicit_backward = True

    def setup(self, bottom_shapes):
        self.norm = self.param.hinge_loss_param.norm
        if self.norm not in (caffe_pb2.HingeLossParameter.L1, caffe_pb2.HingeLossParameter.L2):
            raise self.fail(f"unknown hinge_loss_param.norm {self.norm}")
        return []

    def reshape(self, bottom_shapes):
        scores, labels = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        legacy_dim(self, scores, 0)
        if not labels or scores[0] != labels[0]:
            raise self.fail(f"scores {scores} and labels {labels} need the same first dimension")
        return [()]

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def _signed_margins(self, bottoms):
        """max(0, 1 + s·x) with s = −1 at the true class, and s (the sign put back as Caffe's backward does)."""
        x, labels = bottoms
        num = x.shape[0]
        scores = x.reshape(num, -1)
        label = _class_labels(self, labels.reshape(-1)[:num], scores.shape[1])
        sign = torch.ones_like(scores)
        sign.scatter_(1, label.unsqueeze(1), -1.0)
        return torch.clamp(1.0 + sign * scores, min=0), sign

    def forward(self, bottoms, params):
        margins, _ = self._signed_margins(bottoms)
        num = margins.shape[0]
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            return [margins.sum() / num]
        return [(margins * margins).sum() / num]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        if propagate_down[1]:
            _refuse_label_gradient(self)
        if not propagate_down[0]:
            return [None, None], []
        margins, sign = self._signed_margins(bottoms)
        num = margins.shape[0]
        signed = margins * sign
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            grad = torch.sign(signed) * (top_diffs[0] / num)
        else:
            grad = signed * (top_diffs[0] * 2.0 / num)
        return [grad.reshape(bottoms[0].shape), None], []


@register
class MultinomialLogisticLossLayer(Layer):
    """``MultinomialLogisticLoss``: loss = −Σ_n log(max(p[n, label_n], 1e-20)) / N on given
    probabilities; dp[n, label_n] = −dloss / (N·max(p, 1e-20)), 0 elsewhere. Backward reaches
    the probabilities only.

    Shape: probabilities (N, *) with at most 4 axes, D = count/N; labels (N,) or (N, 1, 1, 1)
    with values in [0, D); top ()."""

    type = "MultinomialLogisticLoss"
    exact_bottoms = 2
    exact_tops = 1
    is_loss = True
    explicit_backward = True

    def reshape(self, bottom_shapes):
        probs, labels = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        legacy_dim(self, probs, 0)
        if not labels or probs[0] != labels[0]:
            raise self.fail(f"probabilities {probs} and labels {labels} need the same first dimension")
        if any(legacy_dim(self, labels, i) != 1 for i in (1, 2, 3)):
            raise self.fail(f"labels {labels} must hold one value per item: (N,) or (N, 1, 1, 1)")
        return [()]

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def _picked(self, bottoms):
        p, labels = bottoms
        num = p.shape[0]
        probs = p.reshape(num, -1)
        label = _class_labels(self, labels.reshape(num), probs.shape[1])
        picked = probs.gather(1, label.unsqueeze(1)).squeeze(1)
        return torch.clamp(picked, min=LOG_THRESHOLD), label, probs

    def forward(self, bottoms, params):
        picked, _, probs = self._picked(bottoms)
        return [-torch.log(picked).sum() / probs.shape[0]]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        if propagate_down[1]:
            _refuse_label_gradient(self)
        if not propagate_down[0]:
            return [None, None], []
        picked, label, probs = self._picked(bottoms)
        grad = torch.zeros_like(probs)
        grad.scatter_(1, label.unsqueeze(1), (-top_diffs[0] / probs.shape[0] / picked).unsqueeze(1))
        return [grad.reshape(bottoms[0].shape), None], []


@register
class InfogainLossLayer(Layer):
    """``InfogainLoss``: softmax along ``infogain_loss_param.axis`` (default 1), then
    loss = −Σ_cells Σ_l H[label, l]·log(max(p_l, 1e-20)) / normalizer, with ``loss_param``
    ``ignore_label`` and ``normalization`` (default VALID; the deprecated ``normalize`` is
    refused, as in Caffe). H (K×K) is the third bottom, or read once from the BlobProto file
    ``infogain_loss_param.source`` (a relative path is taken from the working directory, as
    Caffe does). Backward reaches the scores only: dx_l = (p_l·Σ_m H[label, m] − H[label, l])
    · dloss / normalizer, 0 at ignored cells; the second top's diff is not used.

    Shape: scores (outer, K, inner) around the axis; labels: outer·inner values in [0, K)
    (or ignore_label); H: K·K values; tops: loss (), optionally the probabilities (as scores)."""

    type = "InfogainLoss"
    min_bottoms = 2
    max_bottoms = 3
    min_tops = 1
    max_tops = 2
    is_loss = True
    explicit_backward = True

    def setup(self, bottom_shapes):
        lp = self.param.loss_param
        if lp.HasField("normalize"):
            raise self.fail('loss_param.normalize is deprecated for InfogainLoss; use "normalization"')
        self.mode = lp.normalization
        self.ignore_label = optional_ignore_label(lp)
        if len(self.param.top) == 2 and len(self.param.loss_weight) != 2:
            raise self.fail("with two tops, give one loss_weight per top (e.g. 1 and 0)")
        self.infogain = None
        if len(bottom_shapes) < 3:
            if not self.param.infogain_loss_param.HasField("source"):
                raise self.fail("without a third bottom (H), infogain_loss_param.source must name "
                                "the infogain matrix file (.binaryproto)")
            source = self.param.infogain_loss_param.source
            try:
                values = read_binaryproto(source)
            except BlobShapeError as err:
                raise self.fail(f"infogain_loss_param.source: {err} (relative paths are read from the "
                                f"working directory {os.getcwd()})") from None
            self.infogain = torch.from_numpy(values.astype(np.float32).reshape(-1))
        return []

    def reshape(self, bottom_shapes):
        scores, labels = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if not labels or scores[0] != labels[0]:
            raise self.fail(f"scores {scores} and labels {labels} need the same first dimension")
        axis = canonical_axis(self, self.param.infogain_loss_param.axis, len(scores))
        check_label_count(self, scores, labels, axis)
        classes = scores[axis]
        h_count = count(bottom_shapes[2]) if len(bottom_shapes) == 3 else self.infogain.numel()
        if h_count != classes * classes:
            raise self.fail(f"the infogain matrix H has {h_count} values; {classes} classes need "
                            f"{classes}x{classes} = {classes * classes}")
        return [()] + ([scores] if len(self.param.top) == 2 else [])

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1  # Caffe allows H (bottom 2), then fails in backward

    def _matrix(self, bottoms, device) -> torch.Tensor:
        if len(bottoms) == 3:
            return bottoms[2].reshape(-1)
        if self.infogain.device != device:
            self.infogain = self.infogain.to(device)
        return self.infogain

    def _terms(self, bottoms):
        """(probabilities, their (outer, K, inner) view, H, labels made safe to index, valid cells)."""
        x = bottoms[0]
        axis = canonical_axis(self, self.param.infogain_loss_param.axis, x.dim())
        outer, classes = count(x.shape[:axis]), x.shape[axis]
        inner = count(x.shape[axis + 1:])
        prob = torch.softmax(x, dim=axis)
        h = self._matrix(bottoms, x.device).reshape(classes, classes)
        labels = _class_labels(self, bottoms[1].reshape(outer, inner), classes, self.ignore_label)
        valid, safe = valid_and_safe_labels(labels, self.ignore_label)
        return prob, prob.reshape(outer, classes, inner), h, safe, valid

    def forward(self, bottoms, params):
        prob, p3, h, safe, valid = self._terms(bottoms)
        rows = h[safe].permute(0, 2, 1)  # (outer, K, inner): H[label of the cell, l]
        per_cell = -(rows * torch.log(torch.clamp(p3, min=LOG_THRESHOLD))).sum(dim=1)
        z = normalizer(self.mode, p3.shape[0], p3.shape[2], valid.sum())
        loss = (per_cell * valid).sum() / z
        return [loss, prob] if len(self.param.top) == 2 else [loss]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        if propagate_down[1]:
            _refuse_label_gradient(self)
        if len(propagate_down) > 2 and propagate_down[2]:
            _refuse_label_gradient(self, "infogain matrix (third)")
        if not propagate_down[0]:
            return [None] * len(bottoms), []
        prob, p3, h, safe, valid = self._terms(bottoms)
        row_sums = h.sum(dim=1)[safe].unsqueeze(1)  # (outer, 1, inner)
        grad = p3 * row_sums - h[safe].permute(0, 2, 1)
        grad = grad * valid.unsqueeze(1)
        z = normalizer(self.mode, p3.shape[0], p3.shape[2], valid.sum())
        grad = grad * (top_diffs[0] / z)
        return [grad.reshape(bottoms[0].shape)] + [None] * (len(bottoms) - 1), []
